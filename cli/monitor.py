"""`fracscan monitor`: does the model still work here? Result rows over time against a baseline.

Exit codes: 0 no alarm, 3 at least one alarm, 2 usage (a file that cannot be read). The figures and
their limits: fracscan.monitoring and docs/monitoring.md.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fracscan.cli.console import fail, note, out, warn
from fracscan.monitoring import MonitorInputError, Settings, build_report, read_baseline, read_results, read_verdicts

EXIT_ALARM = 3
COLUMNS = {  # table column -> figure
    "fail": "failure_rate",
    "positive": "positive_rate",
    "definite": "definite_rate",
    "PSI": "score_shift",
    "spread": "spread_shift",
    "QC": "qc_rate",
    "fallback": "fallback_rate",
    "new acq.": "new_acquisition",
    "sens.": "sensitivity",
    "spec.": "specificity",
}


class Window(StrEnum):
    day = "day"
    week = "week"
    month = "month"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


def monitor(
    results: Annotated[
        list[Path],
        typer.Argument(help="Result rows: the JSONL of `fracscan predict`, or the results log of `fracscan listen`."),
    ],
    verdicts: Annotated[
        Path | None,
        typer.Option(help="Radiologists' reads (CSV: source or sop_instance_uid, fracture 1/0, [date], [judgement])."),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Result rows (JSONL) or a calibration's thresholds.json; default: each model's first windows."
        ),
    ] = None,
    by: Annotated[Window, typer.Option(help="Window length.")] = Window.week,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Report format (stdout).")] = ReportFormat.table,
    plot: Annotated[Path | None, typer.Option(help="Write one PNG per figure over time into this folder.")] = None,
    prometheus: Annotated[
        Path | None, typer.Option(help="Write the figures in node-exporter text-file format.")
    ] = None,
    baseline_windows: Annotated[
        int, typer.Option(help="Windows a model without a given baseline is compared with (its first ones).")
    ] = Settings.baseline_windows,
    target_sensitivity: Annotated[
        float, typer.Option(help="The sensitivity the thresholds were calibrated for.")
    ] = Settings.target_sensitivity,
) -> None:
    """Per window and region: volume, failures, positive rates, score shift, new scanners and (with
    --verdicts) sensitivity, against a baseline with control limits. Exits 3 when a figure leaves its limits."""
    if baseline_windows < 1:
        fail("--baseline-windows must be at least 1")
    if not 0 < target_sensitivity < 1:
        fail("--target-sensitivity must lie in (0, 1)")
    try:
        records = read_results(results)
        base = read_baseline(baseline) if baseline else None
        reads = read_verdicts(verdicts) if verdicts else None
    except MonitorInputError as exc:
        fail(str(exc))
    if not records:
        fail("no result rows in " + ", ".join(str(p) for p in results))
    target = target_sensitivity
    if (
        base is not None
        and not isinstance(base, list)
        and base.target_sensitivity
        and target == Settings.target_sensitivity
    ):
        target = float(base.target_sensitivity)
    settings = Settings(by=by.value, baseline_windows=baseline_windows, target_sensitivity=target)
    report = build_report(records, base, reads, settings)
    if fmt is ReportFormat.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    for line in report["notes"]:
        warn(line)
    if plot is not None:
        try:
            from fracscan.monitoring.plots import write_plots
        except ImportError:
            fail("--plot needs matplotlib: pip install 'fracscan[evaluate]'")
        written = write_plots(report, plot)
        note(f"wrote {len(written)} plot(s) to {plot}")
    if prometheus is not None:
        from fracscan.monitoring import prometheus as prom

        try:
            prom.write(report, prometheus)
        except OSError as exc:
            fail(f"--prometheus {prometheus}: {exc.strerror or exc}")
    raise typer.Exit(EXIT_ALARM if report["alarms"] else 0)


def print_report(report: dict[str, Any]) -> None:
    """The pooled region of every window, and each region with an alarm; the alarms listed below."""
    alarmed = {(a["window"], a["series"], a["region"]) for a in report["alarms"]}
    cells = [c for c in report["cells"] if c["region"] == "all" or (c["window"], c["series"], c["region"]) in alarmed]
    hidden = len(report["cells"]) - len(cells)
    table = Table(
        title="fracscan monitor",
        title_style="bold",
        caption=f"! out of limits; ~ too few to judge; b baseline window. {hidden} region row(s) without alarm "
        "not shown (--format json lists every one)",
    )
    for name in ("window", "series", "region", "n", *COLUMNS):
        table.add_column(name, justify="right" if name not in ("window", "region") else "left")
    for c in cells:
        row = [c["window"], str(c["series"]), escape(c["region"]), str(c["n"])]
        row += [_cell(name, c["figures"].get(figure)) for name, figure in COLUMNS.items()]
        table.add_row(*row)
    out.print(table)
    for s in report["series"]:
        out.print(f"series {s['series']}: {escape(s['identity'])} from {s['first_window']}, baseline: {s['baseline']}")
    for a in report["alarms"]:
        out.print(
            f"[bold red]ALARM[/] {a['window']} series {a['series']} {escape(a['region'])} {a['figure']}: {escape(a['message'])}"
        )
    if not report["alarms"]:
        out.print("[green]no alarm[/]")


def _cell(name: str, f: dict[str, Any] | None) -> str:
    if f is None or (f.get("value") is None and f.get("status") != "alarm"):
        return ""
    value = f["value"]
    text = str(value) if name == "new acq." else f"{value:.2f}"
    mark = {"alarm": " [bold red]![/]", "too few": " ~", "baseline": " b"}.get(f.get("status") or "", "")
    return (f"[bold red]{text}[/]" if f.get("status") == "alarm" else text) + mark
