"""fracscan GPU benchmark: each ensemble member on CUDA, achieved TFLOP/s against the GPU's peak.

    .venv/bin/python benchmarks/bench_gpu.py                               # the demo repository
    .venv/bin/python benchmarks/bench_gpu.py --spec jones2020 --runtime torch --precision fp16
                                                                            # the full-size ensemble

Runtimes (--runtime, default auto: onnxruntime if it has the CUDA execution provider, else torch):

  ort    the repository's exported members (member_XX/1/model.onnx) on ONNX Runtime's CUDA
         execution provider (pip install onnxruntime-gpu), inputs and outputs bound on the GPU
         with I/O binding, so host<->device copies are not timed;
  torch  the members built from the spec with `build_member` (random weights: timing only) as
         eager PyTorch modules on CUDA, fp32 (TF32 allowed) or fp16.

FLOPs per member come from `fracscan.export.flops.member_cost` (torch.utils.flop_counter,
multiply-add = 2, convolutions and matrix products only), times the batch size. Peak TFLOP/s
comes from a small table of NVIDIA datasheet figures (dense, no sparsity) keyed by the device
name, or from --peak-tflops. Without a CUDA GPU it stops with exit code 2 and says why.

The table goes to stdout, then, as the LAST line, one JSON object with every figure.

`make bench-gpu` runs `bench_gpu.py --report benchmarks/gpu_report.json` (torch with CUDA needed; it refuses
with exit code 2 otherwise): every member in FP32 and FP16 (torch), then the checks of bench_gpu_checks.py
(the FP16-vs-FP32 decision flips on the demo test split, the normalize graph on CUDA against numpy,
nvImageCodec's decode when installed), all in that ONE JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fracscan.onnxrt import ort_session
from fracscan.pipeline import EnsembleRepository
from fracscan.server import DEMO_REPOSITORY
from fracscan.spec import builtin_spec_path, load_spec

# name substring (checked in this order) -> dense peak TFLOP/s: fp32 (CUDA cores), tf32, fp16 (tensor cores)
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4}),  # SXM
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0}),
    ("T4", {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0}),  # no TF32 on Turing: fp32 runs on CUDA cores
    ("V100", {"fp32": 15.7, "tf32": 15.7, "fp16": 125.0}),
]


NO_CUDA_FOR_REPORT = (
    "--report needs torch with CUDA: torch.cuda.is_available() is False here (no NVIDIA GPU and driver, "
    "or a CPU build of torch); nothing was measured and no report was written"
)


class NoGpu(RuntimeError):
    """No CUDA device usable by any runtime here."""


def ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_runtime(wanted: str) -> str:
    ort_ok, torch_ok = ort_has_cuda(), torch_has_cuda()
    if wanted == "ort" and not ort_ok:
        raise NoGpu(
            "--runtime ort: onnxruntime has no CUDAExecutionProvider here "
            "(pip install onnxruntime-gpu, on a machine with an NVIDIA GPU and driver)"
        )
    if wanted == "torch" and not torch_ok:
        raise NoGpu("--runtime torch: torch.cuda.is_available() is False (a CPU build of torch, or no GPU / driver)")
    if wanted == "auto":
        if ort_ok:
            return "ort"
        if torch_ok:
            return "torch"
        raise NoGpu(
            "no CUDA GPU available: onnxruntime has no CUDAExecutionProvider and torch.cuda.is_available() "
            "is False. Run this on a GPU machine (onnxruntime-gpu or a CUDA build of torch); "
            "the CPU benchmark is benchmarks/bench.py"
        )
    return wanted


def device_info(runtime: str) -> dict:
    info = {"runtime": runtime, "name": None, "compute_capability": None}
    if torch_has_cuda():
        import torch

        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
            torch=torch.__version__,
        )
    else:
        try:  # onnxruntime-gpu without torch: ask the driver
            import subprocess

            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()
            )
            if out:
                name, cc, mem = (x.strip() for x in out[0].split(","))
                info.update(name=name, compute_capability=cc, memory=mem)
        except (OSError, subprocess.SubprocessError):
            pass
    if runtime == "ort":
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def peak_for(name: str | None, precision: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if name:
        for key, peaks in PEAK_TFLOPS:
            if key.lower() in name.lower():
                kind = {"fp32": "tf32", "fp16": "fp16"}[precision]  # fp32 convs run as TF32 on tensor cores (Ampere+)
                return peaks[kind], f"{key} datasheet, dense {kind.upper()}"
    return None, "unknown GPU: pass --peak-tflops"


# --- runners: (batch) -> seconds per batch ---------------------------------------------------


def ort_runner(onnx_path: Path, size: int, batch: int, precision: str, device: str):
    import onnxruntime as ort

    if precision != "fp32":
        raise SystemExit("--runtime ort runs the exported fp32 ONNX; use --runtime torch for fp16")
    if device == "cuda":
        providers = [
            ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}),
            "CPUExecutionProvider",
        ]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort_session(onnx_path, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise NoGpu(f"onnxruntime did not place {onnx_path.parent.parent.name} on CUDA: {session.get_providers()}")
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 2, size, size)).astype(np.float32)
    binding = session.io_binding()
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def run() -> None:
        session.run_with_iobinding(binding)  # returns when the GPU work is done

    def sync() -> None:
        pass

    return run, sync


def torch_runner(member_spec, size: int, batch: int, precision: str, device: str):
    import torch

    from fracscan.export.members import build_member

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = build_member(member_spec).eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x = (
        torch.empty(batch, 2, size, size, device=device, dtype=dtype)
        .uniform_(-1, 1)
        .contiguous(memory_format=torch.channels_last)
    )

    def run() -> None:
        with torch.inference_mode():
            model(x)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    return run, sync


def time_runner(run, sync, min_seconds: float, min_iters: int = 5) -> tuple[float, int]:
    for _ in range(3):  # warm-up: cuDNN algorithm search, allocations
        run()
    sync()
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < min_seconds:
        run()
        iters += 1
    sync()
    return (time.perf_counter() - start) / iters, iters


def time_members(spec, repo, runtime: str, precision: str, batches: list[int], seconds: float, device: str, peak):
    """One row per (member, batch): latency, images/s, achieved TFLOP/s and its share of `peak`."""
    from fracscan.export.flops import member_cost

    rows = []
    size = spec.preprocess.size
    for i, member in enumerate(spec.members):
        flops = member_cost(member, size).flops
        for batch in batches:
            if runtime == "ort":
                run, sync = ort_runner(repo.member_onnx(i), size, batch, precision, device)
            else:
                run, sync = torch_runner(member, size, batch, precision, device)
            per_batch, iters = time_runner(run, sync, seconds)
            tflops = flops * batch / per_batch / 1e12
            rows.append(
                {
                    "member": spec.member_model_name(i),
                    "name": member.name,
                    "precision": precision,
                    "batch": batch,
                    "gflops_per_image": flops / 1e9,
                    "ms_per_batch": per_batch * 1000,
                    "iters": iters,
                    "images_per_s": batch / per_batch,
                    "tflops": tflops,
                    "percent_of_peak": 100 * tflops / peak if peak else None,
                }
            )
            print(
                f"  {spec.member_model_name(i)} {precision} batch {batch}: {per_batch * 1000:.2f} ms, "
                f"{tflops:.2f} TFLOP/s",
                file=sys.stderr,
            )
    return rows


def report(args, spec, repo, batches: list[int]) -> int:
    """`make bench-gpu`: members in FP32 and FP16 on torch, then the checks; ONE JSON file at args.report."""
    import bench_gpu_checks as checks

    device = "cpu" if args.cpu_dry_run else "cuda"
    info = device_info("torch") if not args.cpu_dry_run else {"runtime": "torch", "name": "CPU (dry run)"}
    members, peaks = [], {}
    for precision in ("fp32", "fp16"):
        peak, basis = peak_for(info.get("name"), precision, None)
        peaks[precision] = {"tflops": peak, "basis": basis}
        if precision == "fp16" and args.cpu_dry_run:
            continue  # fp16 convolutions are a GPU matter
        members += time_members(spec, repo, "torch", precision, batches, args.seconds, device, peak)
    document = {
        "device": info,
        "spec": spec.name,
        "size": spec.preprocess.size,
        "peak_tflops": peaks,
        "members": members,
        "decision_flips_fp16_vs_fp32": checks.decision_flips(args.repository, device),
        "normalize_cuda_vs_numpy": checks.normalize(spec, device),
        "nvimgcodec_decode": checks.nvimgcodec_decode() if not args.cpu_dry_run else {"skipped": "dry run on CPU"},
        "dry_run_on_cpu": args.cpu_dry_run,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(document, indent=2) + "\n")
    print(f"bench_gpu: report written to {args.report}", file=sys.stderr)
    return 0


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, default=DEMO_REPOSITORY, help="repository whose members (and spec) to run"
    )
    parser.add_argument(
        "--spec",
        default=None,
        help="instead of the repository's spec: a spec file or a built-in name "
        "(jones2020, demo); torch runtime only (random weights)",
    )
    parser.add_argument("--runtime", choices=("auto", "ort", "torch"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=1.0, help="time each (member, batch) for at least this long")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's peak for --precision (default: datasheet table)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="run everything `make bench-gpu` measures and write ONE JSON file"
    )
    parser.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # exercises the code paths on CPU
    args = parser.parse_args(argv)
    if args.report is not None and not args.cpu_dry_run and not torch_has_cuda():
        print(f"bench_gpu: {NO_CUDA_FOR_REPORT}", file=sys.stderr)
        return 2

    try:
        runtime = "torch" if args.cpu_dry_run and args.runtime == "auto" else args.runtime
        if not args.cpu_dry_run:
            runtime = pick_runtime(runtime)
    except NoGpu as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_dry_run else "cuda"

    if args.spec:
        if runtime != "torch":
            print(
                "bench_gpu: --spec needs --runtime torch (ONNX files exist only for a repository's members)",
                file=sys.stderr,
            )
            return 2
        spec_path = Path(args.spec) if Path(args.spec).exists() else builtin_spec_path(args.spec)
        spec, repo = load_spec(spec_path), None
    else:
        repo = EnsembleRepository.open(args.repository)
        spec = repo.spec
    size = spec.preprocess.size
    batches = [int(b) for b in args.batch.split(",")]

    try:
        import fracscan.export.flops  # noqa: F401  (torch.utils.flop_counter)
    except ImportError:
        print("bench_gpu: counting FLOPs needs torch (pip install torch) - the export extra", file=sys.stderr)
        return 2
    if args.report is not None:
        return report(args, spec, repo, batches)
    info = device_info(runtime) if not args.cpu_dry_run else {"runtime": runtime, "name": "CPU (dry run)"}
    peak, peak_basis = peak_for(info.get("name"), args.precision, args.peak_tflops)

    try:
        rows = time_members(spec, repo, runtime, args.precision, batches, args.seconds, device, peak)
    except NoGpu as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return 2

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Members on {info.get('name')} via {runtime} ({args.precision}), S = {size}; "
        f"peak {peak if peak else '?'} TFLOP/s ({peak_basis})",
        title_style="bold",
    )
    for col in ("member", "batch", "GFLOP/img", "ms/batch", "img/s", "TFLOP/s", "% of peak"):
        table.add_column(col, justify="left" if col == "member" else "right")
    for r in rows:
        table.add_row(
            f"{r['member']} {r['name']}",
            str(r["batch"]),
            f"{r['gflops_per_image']:.2f}",
            f"{r['ms_per_batch']:.2f}",
            f"{r['images_per_s']:.0f}",
            f"{r['tflops']:.2f}",
            f"{r['percent_of_peak']:.1f}" if r["percent_of_peak"] is not None else "-",
        )
    Console(width=140 if not sys.stdout.isatty() else None).print(table)
    ensemble = {}
    for batch in batches:  # the ten members one after the other, as one GPU would serve them
        per = [r for r in rows if r["batch"] == batch]
        total_s = sum(r["ms_per_batch"] for r in per) / 1000
        total_flops = sum(r["gflops_per_image"] for r in per) * 1e9 * batch
        ensemble[str(batch)] = {
            "images_per_s": batch / total_s,
            "tflops": total_flops / total_s / 1e12,
            "percent_of_peak": 100 * total_flops / total_s / 1e12 / peak if peak else None,
        }
    print(
        json.dumps(
            {
                "device": info,
                "precision": args.precision,
                "size": size,
                "spec": spec.name,
                "peak_tflops": peak,
                "peak_basis": peak_basis,
                "members": rows,
                "ensemble_sequential": ensemble,
                "dry_run_on_cpu": args.cpu_dry_run,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
