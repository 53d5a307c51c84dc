"""In-process reference and the embedded Triton ensemble through the SDK: throughput, latency, metrics, CPU."""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx
from bench_base import CONCURRENCIES, Sizes, log, percentile_ms, rate, timed_variant

from fracscan.pipeline import ReferenceRunner
from fracscan.server import EmbeddedServer


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


_SAMPLE = re.compile(r"^(nv_inference_\w+)\{([^}]*)\}\s+(\S+)$")
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
            "compute_io_ms_per_request": (
                d["nv_inference_compute_input_duration_us"] + d["nv_inference_compute_output_duration_us"]
            )
            / requests
            / 1000,
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
        model = (
            Path(argv[1].decode(errors="replace")).parts[-3]
            if len(argv) > 1 and argv[1].endswith(b"model.py")
            else "other"
        )
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


def start_servers(
    stack: ExitStack, specs: list[tuple[Path, dict]], logdir: Path, parallel: bool
) -> list[EmbeddedServer]:
    """Start embedded servers (in parallel if asked); each is stopped when the stack closes."""
    servers = [EmbeddedServer(repo, log_path=logdir / f"server-{i}.log", **kw) for i, (repo, kw) in enumerate(specs)]
    errors: list[BaseException] = []

    def start(server: EmbeddedServer) -> None:
        t = time.perf_counter()
        try:
            server.start(timeout=600)
            server._bench_start_s = round(time.perf_counter() - t, 1)  # type: ignore[attr-defined]
        except BaseException as exc:
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


def bench_study(server: EmbeddedServer, files: list[Path], rounds: int, views: int = 3) -> dict:
    """Study latency / single-view latency at concurrency 1: `predict_study` of `views` radiographs against
    `predict` of one of them, interleaved, after a warm-up; medians of wall time."""
    from fracscan.client import FracScanClient

    picked = [p.read_bytes() for p in files[:views]]
    single, study = [], []
    with FracScanClient(server.http_url) as client:
        client.predict_study(picked)
        for i in range(rounds):
            start = time.perf_counter()
            client.predict(picked[i % len(picked)])
            single.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.predict_study(picked)
            study.append(time.perf_counter() - start)
    single_ms, study_ms = 1000 * statistics.median(single), 1000 * statistics.median(study)
    return {
        "views": views,
        "rounds": rounds,
        "single_ms": single_ms,
        "study_ms": study_ms,
        "ratio": study_ms / single_ms,
    }
