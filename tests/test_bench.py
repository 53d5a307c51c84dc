"""`benchmarks/bench.py --quick` runs end to end and reports every figure (no timing assertions:
performance claims come from the benchmark script only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPOSITORY, ROOT

BENCH = ROOT / "benchmarks" / "bench.py"
KEYS = {
    "machine",
    "repository",
    "inputs",
    "prepare",
    "full_size_members",
    "inprocess",
    "triton",
    "naive",
    "client_cost",
    "memory",
    "triton_over_inprocess",
    "triton_over_naive",
}


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def test_quick_benchmark_prints_a_json_report(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repository", str(REPOSITORY), "--logdir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    report = json.loads(lines[-1])  # the LAST line is the JSON object
    assert set(report) >= KEYS, KEYS - set(report)
    assert report["quick"] is True
    assert Path(report["repository"]) == REPOSITORY.resolve()

    prepare = report["prepare"]
    assert prepare["size"] == 1024 and "dx_uncompressed" in prepare["inputs"] and "dx_png" in prepare["inputs"]
    for v in prepare["inputs"].values():  # fast vs the frozen scipy reference, same run
        assert all(_positive(v[k]) for k in ("decode_ms", "prepare_ms", "reference_prepare_ms", "preprocess_ratio"))
        assert v["mad_plain"] <= 0.005 and v["mad_lcn"] <= 0.005 and v["geometry_equal"]
    assert _positive(prepare["min_preprocess_ratio"]) and _positive(prepare["dx_uncompressed_radiographs_per_core_s"])
    assert report["full_size_members"]["skipped"].startswith("--quick")  # exporting them takes minutes

    assert _positive(report["inprocess"]["images_per_s"])
    assert all(_positive(v["images_per_s"]) for v in report["inprocess"]["variants"])

    phases = report["triton"]["phases"]
    assert set(phases) == {"1", "4", "16"}
    for phase in phases.values():
        assert phase["errors"] == 0
        assert _positive(phase["images_per_s"])
        assert 0 < phase["p50_ms"] <= phase["p95_ms"] <= phase["p99_ms"]
        members = [m for name, m in phase["metrics"].items() if name.startswith("member_")]
        assert len(members) == report["members"]
        for m in members:  # achieved batch size and per-request times from Triton's metrics
            assert m["requests"] == phase["requests"] and m["avg_batch"] >= 1
            assert m["queue_ms_per_request"] >= 0 and m["compute_ms_per_request"] > 0
        assert phase["metrics"]["preprocess"]["requests"] == phase["requests"]
    assert _positive(report["triton_over_inprocess"])

    naive = report["naive"]
    if naive["skipped"] is None:
        assert _positive(naive["images_per_s"]) and _positive(report["triton_over_naive"])
    else:
        assert report["triton_over_naive"] is None

    assert {v["mode"] for v in report["client_cost"].values()} == {"server_decode", "client_decode"}
    for cost in report["client_cost"].values():
        assert cost["shape"] == [2000, 2000]
        assert _positive(cost["prepare_images_per_cpu_s"]) and _positive(cost["end_to_end_images_per_cpu_s"])

    runs = report["memory"]["runs"]
    assert len(runs) == 2
    for count, run_ in runs.items():
        assert run_["ok"] == int(count) and _positive(run_["peak_rss_mib"])
    assert _positive(report["memory"]["rss_ratio"])


def test_the_gpu_report_refuses_clearly_without_cuda(tmp_path):
    """`make bench-gpu` on a machine without a CUDA GPU: exit 2, why, and no report (nothing half-measured)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: run `make bench-gpu` itself")
    report = tmp_path / "gpu_report.json"
    make = subprocess.run(
        ["make", "-n", "bench-gpu", f"BENCH_GPU_REPORT={report}"], cwd=ROOT, capture_output=True, text=True
    )
    assert make.returncode == 0 and f"benchmarks/bench_gpu.py --report {report}" in make.stdout
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "--report needs torch with CUDA" in done.stderr and "no report was written" in done.stderr
    assert not report.exists()
