"""fracscan benchmark: in-process reference vs the embedded Triton ensemble vs naive PyTorch.

    .venv/bin/python benchmarks/bench.py                  # what `make bench` runs (< 10 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick          # seconds-scale sanity run (what the test runs)
    .venv/bin/python benchmarks/bench.py --tune           # compare CPU deployment settings (see README)

One run, one machine, the same demo inputs for every measurement:

1. inprocess   `ReferenceRunner` (decode, pre-process, 10 ONNX Runtime sessions, averaging,
               post-processing), sequential, one image at a time, after a warm-up pass;
2. triton      the embedded Triton ensemble through the SDK (`FracScanClient.predict_many`) at
               concurrency 1, 4, 16: radiographs/s, p50/p95/p99 request latency, and per model
               the Triton metrics of that phase (achieved batch size, queue and compute time);
3. naive       what a user might write instead: the ten PyTorch members in eager mode (random
               weights: timing only), sequential, one image at a time, same pre-processing;
4. client_cost the client side of sending real-size DICOM files (2000 x 2000, uncompressed and
               JPEG 2000), server-decode vs client-decode, as images per CPU-second of the client;
5. memory      peak RSS of the `fracscan predict` CLI streaming 200 and 2,000 inputs.

A table is printed, then, as the LAST line of stdout, one JSON object with every figure and the
ratios `triton_over_inprocess` and `triton_over_naive`. Generated inputs are cached in
$XDG_CACHE_HOME/fracscan/bench (or --cache). Performance claims come from this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from fracscan.pipeline import EnsembleRepository, ReferenceRunner, prepare
from fracscan.server import DEMO_REPOSITORY, EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent

log = Console(stderr=True, highlight=False)
CACHE_VERSION = "v1"  # bump when the generated inputs change
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


# --- sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    inprocess_rounds: int = 3  # timed passes over the demo inputs (after one warm-up pass)
    triton_requests: int = 160  # per concurrency phase: max(this, 4 x concurrency)
    naive_images: int = 8  # timed images per torch thread count (after one warm-up image)
    naive_budget_s: float = 30.0  # per thread count: stop early after this long
    client_reps: int = 3  # per (file, mode)
    memory_counts: tuple[int, int] = (200, 2000)
    large_shape: tuple[int, int] = (2000, 2000)


FULL = Sizes()
QUICK = Sizes(inprocess_rounds=1, triton_requests=8, naive_images=2, naive_budget_s=5.0, client_reps=1, memory_counts=(20, 200))
CONCURRENCIES = (1, 4, 16)


# --- machine -------------------------------------------------------------------------------


def machine_info() -> dict:
    import onnxruntime

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": cores,
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- inputs --------------------------------------------------------------------------------


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fracscan" / "bench"


def _atomic_dir(target: Path, build) -> Path:
    """Build a folder in a temp dir beside `target`, then rename it into place (safe to interrupt)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def demo_inputs(cache: Path) -> tuple[list[Path], str]:
    """The repository's examples/ (the demo inputs), else the same files made by write_examples."""
    examples = ROOT / "examples"
    files = sorted(p for p in examples.glob("*") if p.is_file() and _is_image(p)) if examples.is_dir() else []
    if files:
        return files, str(examples)
    from fracscan.synthetic import write_examples

    folder = _atomic_dir(cache / CACHE_VERSION / "examples", write_examples)
    return sorted(p for p in folder.glob("*") if p.is_file() and _is_image(p)), f"{folder} (fracscan.synthetic.write_examples)"


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def large_dicoms(cache: Path, shape: tuple[int, int]) -> dict[str, Path]:
    """Real-size radiographs: uncompressed (16-bit words, 12 bits stored) and JPEG 2000 lossless."""
    from fracscan.synthetic import TRANSFER_SYNTAXES, can_write, make_case, write_dicom

    wanted = {"uncompressed": "explicit_vr_little_endian", "jpeg2000": "jpeg2000_lossless"}
    wanted = {k: v for k, v in wanted.items() if can_write(TRANSFER_SYNTAXES[v])}

    def build(tmp: Path) -> None:
        case = make_case(7, region="wrist", fracture=True, shape=shape)
        for name, ts in wanted.items():
            write_dicom(case, tmp / f"{name}.dcm", transfer_syntax=TRANSFER_SYNTAXES[ts])

    folder = _atomic_dir(cache / CACHE_VERSION / f"large-{shape[0]}x{shape[1]}", build)
    return {name: folder / f"{name}.dcm" for name in wanted}


def memory_inputs(cache: Path, count: int) -> Path:
    """`count` small PNG files (hard links to 8 distinct synthetic radiographs)."""
    from fracscan.synthetic import make_case, write_png

    originals = _atomic_dir(
        cache / CACHE_VERSION / "small-png",
        lambda tmp: [write_png(make_case(100 + i, shape=(256, 208)), tmp / f"small_{i}.png", bits=16) for i in range(8)],
    )
    sources = sorted(originals.glob("*.png"))

    def build(tmp: Path) -> None:
        for i in range(count):
            src, dst = sources[i % len(sources)], tmp / f"img_{i:05d}.png"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    return _atomic_dir(cache / CACHE_VERSION / f"small-x{count}", build)


# --- statistics ------------------------------------------------------------------------------


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def timed_variant(threads_key: str, threads: int, latencies: list[float], wall: float, cpu: float) -> dict:
    """One thread-count variant of a sequential timing loop (in-process or naive torch)."""
    return {
        threads_key: threads,
        "images": len(latencies),
        "seconds": round(wall, 3),
        "images_per_s": rate(len(latencies), wall),
        "cpu_ms_per_image": 1000 * cpu / len(latencies),
        "p50_ms": percentile_ms(latencies, 50),
    }


# --- 1. in-process reference ----------------------------------------------------------------


def bench_inprocess(repository: Path, datas: list[bytes], rounds: int, threads: int) -> dict:
    runner = ReferenceRunner(repository, threads=threads)
    for data in datas:  # warm-up: every input once (ORT allocations, decoder imports)
        runner.predict(data)
    latencies = []
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for data in datas:
            t = time.perf_counter()
            runner.predict(data)
            latencies.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return timed_variant("ort_threads", threads, latencies, wall, cpu)


# --- 2. Triton -----------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(nv_inference_\w+)\{([^}]*)\}\s+(\S+)$')
_MODEL = re.compile(r'model="([^"]*)"')
COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def scrape(metrics_url: str) -> dict[str, dict[str, float]]:
    """model -> metric -> value (summed over versions) for the nv_inference_* counters."""
    text = httpx.get(metrics_url, timeout=10).text
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in COUNTERS:
            model = _MODEL.search(m.group(2))
            if model:
                out[model.group(1)][m.group(1)] += float(m.group(3))
    return out


def metrics_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model, over one phase: requests, executions, achieved batch size, queue / compute ms per request.

    Triton credits every request of a batch with the whole batch's queue and compute time, so
    "compute ms per request" is the time a request spent in that model's execution, not a share of it.
    """
    models = {}
    for model, values in after.items():
        d = {k: values.get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in COUNTERS}
        requests = d["nv_inference_request_success"]
        if requests <= 0:
            continue
        execs = d["nv_inference_exec_count"]
        models[model] = {
            "requests": int(requests),
            "inference_count": int(d["nv_inference_count"]),
            "exec_count": int(execs),
            "avg_batch": d["nv_inference_count"] / execs if execs else float("nan"),
            "queue_ms_per_request": d["nv_inference_queue_duration_us"] / requests / 1000,
            "compute_ms_per_request": d["nv_inference_compute_infer_duration_us"] / requests / 1000,
            "compute_io_ms_per_request": (d["nv_inference_compute_input_duration_us"]
                                          + d["nv_inference_compute_output_duration_us"]) / requests / 1000,
            "request_ms": d["nv_inference_request_duration_us"] / requests / 1000,
        }
    return dict(sorted(models.items()))


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def server_cpu(server: EmbeddedServer) -> dict[str, float]:
    """CPU seconds used so far by the tritonserver process ("tritonserver": HTTP, ensemble
    scheduling, tensor copies) and by its python-backend stubs, summed per model (a stub's first
    argument is its model.py, <repository>/<model>/<version>/model.py)."""
    out: dict[str, float] = defaultdict(float)
    if server.process is None or not Path("/proc").is_dir():
        return out
    root = server.process.pid
    cpu = _cpu_seconds(root)
    if cpu is not None:
        out["tritonserver"] += cpu
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != root:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        model = Path(argv[1].decode(errors="replace")).parts[-3] if len(argv) > 1 and argv[1].endswith(b"model.py") else "other"
        out[model] += (int(stat[11]) + int(stat[12])) / _TICKS
    return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """ms of CPU per radiograph: per model, members summed as "members", and the server total."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    out = {"members": sum(v for k, v in delta.items() if k.startswith("member_"))}
    out |= {k: v for k, v in delta.items() if not k.startswith("member_")}
    out["server_total"] = sum(delta.values())
    return {k: 1000 * v / requests for k, v in sorted(out.items())}


def triton_phase(server: EmbeddedServer, files: list[Path], concurrency: int, requests: int) -> dict:
    from fracscan.client import FracScanClient

    sources = [files[i % len(files)] for i in range(requests)]
    with FracScanClient(server.http_url, timeout=300) as client:
        # warm-up: fill every connection / python stub path once at this concurrency
        warm = list(client.predict_many(files[: max(concurrency, min(4, len(files)))], concurrency=concurrency))
        if not any(r.ok for r in warm):
            raise RuntimeError(f"every warm-up request failed: {warm[0].source}: {warm[0].error}")
        before = scrape(server.metrics_url)
        server_cpu0 = server_cpu(server)
        cpu0 = time.process_time()
        start = time.perf_counter()
        results = list(client.predict_many(sources, concurrency=concurrency))
        wall = time.perf_counter() - start
        client_cpu = time.process_time() - cpu0
        server_cpu1 = server_cpu(server)
        after = scrape(server.metrics_url)
    ok = [r for r in results if r.ok]
    if not ok:
        raise RuntimeError(f"every request failed at concurrency {concurrency}: {results[0].error}")
    latencies = [r.latency_s for r in ok]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_messages": sorted({f"{r.kind}: {r.error}"[:300] for r in results + warm if not r.ok})[:5],
        "seconds": round(wall, 3),
        "images_per_s": rate(len(ok), wall),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "client_cpu_ms_per_request": 1000 * client_cpu / len(results),
        "server_cpu_ms_per_request": cpu_per_request(server_cpu0, server_cpu1, len(results)),
        "metrics": metrics_delta(before, after),
    }


def bench_triton(server: EmbeddedServer, files: list[Path], sizes: Sizes, concurrencies=CONCURRENCIES) -> dict:
    phases = {}
    for c in concurrencies:
        log.print(f"  triton: concurrency {c} ...")
        phases[str(c)] = triton_phase(server, files, c, max(sizes.triton_requests, 4 * c))
    best = max(phases.values(), key=lambda p: p["images_per_s"])
    return {
        "phases": phases,
        "best_concurrency": best["concurrency"],
        "images_per_s": best["images_per_s"],
        "server_start_s": getattr(server, "_bench_start_s", None),
    }


# --- 3. naive PyTorch ----------------------------------------------------------------------


def bench_naive(repository: Path, datas: list[bytes], images: int, thread_counts: list[int], budget_s: float) -> dict:
    """The ten members as PyTorch modules in eager mode, one image at a time, per torch thread count.

    Each variant times up to `images` images (after one warm-up image), and stops early once it
    has spent `budget_s` (at least one timed image): on a loaded machine torch's OpenMP threads
    can wait on each other for seconds per image.
    """
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed (pip install torch==2.13.0)", "images_per_s": None}
    try:
        from fracscan.export.members import build_member
    except ImportError as exc:
        return {"skipped": f"cannot import the members: {exc}", "images_per_s": None}
    spec = EnsembleRepository.open(repository).spec
    torch.manual_seed(0)
    members = [build_member(m).eval() for m in spec.members]  # random weights: timing only
    default_threads = torch.get_num_threads()

    def one(data: bytes) -> float:
        prepared = prepare(data, None, spec)
        x = torch.from_numpy(prepared.pixels[None])
        with torch.no_grad():
            scores = [float(m(x)["score"].reshape(-1)[0]) for m in members]
        return sum(scores) / len(scores)

    variants = []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            one(datas[0])  # warm-up
            latencies = []
            cpu0, start = time.process_time(), time.perf_counter()
            for i in range(images):
                t = time.perf_counter()
                one(datas[i % len(datas)])
                latencies.append(time.perf_counter() - t)
                if time.perf_counter() - start > budget_s:
                    break
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            variants.append(timed_variant("torch_threads", threads, latencies, wall, cpu))
    finally:
        torch.set_num_threads(default_threads)
    best = max(variants, key=lambda v: v["images_per_s"])
    return {
        "skipped": None,
        "weights": "random (timing only)",
        "torch": torch.__version__,
        "variants": variants,
        "torch_threads": best["torch_threads"],
        "images_per_s": best["images_per_s"],
    }


# --- 4. client-side cost -------------------------------------------------------------------


def bench_client_cost(server: EmbeddedServer, files: dict[str, Path], reps: int) -> dict:
    """Client CPU per image, measured with time.thread_time() of the calling thread.

    prepare:    what the SDK does before the bytes leave (read the file, pre-send checks, for
                client-decode also decode + .npy encoding, build the KServe input tensors);
    end_to_end: FracScanClient.predict() against the running server (the above, plus HTTP
                send, waiting, and parsing the answer); the sync client does all of this in
                the calling thread (gevent), so thread_time is the client's CPU, nothing else.
    images_per_cpu_s = images per second of one core busy with the client side.
    """
    from fracscan.client import FracScanClient
    from fracscan.client._core import Request
    from fracscan.client.sources import read_source

    out = {}
    for name, path in files.items():
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for decode in (False, True):
            mode = "client_decode" if decode else "server_decode"
            read_source(path, decode)  # warm-up (codec imports)
            sent = 0
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for _ in range(reps):
                payload = read_source(path, decode)
                Request.make(payload, None).tensors("http")
                sent = len(payload.data)
            prep_cpu, prep_wall = (time.thread_time() - cpu0) / reps, (time.perf_counter() - wall0) / reps
            with FracScanClient(server.http_url, timeout=300, decode_on_client=decode) as client:
                client.predict(path)  # warm-up (connection, server-side decoder)
                cpu0, pcpu0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
                for _ in range(reps):
                    client.predict(path)
                e2e_cpu = (time.thread_time() - cpu0) / reps
                e2e_pcpu = (time.process_time() - pcpu0) / reps
                e2e_wall = (time.perf_counter() - wall0) / reps
            out[f"{name}/{mode}"] = {
                "file": name,
                "mode": mode,
                "shape": [int(ds.Rows), int(ds.Columns)],
                "bits_stored": int(ds.BitsStored),
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name),
                "file_bytes": path.stat().st_size,
                "sent_bytes": sent,
                "reps": reps,
                "prepare_cpu_ms": prep_cpu * 1000,
                "prepare_wall_ms": prep_wall * 1000,
                "prepare_images_per_cpu_s": rate(1, prep_cpu),
                "end_to_end_client_cpu_ms": e2e_cpu * 1000,
                "end_to_end_process_cpu_ms": e2e_pcpu * 1000,
                "end_to_end_wall_ms": e2e_wall * 1000,
                "end_to_end_images_per_cpu_s": rate(1, e2e_cpu),
            }
    return out


# --- 5. CLI memory -------------------------------------------------------------------------


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process, in KiB ({} once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _rss_sampler(pid: int, samples: list[dict], stop: threading.Event, interval: float = 0.02) -> None:
    """Poll the process's RSS and high-water mark until it exits (psutil for RSS when installed)."""
    try:
        import psutil

        proc = psutil.Process(pid)
    except Exception:  # noqa: BLE001 - not installed, or the process is gone already
        proc = None
    while not stop.is_set():
        sample = _status_kib(pid)
        if proc is not None:
            try:
                sample["VmRSS"] = proc.memory_info().rss // 1024
            except Exception:  # noqa: BLE001 - exited between the two reads
                pass
        if sample:
            samples.append(sample)
        stop.wait(interval)


def cli_peak_rss(url: str, folder: Path, count: int, workdir: Path) -> dict:
    """Run `fracscan predict FOLDER --format jsonl -o FILE` and measure its peak RSS.

    peak_rss_mib is the kernel's high-water mark of the CLI process (VmHWM in /proc/<pid>/status,
    monotonic, polled every 20 ms until the process exits: only growth in its last 20 ms could be
    missed); sampled_peak_rss_mib is the largest RSS seen by the same polling. (The rusage of
    wait4 is no use here: ru_maxrss keeps the RSS of the forked benchmark process before exec.)
    """
    output = workdir / f"predict-{count}.jsonl"
    cmd = [sys.executable, "-m", "fracscan.cli", "predict", str(folder), "--url", url,
           "--format", "jsonl", "--output", str(output)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(proc.pid, samples, stop), daemon=True)
    sampler.start()
    try:
        _, stderr = proc.communicate(timeout=900)
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - start
    lines = output.read_text().splitlines() if output.exists() else []
    ok = sum(1 for line in lines if json.loads(line).get("status") == "ok")
    if proc.returncode != 0 or ok != count:
        raise RuntimeError(f"fracscan predict on {count} inputs: exit {proc.returncode}, {ok} ok of {count}:\n"
                           + stderr.decode(errors="replace")[-2000:])
    hwm = [s["VmHWM"] for s in samples if "VmHWM" in s]
    rss = [s["VmRSS"] for s in samples if "VmRSS" in s]
    return {
        "inputs": count,
        "ok": ok,
        "seconds": round(wall, 2),
        "images_per_s": rate(ok, wall),
        "peak_rss_mib": max(hwm) / 1024 if hwm else None,
        "sampled_peak_rss_mib": max(rss) / 1024 if rss else None,
        "samples": len(samples),
    }


def light_repository(repository: Path, out: Path) -> Path:
    """The benchmarked repository with trivial members (same spec, same contract, same pre-processing).

    The CLI's memory does not depend on what the members compute; trivial members let the
    2,000-input run take seconds instead of minutes. Needs the `onnx` package (export extra).
    """
    import onnx
    from onnx import TensorProto, helper

    from fracscan.export.repository import write_repository

    repo = EnsembleRepository.open(repository)
    spec, size = repo.spec, repo.spec.preprocess.size
    files = []
    for i, member in enumerate(spec.members):
        nodes = [
            helper.make_node("GlobalAveragePool", ["image"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("ReduceMean", ["f"], ["r"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["r"], ["score"]),
        ]
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])]
        if member.map:
            h = size // 8
            nodes += [
                helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
                helper.make_node("ReduceMean", ["p"], ["pm"], axes=[1], keepdims=1),
                helper.make_node("Sigmoid", ["pm"], ["map"]),
            ]
            outputs.append(helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 1, h, h]))
        graph = helper.make_graph(
            nodes, f"light_{i}", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, size, size])], outputs
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path = out / "onnx" / f"member_{i:02d}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        files.append(path)
    return write_repository(spec, out / "repository", "cpu", files, repo.thresholds)


def bench_memory(server_url: str, cache: Path, counts: tuple[int, int], workdir: Path) -> dict:
    runs = {}
    for count in counts:
        log.print(f"  memory: fracscan predict on {count} inputs ...")
        runs[str(count)] = cli_peak_rss(server_url, memory_inputs(cache, count), count, workdir)
    small, large = (runs[str(c)] for c in counts)
    return {
        "runs": runs,
        "rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "goal": "flat within 10% (ratio <= 1.10)",
        "flat": large["peak_rss_mib"] <= 1.10 * small["peak_rss_mib"],
    }


# --- servers -------------------------------------------------------------------------------


def start_servers(stack: ExitStack, specs: list[tuple[Path, dict]], logdir: Path, parallel: bool) -> list[EmbeddedServer]:
    """Start embedded servers (in parallel if asked); each is stopped when the stack closes."""
    servers = [EmbeddedServer(repo, log_path=logdir / f"server-{i}.log", **kw) for i, (repo, kw) in enumerate(specs)]
    errors: list[BaseException] = []

    def start(server: EmbeddedServer) -> None:
        t = time.perf_counter()
        try:
            server.start(timeout=600)
            server._bench_start_s = round(time.perf_counter() - t, 1)  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    for server in servers:
        stack.callback(server.stop)
    if parallel:
        threads = [threading.Thread(target=start, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for s in servers:
            start(s)
    if errors:
        raise RuntimeError(f"embedded server failed to start (logs in {logdir}): {errors[0]}")
    return servers


# --- output --------------------------------------------------------------------------------


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def print_report(result: dict, console: Console) -> None:
    m = result["machine"]
    console.print(f"[bold]fracscan benchmark[/] - repository {result['repository']} (spec '{result['spec']}', "
                  f"S = {result['size']}, {result['members']} members); {m['cores']} cores ({m['cpu']}); "
                  f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}"
                  f"{' - QUICK run, figures are rough' if result['quick'] else ''}")
    console.print(f"inputs: {result['inputs']['count']} demo radiographs from {result['inputs']['source']}")

    t = Table(title="Throughput (radiographs/s) and latency", title_style="bold")
    for col in ("path", "setting", "radiographs/s", "p50 ms", "p95 ms", "p99 ms", "CPU ms/img", "n"):
        t.add_column(col, justify="left" if col in ("path", "setting") else "right")
    for v in result["inprocess"]["variants"]:
        t.add_row("in-process reference", f"ORT threads {v['ort_threads']}", fmt(v["images_per_s"]), fmt(v["p50_ms"], 0), "", "",
                  fmt(v["cpu_ms_per_image"], 0), str(v["images"]))
    for p in result["triton"]["phases"].values():
        cpu = p["server_cpu_ms_per_request"].get("server_total", 0.0) + p["client_cpu_ms_per_request"]
        t.add_row("Triton ensemble (SDK, HTTP)", f"concurrency {p['concurrency']}", fmt(p["images_per_s"]), fmt(p["p50_ms"], 0),
                  fmt(p["p95_ms"], 0), fmt(p["p99_ms"], 0), fmt(cpu, 0), str(p["requests"]))
    n = result["naive"]
    if n.get("skipped"):
        t.add_row("naive PyTorch eager", f"skipped: {n['skipped']}", "-", "", "", "", "", "")
    else:
        for v in n["variants"]:
            t.add_row("naive PyTorch eager", f"torch threads {v['torch_threads']}, random weights", fmt(v["images_per_s"]),
                      fmt(v["p50_ms"], 0), "", "", fmt(v["cpu_ms_per_image"], 0), str(v["images"]))
    console.print(t)
    console.print(f"triton_over_inprocess = {fmt(result['triton_over_inprocess'])}  (Triton at concurrency "
                  f"{result['triton']['best_concurrency']} / best in-process)   triton_over_naive = {fmt(result['triton_over_naive'])}")

    t = Table(title="Triton metrics per phase (per request; batch = inference_count / exec_count)", title_style="bold")
    for col in ("concurrency", "model", "requests", "execs", "avg batch", "queue ms", "compute ms", "in server ms"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for p in result["triton"]["phases"].values():
        for i, (name, v) in enumerate(metric_rows(p["metrics"])):
            ensemble = name == "fracscan (ensemble)"
            t.add_row(str(p["concurrency"]) if i == 0 else "", name, str(v["requests"]), "" if ensemble else str(v["exec_count"]),
                      "" if ensemble else fmt(v["avg_batch"]), "" if ensemble else fmt(v["queue_ms_per_request"], 1),
                      "" if ensemble else fmt(v["compute_ms_per_request"], 1), fmt(v["request_ms"], 1), end_section=ensemble)
    console.print(t)

    t = Table(title="CPU per radiograph (ms; /proc utime+stime of tritonserver and its python stubs, process time of the SDK)",
              title_style="bold")
    cols = ("concurrency", "preprocess", "10 members", "average", "threshold", "tritonserver", "server total", "client (SDK)", "all",
            f"bound on {result['machine']['cores']} idle cores img/s")
    for col in cols:
        t.add_column(col, justify="right")
    for p in result["triton"]["phases"].values():
        cpu = p["server_cpu_ms_per_request"]
        total = cpu.get("server_total", 0.0) + p["client_cpu_ms_per_request"]
        t.add_row(str(p["concurrency"]), *(fmt(cpu.get(k), 1) for k in ("preprocess", "members", "average", "threshold", "tritonserver", "server_total")),
                  fmt(p["client_cpu_ms_per_request"], 1), fmt(total, 1), fmt(1000 * result["machine"]["cores"] / total if total else None, 1))
    console.print(t)

    t = Table(title="Client side of real-size DICOM (one core): images per CPU-second", title_style="bold")
    for col in ("file", "mode", "MB file", "MB sent", "prepare ms CPU", "prepare img/CPU-s", "e2e client ms CPU", "e2e img/CPU-s", "e2e wall ms"):
        t.add_column(col, justify="left" if col in ("file", "mode") else "right")
    for v in result["client_cost"].values():
        t.add_row(f"{v['file']} {v['shape'][0]}x{v['shape'][1]}/{v['bits_stored']}b", v["mode"], fmt(v["file_bytes"] / 1e6, 1),
                  fmt(v["sent_bytes"] / 1e6, 1), fmt(v["prepare_cpu_ms"], 1), fmt(v["prepare_images_per_cpu_s"], 1),
                  fmt(v["end_to_end_client_cpu_ms"], 1), fmt(v["end_to_end_images_per_cpu_s"], 1), fmt(v["end_to_end_wall_ms"], 0))
    console.print(t)

    mem = result["memory"]
    if mem.get("skipped"):
        console.print(f"CLI memory: skipped ({mem['skipped']})")
    else:
        t = Table(title=f"CLI peak RSS (fracscan predict, jsonl to a file) - server: {mem['server']}", title_style="bold")
        for col in ("inputs", "peak RSS MiB (VmHWM)", "sampled peak MiB", "seconds", "radiographs/s"):
            t.add_column(col, justify="right")
        for v in mem["runs"].values():
            t.add_row(str(v["inputs"]), fmt(v["peak_rss_mib"], 1), fmt(v["sampled_peak_rss_mib"], 1), fmt(v["seconds"], 1), fmt(v["images_per_s"], 1))
        console.print(t)
        console.print(f"RSS ratio {fmt(mem['rss_ratio'], 3)} ({'flat' if mem['flat'] else 'NOT flat'}; goal {mem['goal']})")


def metric_rows(metrics: dict) -> list[tuple[str, dict]]:
    """preprocess, the members (aggregated), average, threshold, the ensemble: in pipeline order."""
    members = [v for k, v in metrics.items() if k.startswith("member_")]
    rows = [(k, metrics[k]) for k in ("preprocess",) if k in metrics]
    if members:
        batches = [v["avg_batch"] for v in members]
        rows.append((f"{len(members)} members (mean; batch {min(batches):.2f}-{max(batches):.2f})", {
            "requests": sum(v["requests"] for v in members),
            "exec_count": sum(v["exec_count"] for v in members),
            **{key: statistics.mean(v[key] for v in members)
               for key in ("avg_batch", "queue_ms_per_request", "compute_ms_per_request", "request_ms")},
        }))
    rows += [(k, metrics[k]) for k in ("average", "threshold") if k in metrics]
    rows += [("fracscan (ensemble)", metrics["fracscan"])] if "fracscan" in metrics else []
    return rows


def print_tuning(result: dict, console: Console) -> None:
    m = result["machine"]
    console.print(f"[bold]fracscan CPU tuning[/] - {result['repository']} (S = {result['size']}); {m['cores']} cores; "
                  f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; {result['method']}, "
                  f"{result['rounds']} rounds of {result['requests_per_phase']}+ requests")
    t = Table(title="CPU deployment settings vs the default (same members; Triton through the SDK)", title_style="bold")
    for col in ("variant", "conc.", "variant / default", "per-round ratios", "img/s variant", "img/s default",
                "p95 ms variant", "p95 ms default", "CPU ms/img v / d", "member batch v / d", "preproc. queue ms v / d"):
        t.add_column(col, justify="left" if col in ("variant", "per-round ratios") else "right")
    for row in result["variants"]:
        items = list(row["summary"].items())
        for i, (c, v) in enumerate(items):
            t.add_row(row["variant"] if i == 0 else "", c, fmt(v["ratio_median"]), " ".join(f"{x:.2f}" for x in v["ratios"]),
                      fmt(v["variant_images_per_s_median"], 1), fmt(v["default_images_per_s_median"], 1),
                      fmt(v["variant_p95_ms_median"], 0), fmt(v["default_p95_ms_median"], 0),
                      f"{v['variant_cpu_ms_median']:.0f} / {v['default_cpu_ms_median']:.0f}",
                      f"{v['variant_member_batch']:.2f} / {v['default_member_batch']:.2f}",
                      f"{v['variant_preprocess_queue_ms']:.0f} / {v['default_preprocess_queue_ms']:.0f}", end_section=i == len(items) - 1)
    console.print(t)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 4)
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


# --- main ----------------------------------------------------------------------------------


def run_benchmark(args, sizes: Sizes) -> dict:
    repository = args.repository.resolve()
    repo = EnsembleRepository.open(repository)
    cache = args.cache
    result: dict = {
        "quick": args.quick,
        "machine": machine_info(),
        "repository": str(repository),
        "spec": repo.spec.name,
        "size": repo.spec.preprocess.size,
        "members": len(repo.spec.members),
    }
    phases: dict[str, float] = {}
    result["phase_seconds"] = phases

    @contextmanager
    def step(name: str, message: str):
        log.print(message)
        t = time.perf_counter()
        yield
        phases[name] = round(time.perf_counter() - t, 1)

    with step("inputs", f"preparing inputs in {cache} ..."):
        files, source = demo_inputs(cache)
        large = large_dicoms(cache, sizes.large_shape)
    datas = [p.read_bytes() for p in files]
    result["inputs"] = {"count": len(files), "source": source}
    light_ok = True
    try:
        import onnx  # noqa: F401
    except ImportError:
        light_ok = False

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="fracscan-bench-") as tmp:
        tmp = Path(tmp)
        logdir = Path(args.logdir) if args.logdir else tmp
        logdir.mkdir(parents=True, exist_ok=True)
        server_specs = [(repository, {})]
        if args.quick and light_ok:  # quick: start both servers at once (timings are rough anyway)
            server_specs.append((light_repository(repository, tmp / "light"), {}))
        with step("server_start", f"starting the embedded Triton server{'s' if len(server_specs) > 1 else ''} ..."):
            servers = start_servers(stack, server_specs, logdir, parallel=True)
        server = servers[0]

        # 1. in-process reference: ReferenceRunner's default (1 ORT thread per member session),
        #    and one thread per core; the better of the two is the ratio's denominator.
        with step("inprocess", "in-process reference ..."):
            threads = sorted({1, result["machine"]["cores"]})
            variants = [bench_inprocess(repository, datas, sizes.inprocess_rounds, t) for t in threads]
        best_inproc = max(variants, key=lambda v: v["images_per_s"])
        result["inprocess"] = {"variants": variants, "images_per_s": best_inproc["images_per_s"], "ort_threads": best_inproc["ort_threads"]}

        # 2. Triton ensemble through the SDK
        with step("triton", "Triton ensemble through the SDK ..."):
            result["triton"] = bench_triton(server, files, sizes)

        # 4. client-side cost of real-size DICOM (needs the server for the end-to-end part)
        with step("client_cost", "client-side cost of real-size DICOM ..."):
            result["client_cost"] = bench_client_cost(server, large, sizes.client_reps)

        # 3. naive PyTorch (after the Triton phases: its threads then have the cores to themselves)
        with step("naive", "naive PyTorch baseline ..."):
            cores = result["machine"]["cores"]
            result["naive"] = bench_naive(repository, datas, sizes.naive_images,
                                          [1] if args.quick else sorted({cores, 1}, reverse=True), sizes.naive_budget_s)

        # 5. CLI memory, against a server with trivial members (see light_repository)
        if light_ok and len(servers) == 1:
            server.stop()
            with step("light_server_start", "starting a server with trivial members for the CLI memory runs ..."):
                servers += start_servers(stack, [(light_repository(repository, tmp / "light"), {})], logdir, parallel=False)
        with step("memory", "CLI memory ..."):
            result["memory"] = bench_memory(servers[-1].http_url, cache, sizes.memory_counts, tmp)
        result["memory"]["server"] = "same spec, trivial members" if light_ok else "the benchmarked repository (onnx not installed)"

    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    tri = result["triton"]["images_per_s"]
    result["triton_over_inprocess"] = tri / result["inprocess"]["images_per_s"]
    naive = result["naive"].get("images_per_s")
    result["triton_over_naive"] = tri / naive if naive else None
    return result


DEFAULT_VARIANT = "default"
TUNING_VARIANTS = {
    # name: (RepositoryOptions changes, EmbeddedServer ort_threads). "default" is RepositoryOptions():
    # preprocess 2 instances, members 1 instance, max batch 8, preferred 4/8, queue delay 2 ms, ORT 1 thread.
    DEFAULT_VARIANT: ({}, 1),
    "no batching (max_batch_size 1)": ({"max_batch_size": 1, "preferred_batch_sizes": ()}, 1),
    "queue delay 0": ({"max_queue_delay_us": 0}, 1),
    "queue delay 20 ms": ({"max_queue_delay_us": 20000}, 1),
    "preprocess instances 1": ({"preprocess_instances": 1}, 1),
    "preprocess instances 4": ({"preprocess_instances": 4}, 1),
    "member instances 2": ({"member_instances": 2}, 1),
    "ORT threads 2": ({}, 2),
}


def _member_mean(phase: dict, key: str) -> float:
    members = [v for k, v in phase["metrics"].items() if k.startswith("member_")]
    return statistics.mean(v[key] for v in members) if members else float("nan")


def _phase_cpu(phase: dict) -> float:
    """Server + client CPU ms per radiograph of one phase."""
    return phase["server_cpu_ms_per_request"].get("server_total", 0.0) + phase["client_cpu_ms_per_request"]


def run_tuning(args, sizes: Sizes) -> dict:
    """Each variant against the default, A/B interleaved, on a shared, noisy machine.

    The default server stays up; each variant's server is started beside it, and short phases
    alternate default / variant (order flipped every round) so both see the same background
    load. Per variant and concurrency: the median of the per-round ratios variant / default.
    """
    from fracscan.export.repository import RepositoryOptions, write_repository

    machine = machine_info()
    repository = args.repository.resolve()
    repo = EnsembleRepository.open(repository)
    files, source = demo_inputs(args.cache)
    onnx_files = [repo.member_onnx(i) for i in range(len(repo.spec.members))]
    concurrencies = tuple(int(c) for c in args.tune_concurrency.split(","))
    chosen = [v for v in TUNING_VARIANTS if v != DEFAULT_VARIANT and (not args.variants or any(s in v for s in args.variants.split(",")))]
    phase_sizes = replace(sizes, triton_requests=args.tune_requests)
    results = []
    with ExitStack() as outer, tempfile.TemporaryDirectory(prefix="fracscan-tune-") as tmp:
        tmp = Path(tmp)

        def repository_for(name: str) -> tuple[Path, int]:
            changes, ort_threads = TUNING_VARIANTS[name]
            out = tmp / f"variant-{list(TUNING_VARIANTS).index(name)}"
            write_repository(repo.spec, out, "cpu", onnx_files, repo.thresholds, replace(RepositoryOptions(), **changes))
            return out, ort_threads

        base_repo, base_threads = repository_for(DEFAULT_VARIANT)
        log.print("starting the default-settings server ...")
        (base,) = start_servers(outer, [(base_repo, {"ort_threads": base_threads})], tmp, parallel=False)
        for name in chosen:
            variant_repo, threads = repository_for(name)
            log.print(f"{name}: starting its server (load average {os.getloadavg()[0]:.2f}) ...")
            with ExitStack() as stack:
                (server,) = start_servers(stack, [(variant_repo, {"ort_threads": threads})], tmp, parallel=False)
                rounds: list[dict] = []
                for r in range(args.tune_rounds):
                    order = [("default", base), ("variant", server)]
                    if r % 2:
                        order.reverse()
                    for c in concurrencies:
                        measured = {label: triton_phase(srv, files, c, max(phase_sizes.triton_requests, 4 * c)) for label, srv in order}
                        rounds.append({"round": r + 1, "concurrency": c, "loadavg": round(os.getloadavg()[0], 2), **measured})
                    log.print(f"  round {r + 1}: " + ", ".join(
                        f"c{x['concurrency']} {x['variant']['images_per_s']:.1f} vs {x['default']['images_per_s']:.1f}"
                        for x in rounds if x["round"] == r + 1))
            summary = {}
            for c in concurrencies:
                mine = [x for x in rounds if x["concurrency"] == c]
                summary[str(c)] = {
                    "ratio_median": statistics.median(x["variant"]["images_per_s"] / x["default"]["images_per_s"] for x in mine),
                    "ratios": [x["variant"]["images_per_s"] / x["default"]["images_per_s"] for x in mine],
                    "variant_images_per_s_median": statistics.median(x["variant"]["images_per_s"] for x in mine),
                    "default_images_per_s_median": statistics.median(x["default"]["images_per_s"] for x in mine),
                    "variant_p95_ms_median": statistics.median(x["variant"]["p95_ms"] for x in mine),
                    "default_p95_ms_median": statistics.median(x["default"]["p95_ms"] for x in mine),
                    "variant_cpu_ms_median": statistics.median(_phase_cpu(x["variant"]) for x in mine),
                    "default_cpu_ms_median": statistics.median(_phase_cpu(x["default"]) for x in mine),
                    "variant_member_batch": statistics.mean(_member_mean(x["variant"], "avg_batch") for x in mine),
                    "default_member_batch": statistics.mean(_member_mean(x["default"], "avg_batch") for x in mine),
                    "variant_preprocess_queue_ms": statistics.mean(x["variant"]["metrics"]["preprocess"]["queue_ms_per_request"] for x in mine),
                    "default_preprocess_queue_ms": statistics.mean(x["default"]["metrics"]["preprocess"]["queue_ms_per_request"] for x in mine),
                }
            changes, threads = TUNING_VARIANTS[name]
            results.append({"variant": name, "options": changes, "ort_threads": threads, "summary": summary,
                            "rounds": [{k: v if k in ("round", "concurrency", "loadavg") else
                                        {m: v[m] for m in ("images_per_s", "p50_ms", "p95_ms", "p99_ms", "requests", "errors",
                                                           "error_messages", "client_cpu_ms_per_request", "server_cpu_ms_per_request")}
                                        for k, v in x.items()} for x in rounds]})
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "tuning": True,
        "machine": machine,
        "repository": str(repository),
        "spec": repo.spec.name,
        "size": repo.spec.preprocess.size,
        "inputs": {"count": len(files), "source": source},
        "method": "A/B interleaved against the default server; median of per-round ratios",
        "rounds": args.tune_rounds,
        "requests_per_phase": args.tune_requests,
        "options_default": asdict(RepositoryOptions()),
        "variants": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEMO_REPOSITORY, help="Triton repository to benchmark (default: the committed demo)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity run, not figures to quote")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where generated inputs are kept between runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--logdir", default=None, help="keep the Triton server logs here")
    parser.add_argument("--tune", action="store_true", help="compare CPU deployment settings against the default instead (~7 min)")
    parser.add_argument("--variants", default="", help="--tune: comma-separated substrings of the variants to run")
    parser.add_argument("--tune-rounds", type=int, default=3, help="--tune: A/B rounds per variant")
    parser.add_argument("--tune-requests", type=int, default=48, help="--tune: requests per phase (at least 4 x concurrency)")
    parser.add_argument("--tune-concurrency", default="4,16", help="--tune: concurrencies to measure")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if not (args.repository / "fracscan.toml").exists():
        log.print(f"[red]error:[/] {args.repository} is not a fracscan repository (no fracscan.toml); "
                  "build the demo with `make demo-rebuild` or pass --repository")
        return 2
    console = Console(width=max(Console().width, 180) if not sys.stdout.isatty() else None, highlight=False)
    started = time.perf_counter()
    if args.tune:
        result = run_tuning(args, sizes)
        print_tuning(result, console)
    else:
        result = run_benchmark(args, sizes)
        print_report(result, console)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(jsonable(result))
    if args.json:
        args.json.write_text(text + "\n")
    console.file.flush()
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
