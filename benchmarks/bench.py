"""fracscan benchmark: pre-processing at full size, the in-process reference vs the embedded Triton ensemble vs naive PyTorch.

    .venv/bin/python benchmarks/bench.py                  # what `make bench` runs (< 10 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick          # seconds-scale sanity run (what the test runs)
    .venv/bin/python benchmarks/bench.py --tune           # compare CPU deployment settings (see README)

One run, one machine, the same demo inputs for every measurement of the served demo:

0. prepare     `prepare` (decode + pre-processing) at S = 1024 per input kind (NEMA CRs, a
               3000 x 2500 DX as uncompressed / JPEG 2000 DICOM and PNG) against the frozen scipy
               reference in the same run, CPU of one core; then the full-size members (one
               DRN-D-22, one DRN-D-54; random weights, ONNX Runtime, one thread): CPU ms each;
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
ratios `triton_over_inprocess`, `triton_over_naive` and `prepare.min_preprocess_ratio`. Generated inputs are cached in
$XDG_CACHE_HOME/fracscan/bench (or --cache). Performance claims come from this script only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench_base import FULL, QUICK, Sizes, jsonable, log, machine_info
from bench_client import bench_client_cost, bench_memory, light_repository
from bench_inputs import default_cache, demo_inputs, large_dicoms, prepare_inputs
from bench_members import bench_full_size_members, bench_naive
from bench_prepare import bench_prepare, full_size_spec
from bench_report import print_report, print_tuning
from bench_serving import bench_inprocess, bench_study, bench_triton, start_servers
from bench_tune import run_tuning
from rich.console import Console

from fracscan.pipeline import EnsembleRepository, prepare
from fracscan.server import DEMO_REPOSITORY


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
        prepare_files, prepare_note = prepare_inputs(cache, quick=args.quick)
    datas = [p.read_bytes() for p in files]
    result["inputs"] = {"count": len(files), "source": source}

    # 0. full-size pre-processing and members first, while nothing else runs on the machine
    with step("prepare", "prepare at S = 1024, fast vs the scipy reference (one core) ..."):
        result["prepare"] = bench_prepare(prepare_files, sizes.prepare_reps, prepare_note, cache, args.quick)
    with step("full_size_members", "full-size members on ONNX Runtime (one thread) ..."):
        if args.quick or args.skip_full_size:
            reason = "--quick" if args.quick else "--skip-full-size"
            result["full_size_members"] = {
                "skipped": f"{reason}: exporting and timing full-size members takes 1-3 minutes"
            }
            log.print(f"  skipped ({reason})")
        else:
            frame_source = prepare_files.get("dx_uncompressed") or next(iter(prepare_files.values()))
            frame = prepare(frame_source.read_bytes(), None, full_size_spec()).pixels
            result["full_size_members"] = bench_full_size_members(cache, frame, sizes.member_reps)
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
        result["inprocess"] = {
            "variants": variants,
            "images_per_s": best_inproc["images_per_s"],
            "ort_threads": best_inproc["ort_threads"],
        }

        # 2. Triton ensemble through the SDK
        with step("triton", "Triton ensemble through the SDK ..."):
            result["triton"] = bench_triton(server, files, sizes)

        with step("study", "a three-view study against one view, concurrency 1 ..."):
            result["study"] = bench_study(server, files, 4 if args.quick else 20)
            log.print(f"  study / single view = {result['study']['ratio']:.2f}")

        # 4. client-side cost of real-size DICOM (needs the server for the end-to-end part)
        with step("client_cost", "client-side cost of real-size DICOM ..."):
            result["client_cost"] = bench_client_cost(server, large, sizes.client_reps)

        # 3. naive PyTorch (after the Triton phases: its threads then have the cores to themselves)
        with step("naive", "naive PyTorch baseline ..."):
            cores = result["machine"]["cores"]
            result["naive"] = bench_naive(
                repository,
                datas,
                sizes.naive_images,
                [1] if args.quick else sorted({cores, 1}, reverse=True),
                sizes.naive_budget_s,
            )

        # 5. CLI memory, against a server with trivial members (see light_repository)
        if light_ok and len(servers) == 1:
            server.stop()
            with step("light_server_start", "starting a server with trivial members for the CLI memory runs ..."):
                servers += start_servers(
                    stack, [(light_repository(repository, tmp / "light"), {})], logdir, parallel=False
                )
        with step("memory", "CLI memory ..."):
            result["memory"] = bench_memory(servers[-1].http_url, cache, sizes.memory_counts, tmp)
        result["memory"]["server"] = (
            "same spec, trivial members" if light_ok else "the benchmarked repository (onnx not installed)"
        )

    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    tri = result["triton"]["images_per_s"]
    result["triton_over_inprocess"] = tri / result["inprocess"]["images_per_s"]
    naive = result["naive"].get("images_per_s")
    result["triton_over_naive"] = tri / naive if naive else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEMO_REPOSITORY,
        help="Triton repository to benchmark (default: the committed demo)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity run, not figures to quote")
    parser.add_argument(
        "--cache", type=Path, default=default_cache(), help="where generated inputs are kept between runs"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--logdir", default=None, help="keep the Triton server logs here")
    parser.add_argument(
        "--skip-full-size", action="store_true", help="do not export and time the full-size members (1-3 min)"
    )
    parser.add_argument(
        "--tune", action="store_true", help="compare CPU deployment settings against the default instead (~7 min)"
    )
    parser.add_argument("--variants", default="", help="--tune: comma-separated substrings of the variants to run")
    parser.add_argument("--tune-rounds", type=int, default=3, help="--tune: A/B rounds per variant")
    parser.add_argument(
        "--tune-requests", type=int, default=48, help="--tune: requests per phase (at least 4 x concurrency)"
    )
    parser.add_argument("--tune-concurrency", default="4,16", help="--tune: concurrencies to measure")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if not (args.repository / "fracscan.toml").exists():
        log.print(
            f"[red]error:[/] {args.repository} is not a fracscan repository (no fracscan.toml); "
            "build the demo with `make demo-rebuild` or pass --repository"
        )
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
