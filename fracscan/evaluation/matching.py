"""Pairing labels with predictions: exact source first, then unique file names."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracscan.contract import UNKNOWN_REGION
from fracscan.evaluation.heads import check_head_labels, head_classes, head_pairs
from fracscan.evaluation.records import (
    Case,
    EvaluationError,
    LabelRow,
    Matched,
    PredictionRow,
    read_labels,
    read_predictions,
)


def file_name(source: str) -> str:
    """The last path component of a source (either slash), e.g. 'a/b\\c.dcm' -> 'c.dcm'."""
    return re.split(r"[/\\]", source.rstrip("/\\"))[-1]


def match(predictions: list[PredictionRow], labels: list[LabelRow]) -> Matched:
    """Pair labels with predictions: exact `source` first, then unique file names.

    The file-name pass handles predictions holding paths ('scans/a/img1.dcm') and labels
    holding bare names ('img1.dcm') or the reverse; a file name that several unmatched
    predictions (or labels) share is ambiguous and not used.
    """
    by_source = {p.source: p for p in predictions}
    pairs: list[tuple[LabelRow, PredictionRow]] = []
    used: set[str] = set()
    rest: list[LabelRow] = []
    for label in labels:
        pred = by_source.get(label.source)
        if pred is not None:
            pairs.append((label, pred))
            used.add(pred.source)
        else:
            rest.append(label)
    exact = len(pairs)
    free: dict[str, list[PredictionRow]] = {}
    for p in predictions:
        if p.source not in used:
            free.setdefault(file_name(p.source), []).append(p)
    wanted: dict[str, int] = {}
    for label in rest:
        wanted[file_name(label.source)] = wanted.get(file_name(label.source), 0) + 1
    missing, ambiguous = [], []
    for label in rest:
        name = file_name(label.source)
        candidates = free.get(name, [])
        if len(candidates) == 1 and wanted[name] == 1:
            pairs.append((label, candidates[0]))
            used.add(candidates[0].source)
        elif candidates:
            ambiguous.append(label.source)
        else:
            missing.append(label.source)
    result = Matched([], by_source=exact, by_name=len(pairs) - exact, missing=missing, ambiguous=ambiguous)
    result.unlabelled = [p.source for p in predictions if p.source not in used]
    for label, pred in pairs:
        if pred.status != "ok" or pred.score is None:  # read_predictions gives every "ok" row a score
            result.errors.append(pred.source)
            continue
        region = label.region or pred.region or UNKNOWN_REGION
        if label.region and label.region != pred.region:
            result.region_overrides += 1
        result.cases.append(
            Case(
                pred.source,
                region,
                label.fracture,
                pred.score,
                pred.fracture,
                pred.boxes,
                label.boxes,
                head_pairs(label, pred),
            )
        )
    return result


def model_identity(predictions: list[PredictionRow]) -> Any:
    """The model / spec identity recorded in the predictions: one value, a list, or None."""
    seen: dict[str, Any] = {}
    for p in predictions:
        if p.model is not None:
            seen.setdefault(json.dumps(p.model, sort_keys=True, default=str), p.model)
    values = list(seen.values())
    return None if not values else values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Labelled:
    """Both inputs read and matched: what `fracscan calibrate` and `fracscan evaluate` start from."""

    predictions: list[PredictionRow]
    matched: Matched
    box_labels: bool  # the labels CSV has the box columns x0,y0,x1,y1
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # heads the labels have a column for


def read_labelled(predictions: str | Path, labels: str | Path) -> Labelled:
    """Read both files and match them; EvaluationError when either is bad or nothing matches.

    Label columns named like a classification head of the predictions are checked against its classes.
    """
    rows = read_predictions(predictions)
    label_rows, box_labels = read_labels(labels)
    if not rows:
        raise EvaluationError(f"{predictions}: no predictions in the file")
    label_rows, heads = check_head_labels(label_rows, head_classes(rows, predictions), labels)
    matched = match(rows, label_rows)
    if not matched.cases:

        def sample(sources: list[str]) -> str:
            return ", ".join(repr(s) for s in sources[:3])

        why = (
            f'all {len(matched.errors)} matched predictions have status "error"'
            if matched.errors
            else f"predictions hold e.g. {sample([r.source for r in rows])}; "
            f"labels hold e.g. {sample([r.source for r in label_rows])}"
        )
        raise EvaluationError(f'no labelled radiograph of {labels} matched an "ok" prediction of {predictions} ({why})')
    return Labelled(rows, matched, box_labels, heads)
