"""`fracscan calibrate` and `fracscan evaluate`: operating points and metrics from labelled predictions.

Both read the JSONL written by `fracscan predict --format jsonl` and a labels CSV
(`source,fracture[,region][,x0,y0,x1,y1]`); the work is done by `fracscan.evaluation`.
Reports and warnings go to stderr, results (the JSON of `evaluate --format json`) to stdout.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fracscan import evaluation as ev
from fracscan.postprocess import Thresholds, ThresholdsError

err = Console(stderr=True)

DASH = "—"


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def _info(message: str) -> None:
    err.print(escape(message), highlight=False, soft_wrap=True)


def _load(predictions: Path, labels: Path) -> tuple[list[ev.PredictionRow], ev.Matched, bool]:
    """Read and match both files; print the matching report; exit 2 on bad input or no match."""
    try:
        rows = ev.read_predictions(predictions)
        label_rows, has_boxes = ev.read_labels(labels)
    except ev.EvaluationError as exc:
        raise _fail(str(exc)) from None
    if not rows:
        raise _fail(f"{predictions}: no predictions in the file")
    matched = ev.match(rows, label_rows)
    if not matched.cases:
        sample = lambda xs: ", ".join(repr(x) for x in xs[:3])  # noqa: E731
        why = (
            f"all {len(matched.errors)} matched predictions have status \"error\""
            if matched.errors
            else f"predictions hold e.g. {sample([r.source for r in rows])}; labels hold e.g. {sample([r.source for r in label_rows])}"
        )
        raise _fail(f"no labelled radiograph of {labels} matched an \"ok\" prediction of {predictions} ({why})")
    for i, line in enumerate(matched.report()):
        (_info if i == 0 else _warn)(line)
    return rows, matched, has_boxes


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return DASH
    text = f"{value:.3f}".replace("-0.000", "0.000")
    return text + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def calibrate(
    predictions: Annotated[Path, typer.Argument(help="Predictions JSONL from `fracscan predict --format jsonl`.", show_default=False)],
    labels: Annotated[Path, typer.Argument(help="Labels CSV: source,fracture[,region][,x0,y0,x1,y1].", show_default=False)],
    sensitivity: Annotated[float, typer.Option(help="Target sensitivity per region (the paper: 0.925).")] = 0.925,
    output: Annotated[Path, typer.Option("--output", "-o", help="thresholds.json to write.")] = Path("thresholds.json"),
    min_positives: Annotated[int, typer.Option(help="Regions with fewer positives use the pooled fallback threshold.")] = 10,
    definite_specificity: Annotated[
        float | None, typer.Option(help="Also record a high-specificity 'definite_threshold' per region at this specificity.")
    ] = None,
    repository: Annotated[
        Path | None, typer.Option(help="Model repository: also write DIR/thresholds.json there (then restart the server).")
    ] = None,
) -> None:
    """Calibrate per-region thresholds to a target sensitivity on a labelled tuning set.

    Per region, threshold = the ceil(target x P)-th largest score among the region's P positives
    (fracture iff score >= threshold), so at least the target fraction of them is detected.
    With box labels (x0,y0,x1,y1), map-binarisation thresholds are tuned the same way on the
    labelled boxes (see `fracscan.evaluation.calibrate`).
    """
    if not 0.0 < sensitivity <= 1.0:
        raise _fail(f"--sensitivity must lie in (0, 1], got {sensitivity}")
    if definite_specificity is not None and not 0.0 < definite_specificity <= 1.0:
        raise _fail(f"--definite-specificity must lie in (0, 1], got {definite_specificity}")
    if min_positives < 1:
        raise _fail(f"--min-positives must be at least 1, got {min_positives}")
    current = None
    if repository is not None:
        from fracscan.pipeline import SPEC_FILE, THRESHOLDS_FILE

        if not repository.is_dir():
            raise _fail(f"{repository}: --repository must be an existing model repository directory")
        if not (repository / SPEC_FILE).is_file():
            _warn(f"{repository} has no {SPEC_FILE}: is it a fracscan model repository?")
        if (repository / THRESHOLDS_FILE).is_file():
            try:
                current = Thresholds.load(repository / THRESHOLDS_FILE)
            except ThresholdsError as exc:
                _warn(f"current thresholds not readable, map thresholds start from 0.5: {exc}")
    rows, matched, has_boxes = _load(predictions, labels)
    provenance: dict[str, Any] = {**ev.file_provenance(predictions), "labels": labels.name, "matched_by": matched.mode}
    model = ev.model_identity(rows)
    if isinstance(model, list):
        _warn(f"the predictions come from {len(model)} different models: {model}")
    if model is not None:
        provenance["model"] = model
    try:
        result = ev.calibrate(
            matched.cases,
            sensitivity,
            min_positives=min_positives,
            definite_specificity=definite_specificity,
            box_labels=has_boxes,
            current=current,
            provenance=provenance,
        )
    except (ev.EvaluationError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for message in result.warnings:
        _warn(message)
    if repository is not None:
        _region_check(repository, result)

    table = Table(title=f"Calibrated to sensitivity {sensitivity:g} on {predictions.name}", title_style="bold")
    for col in ("region", "n", "pos", "threshold", "sens", "spec", "map thr"):
        table.add_column(col, justify="left" if col == "region" else "right")
    if definite_specificity is not None:
        table.add_column("definite", justify="right")
    for name, a in result.achieved.items():
        cells = [
            name + (" (fallback)" if a["fallback"] else ""),
            str(a["n"]),
            str(a["positives"]),
            f"{a['threshold']:.6g}",
            _fmt(a["sensitivity"]),
            _fmt(a["specificity"]),
            f"{a['map_threshold']:.4g}",
        ]
        if definite_specificity is not None:
            cells.append(DASH if a["definite_threshold"] is None else f"{a['definite_threshold']:.6g}")
        table.add_row(*cells, style="dim" if a["fallback"] else None)
    err.print(table)
    targets = [output] + ([repository / "thresholds.json"] if repository is not None else [])
    for target in targets:
        try:
            result.save(target)
        except (OSError, ThresholdsError) as exc:
            raise _fail(f"{target}: cannot write thresholds: {exc}") from None
        _info(f"wrote {target}")
    if repository is not None:
        _info(
            f"The served `threshold` model reads {repository / 'thresholds.json'} when it loads: restart the server "
            "(`fracscan serve`, or the Triton container) to apply the new thresholds. No engine or member needs rebuilding."
        )


def _region_check(repository: Path, result: ev.Calibration) -> None:
    from fracscan.pipeline import SPEC_FILE
    from fracscan.spec import SpecError, load_spec

    if not (repository / SPEC_FILE).is_file():
        return
    try:
        spec = load_spec(repository / SPEC_FILE)
    except SpecError:
        return
    unknown = sorted(set(result.regions) - set(spec.regions))
    if unknown:
        _warn(f"calibrated regions the repository's spec does not list (never applied): {', '.join(unknown)}")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def evaluate(
    predictions: Annotated[Path, typer.Argument(help="Predictions JSONL from `fracscan predict --format jsonl`.", show_default=False)],
    labels: Annotated[Path, typer.Argument(help="Labels CSV: source,fracture[,region].", show_default=False)],
    thresholds: Annotated[
        Path | None, typer.Option(help="Evaluate at these thresholds (region threshold, else fallback) instead of the predictions' decisions.")
    ] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="table (rich) or json (stdout).")] = OutputFormat.table,
    plot: Annotated[Path | None, typer.Option(help="Write ROC curves to this PNG.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC / PPV / NPV CIs (0: none).")] = 1000,
) -> None:
    """Metrics of the predictions against labels: overall and per region.

    AUC, sensitivity, specificity, PPV, NPV with 95% CIs (Wilson for sensitivity and
    specificity; percentile bootstrap, stratified by label, for AUC, PPV and NPV) and Cohen's
    kappa. The operating point is the predictions' own `fracture` decision, or score >= the
    region's threshold of --thresholds (its fallback for regions it does not list).
    """
    if bootstrap < 0:
        raise _fail(f"--bootstrap must be >= 0, got {bootstrap}")
    chosen = None
    if thresholds is not None:
        try:
            chosen = Thresholds.load(thresholds)
        except ThresholdsError as exc:
            raise _fail(str(exc)) from None
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _fail("--plot needs matplotlib: pip install 'fracscan[evaluate]'") from None
    _, matched, _ = _load(predictions, labels)
    try:
        decisions = ev.decisions_for(matched.cases, chosen)
        report = ev.evaluate(matched.cases, decisions, bootstrap=bootstrap, seed=seed)
    except (ev.EvaluationError, ValueError) as exc:
        raise _fail(str(exc)) from None
    op = "predictions" if thresholds is None else str(thresholds)
    report = {
        "overall": report["overall"],
        "regions": report["regions"],
        "operating_point": op,
        "predictions": predictions.name,
        "labels": labels.name,
        "matching": matched.summary(),
        "bootstrap": {"resamples": bootstrap, "seed": seed, "method": "stratified by label, percentile 95% CI (AUC, PPV, NPV)"},
        "intervals": {"sensitivity, specificity": "Wilson score 95%", "auc, ppv, npv": "bootstrap"},
    }
    if plot is not None:
        subtitle = f"operating point: {'the predictions’ decisions' if thresholds is None else thresholds.name}"
        try:
            ev.plot_roc(matched.cases, decisions, plot, title=f"ROC — {predictions.name} vs {labels.name} (n = {len(matched.cases)})", subtitle=subtitle, metrics=report)
        except OSError as exc:
            raise _fail(f"{plot}: cannot write the plot: {exc}") from None
        _info(f"wrote {plot}")
    if output_format is OutputFormat.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    _print_table(report)


def _print_table(report: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 160)
    boot = report["bootstrap"]
    table = Table(
        title=f"{report['predictions']} vs {report['labels']} — operating point: {report['operating_point']}",
        caption=(
            "95% CIs: sensitivity/specificity Wilson; AUC/PPV/NPV "
            + (f"bootstrap ({boot['resamples']} stratified resamples, seed {boot['seed']})" if boot["resamples"] else "not computed (--bootstrap 0)")
        ),
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
            _fmt(m["auc"], m["auc_ci"]),
            _fmt(m["sensitivity"], m["sensitivity_ci"]),
            _fmt(m["specificity"], m["specificity_ci"]),
            _fmt(m["ppv"], m["ppv_ci"]),
            _fmt(m["npv"], m["npv_ci"]),
            _fmt(m["kappa"]),
            style=style,
        )

    row("overall", report["overall"], "bold")
    table.add_section()
    for name, m in report["regions"].items():
        row(name, m)
    out.print(table)
