"""`fracscan calibrate`: per-region operating points from labelled predictions.

Reads the JSONL written by `fracscan predict --format jsonl` and a labels CSV
(`source,fracture[,region][,x0,y0,x1,y1]`); the thresholds come from `fracscan.evaluation.calibrate`.
Writes thresholds.json and, with --repository, installs it there (with the repository's provenance,
through `fracscan.export.repository.install_thresholds`). Reports and warnings go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fracscan import evaluation as ev
from fracscan.cli.console import err, fail, note, warn
from fracscan.cli.evaluate import DASH, format_value, read_labelled
from fracscan.contract import SPEC_FILE, STUDY_RULES, THRESHOLDS_FILE
from fracscan.spec import EnsembleSpec, SpecError, load_spec
from fracscan.thresholds import TARGET_SENSITIVITY, Thresholds, ThresholdsError


def calibrate(
    predictions: Annotated[
        Path, typer.Argument(help="Predictions JSONL from `fracscan predict --format jsonl`.", show_default=False)
    ],
    labels: Annotated[
        Path, typer.Argument(help="Labels CSV: source,fracture[,region][,x0,y0,x1,y1].", show_default=False)
    ],
    sensitivity: Annotated[
        float, typer.Option(help=f"Target sensitivity per region (the paper: {TARGET_SENSITIVITY}).")
    ] = TARGET_SENSITIVITY,
    output: Annotated[Path, typer.Option("--output", "-o", help="thresholds.json to write.")] = Path(THRESHOLDS_FILE),
    min_positives: Annotated[
        int, typer.Option(help="Regions with fewer positives use the pooled fallback threshold.")
    ] = 10,
    definite_specificity: Annotated[
        float | None,
        typer.Option(help="Also record a high-specificity 'definite_threshold' per region at this specificity."),
    ] = None,
    repository: Annotated[
        Path | None,
        typer.Option(help="Model repository: also install the thresholds there (then restart the server)."),
    ] = None,
    by_study: Annotated[
        bool,
        typer.Option(
            help="Calibrate the study thresholds on the study rows of `predict --by-study` and labels "
            "study,fracture[,region]; added to the image-level thresholds of --repository (else of --output)."
        ),
    ] = False,
    rule: Annotated[
        str | None,
        typer.Option(help=f"--by-study: calibrate for this rule ({', '.join(STUDY_RULES)}); default: the rows' rule."),
    ] = None,
) -> None:
    """Calibrate per-region thresholds to a target sensitivity on a labelled tuning set.

    Per region, threshold = the ceil(target x P)-th largest score among the region's P positives
    (fracture iff score >= threshold), so at least the target fraction of them is detected.
    With box labels (x0,y0,x1,y1), map-binarisation thresholds are tuned the same way on the
    labelled boxes (see `fracscan.evaluation.calibrate`).
    """
    if not 0.0 < sensitivity <= 1.0:
        fail(f"--sensitivity must lie in (0, 1], got {sensitivity}")
    if definite_specificity is not None and not 0.0 < definite_specificity <= 1.0:
        fail(f"--definite-specificity must lie in (0, 1], got {definite_specificity}")
    if min_positives < 1:
        fail(f"--min-positives must be at least 1, got {min_positives}")
    if by_study:
        from fracscan.cli._evaluate_study import calibrate_by_study

        if repository is not None:
            _repository(repository)  # exit 2 unless it is a fracscan repository
        chosen = calibrate_by_study(
            predictions,
            labels,
            rule=rule,
            sensitivity=sensitivity,
            min_positives=min_positives,
            definite_specificity=definite_specificity,
            output=output,
            repository=repository,
        )
        try:
            chosen.save(output)
        except OSError as exc:
            fail(f"{output}: cannot write thresholds: {exc}")
        note(f"wrote {output}")
        if repository is not None:
            _install(repository, chosen)
        return
    spec, current = _repository(repository) if repository is not None else (None, None)
    labelled = read_labelled(predictions, labels)
    provenance: dict[str, Any] = {
        **ev.file_provenance(predictions),
        "labels": labels.name,
        "matched_by": labelled.matched.mode,
    }
    model = ev.model_identity(labelled.predictions)
    if isinstance(model, list):
        warn(f"the predictions come from {len(model)} different models: {model}")
    if model is not None:
        provenance["model"] = model
    try:
        result = ev.calibrate(
            labelled.matched.cases,
            sensitivity,
            min_positives=min_positives,
            definite_specificity=definite_specificity,
            box_labels=labelled.box_labels,
            current=current,
            provenance=provenance,
        )
    except (ev.EvaluationError, ValueError) as exc:
        fail(str(exc))
    for message in result.warnings:
        warn(message)
    if spec is not None:
        unknown = sorted(set(result.thresholds.regions) - set(spec.regions))
        if unknown:
            warn(f"calibrated regions the repository's spec does not list (never applied): {', '.join(unknown)}")
    fits = ev.fit_by_region(labelled.matched.cases, result.thresholds)
    err.print(_table(fits, sensitivity, predictions, definite_specificity), soft_wrap=False)  # keep the title centred
    try:
        result.thresholds.save(output)
    except OSError as exc:
        fail(f"{output}: cannot write thresholds: {exc}")
    note(f"wrote {output}")
    if repository is not None:
        _install(repository, result.thresholds)


def _repository(repository: Path) -> tuple[EnsembleSpec, Thresholds | None]:
    """The repository's spec and current thresholds (where the map thresholds start from); exit 2 if it is none."""
    if not repository.is_dir():
        fail(f"{repository}: --repository must be an existing model repository directory")
    if not (repository / SPEC_FILE).is_file():
        fail(f"{repository} has no {SPEC_FILE}: --repository must be a fracscan model repository")
    try:
        spec = load_spec(repository / SPEC_FILE)
    except SpecError as exc:
        fail(str(exc))
    current = None
    if (repository / THRESHOLDS_FILE).is_file():
        try:
            current = Thresholds.load(repository / THRESHOLDS_FILE)
        except ThresholdsError as exc:
            warn(f"current thresholds not readable, map thresholds start from 0.5: {exc}")
    return spec, current


def _install(repository: Path, thresholds: Thresholds) -> None:
    from google.protobuf.text_format import ParseError

    from fracscan.export.repository import install_thresholds

    try:
        install_thresholds(repository, thresholds)
    except (OSError, ValueError, ParseError) as exc:
        fail(f"{repository}: cannot install the thresholds: {exc}")
    note(f"wrote {repository / THRESHOLDS_FILE}")
    note(
        f"The served `threshold` model reads {repository / THRESHOLDS_FILE} when it loads: restart the server "
        "(`fracscan serve`, or the Triton container) to apply the new thresholds. No engine or member needs rebuilding."
    )


def _table(
    fits: dict[str, ev.RegionFit], sensitivity: float, predictions: Path, definite_specificity: float | None
) -> Table:
    table = Table(title=f"Calibrated to sensitivity {sensitivity:g} on {predictions.name}", title_style="bold")
    for col in ("region", "n", "pos", "threshold", "sens", "spec", "map thr"):
        table.add_column(col, justify="left" if col == "region" else "right")
    if definite_specificity is not None:
        table.add_column("definite", justify="right")
    for name, fit in fits.items():
        cells = [
            name + (" (fallback)" if fit.fallback else ""),
            str(fit.n),
            str(fit.positives),
            f"{fit.threshold:.6g}",
            format_value(fit.sensitivity),
            format_value(fit.specificity),
            f"{fit.map_threshold:.4g}",
        ]
        if definite_specificity is not None:
            cells.append(DASH if fit.definite_threshold is None else f"{fit.definite_threshold:.6g}")
        table.add_row(*cells, style="dim" if fit.fallback else None)
    return table
