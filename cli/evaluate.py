"""`fracscan evaluate`: metrics of labelled predictions, overall and per region.

Reads the JSONL written by `fracscan predict --format jsonl` and a labels CSV
(`source,fracture[,region]`, and a column per classification head to evaluate it, e.g. `laterality`);
the work is done by `fracscan.evaluation`. The report (a rich
table, or JSON) goes to stdout, the matching report and warnings to stderr. `read_labelled` and
`format_value` are shared with `fracscan calibrate`, which starts from the same two files.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fracscan import evaluation as ev
from fracscan.cli.console import fail, note, warn
from fracscan.contract import STUDY_RULES
from fracscan.evaluation import studies
from fracscan.evaluation.report import ReportInputs, evaluation_report
from fracscan.thresholds import Thresholds, ThresholdsError

DASH = "—"
TABLE_WIDTH = 160  # when stdout is not a terminal (a file, a pipe): wide enough for the CIs


class ReportFormat(StrEnum):
    """What `evaluate` writes: a rich table, or one JSON report."""

    table = "table"
    json = "json"


def read_labelled(predictions: Path, labels: Path) -> ev.Labelled:
    """Read and match both files and print the matching report; exit 2 on bad input or no match."""
    try:
        labelled = ev.read_labelled(predictions, labels)
    except ev.EvaluationError as exc:
        fail(str(exc))
    summary, *problems = labelled.matched.report()
    note(summary)
    for line in problems:
        warn(line)
    return labelled


def format_value(value: float | None, ci: list[float] | None = None) -> str:
    """A rate to three decimals with its CI, a dash when undefined."""
    if value is None:
        return DASH
    text = f"{value:.3f}".replace("-0.000", "0.000")
    return text + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def evaluate(
    predictions: Annotated[
        Path, typer.Argument(help="Predictions JSONL from `fracscan predict --format jsonl`.", show_default=False)
    ],
    labels: Annotated[
        Path, typer.Argument(help="Labels CSV: source,fracture[,region][,<head>...].", show_default=False)
    ],
    thresholds: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate at these thresholds (region threshold, else fallback) instead of the predictions' decisions."
        ),
    ] = None,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="table (rich) or json (stdout).")
    ] = ReportFormat.table,
    plot: Annotated[Path | None, typer.Option(help="Write ROC curves to this PNG.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC / PPV / NPV CIs (0: none).")] = 1000,
    by_study: Annotated[
        bool,
        typer.Option(help="Evaluate the study rows of `predict --by-study` against labels study,fracture[,region]."),
    ] = False,
    rule: Annotated[
        str | None,
        typer.Option(help=f"--by-study: aggregate the view scores again under this rule ({', '.join(STUDY_RULES)})."),
    ] = None,
) -> None:
    """Metrics of the predictions against labels: overall and per region.

    With box columns in the labels (x0,y0,x1,y1), also where the boxes land: the share of the
    fractured radiographs whose top box overlaps a labelled box with IoU >= 0.3, and the box
    sensitivity (the share of labelled boxes any predicted box hits), with Wilson 95% CIs.

    AUC, sensitivity, specificity, PPV, NPV with 95% CIs (Wilson for sensitivity and
    specificity; percentile bootstrap, stratified by label, for AUC, PPV and NPV) and Cohen's
    kappa. The operating point is the predictions' own `fracture` decision, or score >= the
    region's threshold of --thresholds (its fallback for regions it does not list).

    A labels column named like a classification head of the predictions (e.g. laterality, its values
    the head's class names) adds that head's n, accuracy (Wilson 95% CI) and Cohen's kappa; rows
    with an empty value are left out of that head. Heads are evaluated per image only: with
    --by-study, a labels column besides study,fracture,region is named in a warning and not evaluated.
    """
    if bootstrap < 0:
        fail(f"--bootstrap must be >= 0, got {bootstrap}")
    chosen = None
    if thresholds is not None:
        try:
            chosen = Thresholds.load(thresholds)
        except ThresholdsError as exc:
            fail(str(exc))
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("--plot needs matplotlib: pip install 'fracscan[evaluate]'")
    heads: dict[str, tuple[str, ...]] = {}
    if by_study:
        from fracscan.cli._evaluate_study import study_cases

        cases = study_cases(predictions, labels, rule)
        matched, decide = cases.matched, studies.study_decisions
        if cases.unused_columns:
            warn(
                f"--by-study evaluates the fracture answer per study; the labels column(s) "
                f"{', '.join(cases.unused_columns)} are not evaluated: classification heads are evaluated "
                "per image only (run `fracscan evaluate` without --by-study on per-image predictions and labels)"
            )
    else:
        labelled = read_labelled(predictions, labels)
        matched, decide, heads = labelled.matched, ev.decisions_for, labelled.heads
    inputs = ReportInputs(
        predictions=predictions.name,
        labels=labels.name,
        operating_point="predictions" if thresholds is None else str(thresholds),
        unit="study" if by_study else "radiograph",
    )
    try:
        decisions = decide(matched.cases, chosen)
        report = evaluation_report(
            matched, decisions, inputs, heads=heads, bootstrap=bootstrap, seed=seed, localise=not by_study
        )
    except (ev.EvaluationError, ValueError) as exc:
        fail(str(exc))
    if plot is not None:
        point = "the predictions’ decisions" if thresholds is None else thresholds.name
        title = f"ROC — {predictions.name} vs {labels.name} (n = {len(matched.cases)})"
        try:
            ev.plot_roc(
                matched.cases, decisions, plot, title=title, subtitle=f"operating point: {point}", metrics=report
            )
        except OSError as exc:
            fail(f"{plot}: cannot write the plot: {exc}")
        note(f"wrote {plot}")
    if output_format is ReportFormat.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    _print_table(report)


def _print_table(report: dict[str, Any]) -> None:
    boot = report["bootstrap"]
    intervals = (
        f"bootstrap ({boot['resamples']} stratified resamples, seed {boot['seed']})"
        if boot["resamples"]
        else "not computed (--bootstrap 0)"
    )
    table = Table(
        title=f"{report['predictions']} vs {report['labels']} — operating point: {report['operating_point']}",
        caption=f"95% CIs: sensitivity/specificity Wilson; AUC/PPV/NPV {intervals}",
        title_style="bold",
    )
    table.add_column("region")
    for col in ("n", "pos", "AUC", "sensitivity", "specificity", "PPV", "NPV", "kappa"):
        table.add_column(col, justify="right")

    def row(name: str, m: dict[str, Any], style: str | None = None) -> None:
        table.add_row(
            name,
            str(m["n"]),
            str(m["positives"]),
            format_value(m["auc"], m["auc_ci"]),
            format_value(m["sensitivity"], m["sensitivity_ci"]),
            format_value(m["specificity"], m["specificity_ci"]),
            format_value(m["ppv"], m["ppv_ci"]),
            format_value(m["npv"], m["npv_ci"]),
            format_value(m["kappa"]),
            style=style,
        )

    row("overall", report["overall"], "bold")
    table.add_section()
    for name, m in report["regions"].items():
        row(name, m)
    # The shared `out` console wraps at 80 columns off a terminal; this table needs more.
    console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    console.print(table)
    if "localisation" in report:
        console.print(escape(localisation_line(report["localisation"])))
    if "heads" in report:
        console.print(heads_table(report["heads"]))


def heads_table(heads: dict[str, Any]) -> Table:
    """Accuracy (Wilson 95% CI) and Cohen's kappa of each classification head, as Olczak et al. report them."""
    table = Table(title="classification heads", title_style="bold", caption="95% CI: Wilson")
    table.add_column("head")
    for col in ("n", "accuracy", "kappa"):
        table.add_column(col, justify="right")
    table.add_column("classes")
    for name, m in heads.items():
        table.add_row(
            escape(name),
            str(m["n"]),
            format_value(m["accuracy"], m["accuracy_ci"]),
            format_value(m["kappa"]),
            escape(", ".join(m["classes"])),
        )
    return table


def localisation_line(loc: dict[str, Any]) -> str:
    """The localisation metrics in one sentence (labels with boxes only)."""
    rate = format_value(loc["top_box_rate"], loc["top_box_rate_ci"] or None)
    sens = format_value(loc["box_sensitivity"], loc["box_sensitivity_ci"] or None)
    return (
        f"localisation (IoU >= {loc['iou']:g}): top box on a labelled box in {loc['top_box_hits']} of "
        f"{loc['radiographs']} fractured radiographs with boxes, {rate}; box sensitivity "
        f"{loc['boxes_hit']} of {loc['boxes']} labelled boxes hit, {sens}"
    )
