"""What every benchmark phase shares: sizes, the machine's description, statistics, formatting."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
log = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Sizes:
    inprocess_rounds: int = 3  # timed passes over the demo inputs (after one warm-up pass)
    triton_requests: int = 160  # per concurrency phase: max(this, 4 x concurrency)
    naive_images: int = 8  # timed images per torch thread count (after one warm-up image)
    naive_budget_s: float = 30.0  # per thread count: stop early after this long
    client_reps: int = 3  # per (file, mode)
    memory_counts: tuple[int, int] = (200, 2000)
    large_shape: tuple[int, int] = (2000, 2000)
    prepare_reps: int = 5  # per input kind, fast and reference interleaved (median)
    member_reps: int = 2  # timed full-size member runs (after one warm-up)


FULL = Sizes()
QUICK = Sizes(
    inprocess_rounds=1,
    triton_requests=8,
    naive_images=2,
    naive_budget_s=5.0,
    client_reps=1,
    memory_counts=(20, 200),
    prepare_reps=1,
)
CONCURRENCIES = (1, 4, 16)


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


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


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
