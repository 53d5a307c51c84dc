"""Study-level calibration and evaluation: `fracscan calibrate --by-study`, `fracscan evaluate --by-study`.

Inputs are the JSONL of `fracscan predict --by-study` (its `kind: "study"` rows, and its view rows
when the scores are aggregated again under another rule) and a study labels CSV
(`study,fracture[,region]`, `study` = the StudyInstanceUID or the folder the study row names).
Everything after reading is the image-level machinery: studies become `Case`s matched by
`matching.match` (exact key, then unique last path component), calibrated by `calibration.calibrate`
and measured by `metrics.evaluate`, so the rules and the CIs are the same.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.contract import DEFAULT_STUDY_RULE, STUDY_RULES, UNKNOWN_REGION
from fracscan.evaluation.calibration import CalibrationResult, calibrate
from fracscan.evaluation.matching import match
from fracscan.evaluation.records import (
    _FALSE,
    _TRUE,
    Case,
    EvaluationError,
    LabelRow,
    Matched,
    PredictionRow,
    _norm_region,
)
from fracscan.study import aggregate
from fracscan.thresholds import TARGET_SENSITIVITY, StudyThresholds, Thresholds

STUDY_KIND = "study"  # the `kind` of a study row of `fracscan predict --by-study`
STUDY_LABEL_COLUMNS = ("study", "fracture", "region")


@dataclass(frozen=True)
class StudyCases:
    """Labelled studies with an ok study row, and the rule their scores were aggregated with."""

    matched: Matched
    rule: str
    rescored: bool  # the scores were aggregated again from the view rows under `rule`
    # The labels' other columns with a value (e.g. a classification head's): a study has no head answers
    # (the study model answers the fracture question only), so they are not evaluated per study.
    unused_columns: tuple[str, ...] = ()


def _json_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"{path}: predictions file not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise EvaluationError(f"{path}: expected a UTF-8 JSONL predictions file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if isinstance(raw, dict):
            rows.append((number, raw))
    return rows


def read_study_predictions(path: str | Path, rule: str | None = None) -> tuple[list[PredictionRow], str, bool]:
    """(one PredictionRow per study row, source = the study key; the rule of the scores; rescored).

    With `rule`, each ok study's score is aggregated again from its ok view rows under that rule.
    """
    path = Path(path)
    rows = _json_rows(path)
    studies = [(n, r) for n, r in rows if r.get("kind") == STUDY_KIND]
    if not studies:
        raise EvaluationError(f'{path}: no kind: "study" rows (write them with `fracscan predict --by-study`)')
    rules = {r.get("rule") for _, r in studies if r.get("status") == "ok"}
    if rule is None and len(rules) > 1:
        raise EvaluationError(f"{path}: studies scored under several rules {sorted(map(str, rules))}: pass --rule")
    if rule is not None and rule not in STUDY_RULES:
        raise EvaluationError(f"unknown rule {rule!r}, expected one of {', '.join(STUDY_RULES)}")
    used = str(rule or (rules.pop() if rules else DEFAULT_STUDY_RULE))
    views: dict[str, list[float]] = {}
    for _, r in rows:
        if r.get("kind") != STUDY_KIND and r.get("status") == "ok" and isinstance(r.get("score"), (int, float)):
            views.setdefault(str(r.get("study")), []).append(float(r["score"]))
    out: list[PredictionRow] = []
    seen: dict[str, int] = {}
    for number, r in studies:
        key = r.get("study")
        if not isinstance(key, str) or not key:
            raise EvaluationError(f"{path} line {number}: a study row needs a non-empty 'study'")
        if key in seen:
            raise EvaluationError(f"{path} line {number}: study {key!r} already appeared on line {seen[key]}")
        seen[key] = number
        ok = r.get("status") == "ok" and isinstance(r.get("score"), (int, float))
        score = float(r["score"]) if ok else None
        fracture = r.get("fracture") if isinstance(r.get("fracture"), bool) else None
        if ok and rule is not None and rule != r.get("rule"):
            if not views.get(key):
                raise EvaluationError(f"{path} line {number}: no ok view rows of study {key!r} to aggregate again")
            score, fracture = aggregate(views[key], rule), None  # the row's decision was for its own rule
        region = _norm_region(r.get("region")) or UNKNOWN_REGION
        status = "ok" if ok else "error"
        threshold = r.get("threshold") if ok else None
        out.append(
            PredictionRow(key, number, status, score, fracture, threshold, region, np.zeros((0, 5)), r.get("error"))
        )
    return out, used, rule is not None and any(rule != r.get("rule") for _, r in studies)


def read_study_labels(path: str | Path) -> list[LabelRow]:
    """The study labels CSV: `study`, `fracture` (1/0) required, `region` optional; one row a study.

    Other columns' non-empty values are kept (`LabelRow.columns`) so that a caller can say they go unused.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError):
        raise EvaluationError(f"{path}: study labels file not found") from None
    labels: dict[str, LabelRow] = {}
    with handle:
        reader = csv.DictReader(handle)
        columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
        if "study" not in columns or "fracture" not in columns:
            raise EvaluationError(f"{path}: study labels need the columns study,fracture[,region]")
        for row in reader:
            cells = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
            where = f"{path} line {reader.line_num}"
            if not any(cells.values()):
                continue
            study, flag = cells.get("study", ""), cells.get("fracture", "").lower()
            if not study:
                raise EvaluationError(f"{where}: empty 'study'")
            if flag not in _TRUE | _FALSE:
                raise EvaluationError(f"{where}: 'fracture' must be 1 or 0, got {cells.get('fracture')!r}")
            if study in labels:
                raise EvaluationError(f"{where}: study {study!r} already labelled on line {labels[study].line}")
            region = _norm_region(cells.get("region"))
            line = reader.line_num
            extra = {k: (v, line) for k, v in cells.items() if v and k and k not in STUDY_LABEL_COLUMNS}
            labels[study] = LabelRow(study, flag in _TRUE, region, np.zeros((0, 4)), line, extra)
    if not labels:
        raise EvaluationError(f"{path}: no label rows after the header")
    return list(labels.values())


def read_study_cases(predictions: str | Path, labels: str | Path, rule: str | None = None) -> StudyCases:
    """Both files read and matched (studies whose row is an error are excluded and reported)."""
    rows, used, rescored = read_study_predictions(predictions, rule)
    label_rows = read_study_labels(labels)
    matched = match(rows, label_rows)
    if not matched.cases:
        raise EvaluationError(f'no labelled study of {labels} matched an "ok" study row of {predictions}')
    unused = sorted({name for row in label_rows for name in row.columns})
    return StudyCases(matched, used, rescored, tuple(unused))


def study_decisions(cases: list[Case], thresholds: Thresholds | None) -> NDArray[np.bool_]:
    """The operating point: the rows' own decisions, or the thresholds' study points (the image-level
    ones when it has no study section, as the served study model does)."""
    if thresholds is None:
        missing = [c.source for c in cases if c.predicted is None]
        if missing:
            raise EvaluationError(
                f"{len(missing)} studies carry no decision for this rule (e.g. {missing[0]!r}): pass --thresholds"
            )
        return np.array([bool(c.predicted) for c in cases], dtype=bool)
    points = thresholds.study or thresholds
    return np.array([c.score >= points.for_region(c.region)[0].threshold for c in cases], dtype=bool)


def calibrate_studies(
    cases: StudyCases,
    current: Thresholds,
    target_sensitivity: float = TARGET_SENSITIVITY,
    *,
    min_positives: int = 10,
    definite_specificity: float | None = None,
    provenance: dict[str, Any] | None = None,
) -> CalibrationResult:
    """`current` with its study section calibrated on labelled studies for `cases.rule` (same rules as per image)."""
    result = calibrate(
        cases.matched.cases,
        target_sensitivity,
        min_positives=min_positives,
        definite_specificity=definite_specificity,
        provenance={**(provenance or {}), "rule_of_study_scores": cases.rule, "rescored_from_views": cases.rescored},
    )
    fitted = result.thresholds
    study = StudyThresholds(cases.rule, fitted.regions, fitted.fallback, fitted.provenance)
    warnings = tuple(w.replace("radiographs", "studies") for w in result.warnings if "map threshold" not in w)
    return CalibrationResult(replace(current, study=study), warnings)
