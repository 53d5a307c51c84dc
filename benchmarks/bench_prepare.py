"""`prepare` at S = 1024 per input kind: the fast pre-processing against the frozen scipy reference.

Both run in the same process, interleaved, on the same bytes, so they see the same machine and
load; the figures are CPU time of the calling thread (`time.thread_time`), which is what one
core spends: decoding, OpenCV (one thread), scipy.sparse and Pillow all run in the calling
thread, and the process's other threads (an idle server, if any) are not counted.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from bench_base import log
from reference_preprocess import reference_preprocess

from fracscan.decode import decode_image
from fracscan.pipeline import prepare
from fracscan.preprocess import preprocess
from fracscan.spec import EnsembleSpec, builtin_spec_path, load_spec


def full_size_spec() -> EnsembleSpec:
    return load_spec(builtin_spec_path("jones2020"))


def _cpu_ms(fn) -> float:
    start = time.thread_time()
    fn()
    return 1000 * (time.thread_time() - start)


def bench_one(data: bytes, spec: EnsembleSpec, reps: int) -> dict:
    """Median CPU ms of decode, prepare (decode + fast pre-processing) and decode + reference, and
    of the pre-processing alone (fast vs reference, on the decoded pixels); parity of the two."""
    pixels = decode_image(data).pixels
    fast, geometry = preprocess(pixels, spec.preprocess)  # warm-up: weights, codec imports
    expected, expected_geometry = reference_preprocess(pixels, spec.preprocess)
    times: dict[str, list[float]] = {
        k: [] for k in ("decode", "prepare", "reference_prepare", "preprocess", "reference_preprocess")
    }
    for _ in range(reps):
        times["decode"].append(_cpu_ms(lambda: decode_image(data)))
        times["prepare"].append(_cpu_ms(lambda: prepare(data, None, spec)))
        times["reference_prepare"].append(
            _cpu_ms(lambda: reference_preprocess(decode_image(data).pixels, spec.preprocess))
        )
        times["preprocess"].append(_cpu_ms(lambda: preprocess(pixels, spec.preprocess)))
        times["reference_preprocess"].append(_cpu_ms(lambda: reference_preprocess(pixels, spec.preprocess)))
    ms = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    mad = np.abs(fast - expected).mean(axis=(1, 2))
    return {
        "shape": list(pixels.shape),
        "bytes": len(data),
        "reps": reps,
        **ms,
        "prepare_ratio": ms["reference_prepare_ms"] / ms["prepare_ms"],
        "preprocess_ratio": ms["reference_preprocess_ms"] / ms["preprocess_ms"],
        "mad_plain": float(mad[0]),
        "mad_lcn": float(mad[1]),
        "geometry_equal": geometry == expected_geometry,
    }


def bench_prepare(
    files: dict[str, Path], reps: int, note: str | None, cache: Path | None = None, quick: bool = False
) -> dict:
    spec = full_size_spec()
    inputs = {}
    for name, path in files.items():
        log.print(f"  prepare: {name} ...")
        inputs[name] = {"file": path.name, **bench_one(path.read_bytes(), spec, reps)}
    dx = inputs.get("dx_uncompressed")
    syntaxes = None
    if cache is not None:
        from bench_syntaxes import bench_syntaxes

        quick_names = ("explicit_vr_little_endian", "jpeg2000_lossless")
        syntaxes = bench_syntaxes(cache, spec, 1 if quick else 3, quick_names if quick else None)
    return {
        "syntaxes": syntaxes,
        "spec": spec.name,
        "size": spec.preprocess.size,
        "clock": "thread CPU time, median of reps",
        "note": note,
        "inputs": inputs,
        "min_preprocess_ratio": min((v["preprocess_ratio"] for v in inputs.values()), default=None),
        "min_prepare_ratio": min((v["prepare_ratio"] for v in inputs.values()), default=None),
        "dx_uncompressed_prepare_ms": dx["prepare_ms"] if dx else None,
        "dx_uncompressed_radiographs_per_core_s": 1000 / dx["prepare_ms"] if dx else None,
    }
