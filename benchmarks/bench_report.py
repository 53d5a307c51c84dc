"""The benchmark's tables (rich), printed before the JSON line."""

from __future__ import annotations

import statistics

from bench_base import fmt
from rich.console import Console
from rich.table import Table


def print_report(result: dict, console: Console) -> None:
    m = result["machine"]
    console.print(
        f"[bold]fracscan benchmark[/] - repository {result['repository']} (spec '{result['spec']}', "
        f"S = {result['size']}, {result['members']} members); {m['cores']} cores ({m['cpu']}); "
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}"
        f"{' - QUICK run, figures are rough' if result['quick'] else ''}"
    )
    console.print(f"inputs: {result['inputs']['count']} demo radiographs from {result['inputs']['source']}")

    print_prepare(result, console)
    if st := result.get("study"):
        console.print(
            f"study of {st['views']} views, concurrency 1: {fmt(st['study_ms'], 1)} ms against "
            f"{fmt(st['single_ms'], 1)} ms for one view = [bold]{st['ratio']:.2f}x[/] (median of {st['rounds']})"
        )

    t = Table(title="Throughput (radiographs/s) and latency", title_style="bold")
    for col in ("path", "setting", "radiographs/s", "p50 ms", "p95 ms", "p99 ms", "CPU ms/img", "n"):
        t.add_column(col, justify="left" if col in ("path", "setting") else "right")
    for v in result["inprocess"]["variants"]:
        t.add_row(
            "in-process reference",
            f"ORT threads {v['ort_threads']}",
            fmt(v["images_per_s"]),
            fmt(v["p50_ms"], 0),
            "",
            "",
            fmt(v["cpu_ms_per_image"], 0),
            str(v["images"]),
        )
    for p in result["triton"]["phases"].values():
        cpu = p["server_cpu_ms_per_request"].get("server_total", 0.0) + p["client_cpu_ms_per_request"]
        t.add_row(
            "Triton ensemble (SDK, HTTP)",
            f"concurrency {p['concurrency']}",
            fmt(p["images_per_s"]),
            fmt(p["p50_ms"], 0),
            fmt(p["p95_ms"], 0),
            fmt(p["p99_ms"], 0),
            fmt(cpu, 0),
            str(p["requests"]),
        )
    n = result["naive"]
    if n.get("skipped"):
        t.add_row("naive PyTorch eager", f"skipped: {n['skipped']}", "-", "", "", "", "", "")
    else:
        for v in n["variants"]:
            t.add_row(
                "naive PyTorch eager",
                f"torch threads {v['torch_threads']}, random weights",
                fmt(v["images_per_s"]),
                fmt(v["p50_ms"], 0),
                "",
                "",
                fmt(v["cpu_ms_per_image"], 0),
                str(v["images"]),
            )
    console.print(t)
    console.print(
        f"triton_over_inprocess = {fmt(result['triton_over_inprocess'])}  (Triton at concurrency "
        f"{result['triton']['best_concurrency']} / best in-process)   triton_over_naive = {fmt(result['triton_over_naive'])}"
    )

    t = Table(title="Triton metrics per phase (per request; batch = inference_count / exec_count)", title_style="bold")
    for col in ("concurrency", "model", "requests", "execs", "avg batch", "queue ms", "compute ms", "in server ms"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for p in result["triton"]["phases"].values():
        for i, (name, v) in enumerate(metric_rows(p["metrics"])):
            ensemble = name == "fracscan (ensemble)"
            t.add_row(
                str(p["concurrency"]) if i == 0 else "",
                name,
                str(v["requests"]),
                "" if ensemble else str(v["exec_count"]),
                "" if ensemble else fmt(v["avg_batch"]),
                "" if ensemble else fmt(v["queue_ms_per_request"], 1),
                "" if ensemble else fmt(v["compute_ms_per_request"], 1),
                fmt(v["request_ms"], 1),
                end_section=ensemble,
            )
    console.print(t)

    t = Table(
        title="CPU per radiograph (ms; /proc utime+stime of tritonserver and its python stubs, process time of the SDK)",
        title_style="bold",
    )
    cols = (
        "concurrency",
        "preprocess",
        "10 members",
        "average",
        "threshold",
        "tritonserver",
        "server total",
        "client (SDK)",
        "all",
        f"bound on {result['machine']['cores']} idle cores img/s",
    )
    for col in cols:
        t.add_column(col, justify="right")
    for p in result["triton"]["phases"].values():
        cpu = p["server_cpu_ms_per_request"]
        total = cpu.get("server_total", 0.0) + p["client_cpu_ms_per_request"]
        t.add_row(
            str(p["concurrency"]),
            *(
                fmt(cpu.get(k), 1)
                for k in ("preprocess", "members", "average", "threshold", "tritonserver", "server_total")
            ),
            fmt(p["client_cpu_ms_per_request"], 1),
            fmt(total, 1),
            fmt(1000 * result["machine"]["cores"] / total if total else None, 1),
        )
    console.print(t)

    t = Table(title="Client side of real-size DICOM (one core): images per CPU-second", title_style="bold")
    for col in (
        "file",
        "mode",
        "MB file",
        "MB sent",
        "prepare ms CPU",
        "prepare img/CPU-s",
        "e2e client ms CPU",
        "e2e img/CPU-s",
        "e2e wall ms",
    ):
        t.add_column(col, justify="left" if col in ("file", "mode") else "right")
    for v in result["client_cost"].values():
        t.add_row(
            f"{v['file']} {v['shape'][0]}x{v['shape'][1]}/{v['bits_stored']}b",
            v["mode"],
            fmt(v["file_bytes"] / 1e6, 1),
            fmt(v["sent_bytes"] / 1e6, 1),
            fmt(v["prepare_cpu_ms"], 1),
            fmt(v["prepare_images_per_cpu_s"], 1),
            fmt(v["end_to_end_client_cpu_ms"], 1),
            fmt(v["end_to_end_images_per_cpu_s"], 1),
            fmt(v["end_to_end_wall_ms"], 0),
        )
    console.print(t)

    mem = result["memory"]
    if mem.get("skipped"):
        console.print(f"CLI memory: skipped ({mem['skipped']})")
    else:
        t = Table(
            title=f"CLI peak RSS (fracscan predict, jsonl to a file) - server: {mem['server']}", title_style="bold"
        )
        for col in ("inputs", "peak RSS MiB (VmHWM)", "sampled peak MiB", "seconds", "radiographs/s"):
            t.add_column(col, justify="right")
        for v in mem["runs"].values():
            t.add_row(
                str(v["inputs"]),
                fmt(v["peak_rss_mib"], 1),
                fmt(v["sampled_peak_rss_mib"], 1),
                fmt(v["seconds"], 1),
                fmt(v["images_per_s"], 1),
            )
        console.print(t)
        console.print(
            f"RSS ratio {fmt(mem['rss_ratio'], 3)} ({'flat' if mem['flat'] else 'NOT flat'}; goal {mem['goal']})"
        )


def metric_rows(metrics: dict) -> list[tuple[str, dict]]:
    """preprocess, the members (aggregated), average, threshold, the ensemble: in pipeline order."""
    members = [v for k, v in metrics.items() if k.startswith("member_")]
    rows = [(k, metrics[k]) for k in ("preprocess",) if k in metrics]
    if members:
        batches = [v["avg_batch"] for v in members]
        rows.append(
            (
                f"{len(members)} members (mean; batch {min(batches):.2f}-{max(batches):.2f})",
                {
                    "requests": sum(v["requests"] for v in members),
                    "exec_count": sum(v["exec_count"] for v in members),
                    **{
                        key: statistics.mean(v[key] for v in members)
                        for key in ("avg_batch", "queue_ms_per_request", "compute_ms_per_request", "request_ms")
                    },
                },
            )
        )
    rows += [(k, metrics[k]) for k in ("average", "threshold") if k in metrics]
    rows += [("fracscan (ensemble)", metrics["fracscan"])] if "fracscan" in metrics else []
    return rows


def print_tuning(result: dict, console: Console) -> None:
    m = result["machine"]
    console.print(
        f"[bold]fracscan CPU tuning[/] - {result['repository']} (S = {result['size']}); {m['cores']} cores; "
        f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; {result['method']}, "
        f"{result['rounds']} rounds of {result['requests_per_phase']}+ requests"
    )
    t = Table(title="CPU deployment settings vs the default (same members; Triton through the SDK)", title_style="bold")
    for col in (
        "variant",
        "conc.",
        "variant / default",
        "per-round ratios",
        "img/s variant",
        "img/s default",
        "p95 ms variant",
        "p95 ms default",
        "CPU ms/img v / d",
        "member batch v / d",
        "preproc. queue ms v / d",
    ):
        t.add_column(col, justify="left" if col in ("variant", "per-round ratios") else "right")
    for row in result["variants"]:
        items = list(row["summary"].items())
        for i, (c, v) in enumerate(items):
            t.add_row(
                row["variant"] if i == 0 else "",
                c,
                fmt(v["ratio_median"]),
                " ".join(f"{x:.2f}" for x in v["ratios"]),
                fmt(v["variant_images_per_s_median"], 1),
                fmt(v["default_images_per_s_median"], 1),
                fmt(v["variant_p95_ms_median"], 0),
                fmt(v["default_p95_ms_median"], 0),
                f"{v['variant_cpu_ms_median']:.0f} / {v['default_cpu_ms_median']:.0f}",
                f"{v['variant_member_batch']:.2f} / {v['default_member_batch']:.2f}",
                f"{v['variant_preprocess_queue_ms']:.0f} / {v['default_preprocess_queue_ms']:.0f}",
                end_section=i == len(items) - 1,
            )
    console.print(t)


def print_prepare(result: dict, console: Console) -> None:
    """`prepare` at full size against the scipy reference, and the full-size members."""
    p = result["prepare"]
    t = Table(title=f"prepare at S = {p['size']} ({p['spec']} spec), one core: {p['clock']}", title_style="bold")
    for col in (
        "input",
        "shape",
        "MB",
        "decode ms",
        "prepare ms",
        "reference ms",
        "ratio",
        "preprocess ms",
        "reference ms ",
        "ratio ",
        "MAD plain / LCN",
        "same geometry",
    ):
        t.add_column(col, justify="left" if col == "input" else "right")
    for name, v in p["inputs"].items():
        t.add_row(
            name,
            f"{v['shape'][0]}x{v['shape'][1]}",
            fmt(v["bytes"] / 1e6, 1),
            fmt(v["decode_ms"], 1),
            fmt(v["prepare_ms"], 1),
            fmt(v["reference_prepare_ms"], 1),
            fmt(v["prepare_ratio"], 1),
            fmt(v["preprocess_ms"], 1),
            fmt(v["reference_preprocess_ms"], 1),
            fmt(v["preprocess_ratio"], 1),
            f"{v['mad_plain']:.5f} / {v['mad_lcn']:.5f}",
            str(v["geometry_equal"]),
        )
    console.print(t)
    if p.get("note"):
        console.print(f"note: {p['note']}")
    console.print(
        f"pre-processing alone is >= {fmt(p['min_preprocess_ratio'], 1)}x the reference (prepare, decode "
        f"included: >= {fmt(p['min_prepare_ratio'], 1)}x); 3000 x 2500 DX uncompressed: "
        f"{fmt(p['dx_uncompressed_prepare_ms'], 1)} ms = {fmt(p['dx_uncompressed_radiographs_per_core_s'], 1)} "
        "radiographs/s per core"
    )
    print_syntaxes(p.get("syntaxes"), console)
    m = result["full_size_members"]
    if m.get("skipped"):
        console.print(f"full-size members: skipped ({m['skipped']})")
        return
    t = Table(
        title=f"Full-size members (S = {m['size']}, {m['weights']}), ONNX Runtime, {m['ort_threads']} thread, batch 1",
        title_style="bold",
    )
    for col in ("member", "arch", "GFLOP", "CPU ms", "GFLOP/s"):
        t.add_column(col, justify="left" if col in ("member", "arch") else "right")
    for name, v in m["members"].items():
        t.add_row(name, v["arch"], fmt(v["gflop"], 0), fmt(v["cpu_ms"], 0), fmt(v["gflop_per_s"], 1))
    console.print(t)
    console.print(
        f"ten members: {fmt(m['ensemble_gflop'], 0)} GFLOP, about {fmt(m['ensemble_cpu_s_estimate'], 1)} s of one "
        "core per radiograph (extrapolated by FLOPs)"
    )


def print_syntaxes(sx: dict | None, console: Console) -> None:
    """The DX per transfer syntax: decode and prepare against the frozen path (pydicom + scipy)."""
    if not sx:
        return
    t = Table(
        title=f"DX {sx['shape'][0]} x {sx['shape'][1]} 12-bit per transfer syntax, one core, ms CPU (median of "
        f"{sx['reps']})",
        title_style="bold",
    )
    for col in ("syntax", "MB", "decode (full)", "prepare", "decoded at", "frozen: pydicom + scipy", "ratio"):
        t.add_column(col, justify="left" if col == "syntax" else "right")
    for v in sx["syntaxes"].values():
        t.add_row(
            v["label"],
            fmt(v["bytes"] / 1e6, 1),
            fmt(v["decode_ms"], 1),
            fmt(v["prepare_ms"], 1),
            f"1/{v['decode_scale']}",
            fmt(v["frozen_ms"], 1),
            fmt(v["ratio"], 1),
        )
    console.print(t)
    for name, why in sx.get("skipped", {}).items():
        console.print(f"  {name}: skipped ({why})")
