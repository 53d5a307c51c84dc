"""`bench.py --tune`: CPU deployment settings of the embedded server, A/B against the default."""

from __future__ import annotations

import os
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

from bench_base import Sizes, log, machine_info
from bench_inputs import demo_inputs
from bench_serving import start_servers, triton_phase

from fracscan.pipeline import EnsembleRepository

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
    chosen = [
        v
        for v in TUNING_VARIANTS
        if v != DEFAULT_VARIANT and (not args.variants or any(s in v for s in args.variants.split(",")))
    ]
    phase_sizes = replace(sizes, triton_requests=args.tune_requests)
    results = []
    with ExitStack() as outer, tempfile.TemporaryDirectory(prefix="fracscan-tune-") as tmp:
        tmp = Path(tmp)

        def repository_for(name: str) -> tuple[Path, int]:
            changes, ort_threads = TUNING_VARIANTS[name]
            out = tmp / f"variant-{list(TUNING_VARIANTS).index(name)}"
            write_repository(
                repo.spec, out, "cpu", onnx_files, repo.thresholds, replace(RepositoryOptions(), **changes)
            )
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
                        measured = {
                            label: triton_phase(srv, files, c, max(phase_sizes.triton_requests, 4 * c))
                            for label, srv in order
                        }
                        rounds.append(
                            {"round": r + 1, "concurrency": c, "loadavg": round(os.getloadavg()[0], 2), **measured}
                        )
                    log.print(
                        f"  round {r + 1}: "
                        + ", ".join(
                            f"c{x['concurrency']} {x['variant']['images_per_s']:.1f} vs {x['default']['images_per_s']:.1f}"
                            for x in rounds
                            if x["round"] == r + 1
                        )
                    )
            summary = {}
            for c in concurrencies:
                mine = [x for x in rounds if x["concurrency"] == c]
                summary[str(c)] = {
                    "ratio_median": statistics.median(
                        x["variant"]["images_per_s"] / x["default"]["images_per_s"] for x in mine
                    ),
                    "ratios": [x["variant"]["images_per_s"] / x["default"]["images_per_s"] for x in mine],
                    "variant_images_per_s_median": statistics.median(x["variant"]["images_per_s"] for x in mine),
                    "default_images_per_s_median": statistics.median(x["default"]["images_per_s"] for x in mine),
                    "variant_p95_ms_median": statistics.median(x["variant"]["p95_ms"] for x in mine),
                    "default_p95_ms_median": statistics.median(x["default"]["p95_ms"] for x in mine),
                    "variant_cpu_ms_median": statistics.median(_phase_cpu(x["variant"]) for x in mine),
                    "default_cpu_ms_median": statistics.median(_phase_cpu(x["default"]) for x in mine),
                    "variant_member_batch": statistics.mean(_member_mean(x["variant"], "avg_batch") for x in mine),
                    "default_member_batch": statistics.mean(_member_mean(x["default"], "avg_batch") for x in mine),
                    "variant_preprocess_queue_ms": statistics.mean(
                        x["variant"]["metrics"]["preprocess"]["queue_ms_per_request"] for x in mine
                    ),
                    "default_preprocess_queue_ms": statistics.mean(
                        x["default"]["metrics"]["preprocess"]["queue_ms_per_request"] for x in mine
                    ),
                }
            changes, threads = TUNING_VARIANTS[name]
            results.append(
                {
                    "variant": name,
                    "options": changes,
                    "ort_threads": threads,
                    "summary": summary,
                    "rounds": [
                        {
                            k: v
                            if k in ("round", "concurrency", "loadavg")
                            else {
                                m: v[m]
                                for m in (
                                    "images_per_s",
                                    "p50_ms",
                                    "p95_ms",
                                    "p99_ms",
                                    "requests",
                                    "errors",
                                    "error_messages",
                                    "client_cpu_ms_per_request",
                                    "server_cpu_ms_per_request",
                                )
                            }
                            for k, v in x.items()
                        }
                        for x in rounds
                    ],
                }
            )
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
