"""The --by-study halves of `fracscan calibrate` and `fracscan evaluate`: study rows and study labels.

The work is `fracscan.evaluation.studies`; this reads the two files with the CLI's messages and
writes the study section into a thresholds file that already holds the image-level points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fracscan import evaluation as ev
from fracscan.cli.console import fail, note, warn
from fracscan.contract import THRESHOLDS_FILE
from fracscan.evaluation import studies
from fracscan.thresholds import Thresholds, ThresholdsError


def study_cases(predictions: Path, labels: Path, rule: str | None) -> studies.StudyCases:
    """Read and match the study rows and labels, print the matching report; exit 2 on bad input."""
    try:
        cases = studies.read_study_cases(predictions, labels, rule)
    except ev.EvaluationError as exc:
        fail(str(exc))
    summary, *problems = cases.matched.report()
    note(summary.replace("radiographs", "studies") + f" (study scores under rule {cases.rule})")
    for line in problems:
        warn(line.replace("radiographs", "studies"))
    return cases


def study_matched(predictions: Path, labels: Path, rule: str | None) -> ev.Matched:
    return study_cases(predictions, labels, rule).matched


def calibrate_by_study(
    predictions: Path,
    labels: Path,
    *,
    rule: str | None,
    sensitivity: float,
    min_positives: int,
    definite_specificity: float | None,
    output: Path,
    repository: Path | None,
) -> Thresholds:
    """The study section calibrated and added to the image-level thresholds (the repository's, else --output's)."""
    base = repository / THRESHOLDS_FILE if repository is not None else output
    try:
        current = Thresholds.load(base)
    except ThresholdsError as exc:
        fail(
            f"--by-study adds a study section to image-level thresholds (--repository, or an existing --output): {exc}"
        )
    cases = study_cases(predictions, labels, rule)
    provenance: dict[str, Any] = {**ev.file_provenance(predictions), "labels": labels.name}
    try:
        result = studies.calibrate_studies(
            cases,
            current,
            sensitivity,
            min_positives=min_positives,
            definite_specificity=definite_specificity,
            provenance=provenance,
        )
    except (ev.EvaluationError, ValueError) as exc:
        fail(str(exc))
    for message in result.warnings:
        warn(message)
    study = result.thresholds.study
    assert study is not None
    for name, point in [*sorted(study.regions.items()), ("fallback", study.fallback)]:
        definite = "" if point.definite_threshold is None else f", definite {point.definite_threshold:.6g}"
        note(f"study threshold ({study.rule}) {name}: {point.threshold:.6g}{definite}")
    return result.thresholds
