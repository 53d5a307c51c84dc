"""Member compute on the CPU: the naive PyTorch baseline, and the full-size members on ONNX Runtime."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from bench_base import log, timed_variant

from fracscan.pipeline import EnsembleRepository, prepare


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


FULL_SIZE_ARCHS = ("drn_d_22", "drn_d_54")  # the smallest and the largest members of jones2020


def _export_full_size(cache: Path, spec, member) -> Path:
    """Export one random-init full-size member to ONNX once (kept in the cache)."""
    import torch

    from fracscan.export.members import build_member
    from fracscan.export.onnx_export import export_member

    path = cache / "full-size-onnx" / f"{member.name}-s{spec.preprocess.size}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        tmp = path.with_suffix(".tmp.onnx")
        export_member(build_member(member).eval(), member, spec.preprocess.size, tmp)
        tmp.rename(path)
    return path


def bench_full_size_members(cache: Path, frame: np.ndarray, reps: int) -> dict:
    """CPU ms per radiograph (batch 1, ONNX Runtime, one intra-op thread) of one member per arch in
    FULL_SIZE_ARCHS, random weights (timing only), on a real pre-processed frame; and the ten
    members' total extrapolated by FLOPs from the measured ms per GFLOP."""
    try:
        from fracscan.export.flops import member_cost
    except ImportError as exc:
        return {"skipped": f"needs the export extra (torch, onnx): {exc}"}
    from bench_prepare import full_size_spec

    from fracscan.onnxrt import ort_session
    from fracscan.pipeline import run_member

    spec = full_size_spec()
    size = spec.preprocess.size
    out: dict = {
        "skipped": None,
        "spec": spec.name,
        "size": size,
        "ort_threads": 1,
        "weights": "random (timing only)",
        "members": {},
    }
    for arch in FULL_SIZE_ARCHS:
        member = next(m for m in spec.members if m.arch == arch)
        log.print(f"  full-size members: {member.name} (export once, then {reps} timed runs) ...")
        start = time.perf_counter()
        path = _export_full_size(cache, spec, member)
        export_s = time.perf_counter() - start
        session = ort_session(path, threads=1)
        run_member(session, frame[None])  # warm-up
        cpu = []
        for _ in range(reps):
            t = time.thread_time()
            run_member(session, frame[None])
            cpu.append(time.thread_time() - t)
        gflop = member_cost(member, size).flops / 1e9
        ms = 1000 * statistics.median(cpu)
        out["members"][member.name] = {
            "arch": arch,
            "gflop": gflop,
            "cpu_ms": ms,
            "gflop_per_s": gflop / ms * 1000,
            "reps": reps,
            "export_or_load_s": round(export_s, 1),
        }
    rate = statistics.mean(v["cpu_ms"] / v["gflop"] for v in out["members"].values())
    total_gflop = sum(member_cost(m, size).flops for m in spec.members) / 1e9
    out["ensemble_gflop"] = total_gflop
    out["ensemble_cpu_s_estimate"] = total_gflop * rate / 1000
    return out
