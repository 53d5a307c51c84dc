"""Classification heads (Olczak et al. 2017): accuracy and Cohen's kappa per head, as the paper reports.

`head_report` measures one head over two label lists (what the Olczak demo reports too); `evaluate_heads`
applies it to the matched cases. The kappa is `statistics.cohen_kappa`, the one the fracture decisions use.

The predictions name each head and its classes (`<head>`, `<head>_probs` in `fracscan predict`'s
JSONL); a labels CSV column named like a head holds that head's labels, one class name a row. A row
whose label is empty is left out of that head; a value that is not one of the head's classes is an
error naming the file, the line and the value, so a typo cannot pass as a wrong answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fracscan.evaluation.records import Case, EvaluationError, LabelRow, PredictionRow
from fracscan.evaluation.statistics import cohen_kappa, confusion_matrix, wilson_interval

HeadClasses = dict[str, tuple[str, ...]]


def head_classes(predictions: Sequence[PredictionRow], path: str | Path) -> HeadClasses:
    """Every head of the predictions with its classes; rows that disagree on a head's classes are an error."""
    found: HeadClasses = {}
    first: dict[str, int] = {}
    for row in predictions:
        for head, classes in row.head_classes.items():
            if head not in found:
                found[head], first[head] = classes, row.line
            elif found[head] != classes:
                raise EvaluationError(
                    f"{path} line {row.line}: head {head!r} has the classes {list(classes)} here "
                    f"but {list(found[head])} on line {first[head]}"
                )
    return found


def _canonical(value: str, classes: tuple[str, ...]) -> str | None:
    if value in classes:
        return value
    folded = [k for k in classes if k.casefold() == value.casefold()]
    return folded[0] if len(folded) == 1 else None


def check_head_labels(
    labels: Sequence[LabelRow], classes: HeadClasses, path: str | Path
) -> tuple[list[LabelRow], HeadClasses]:
    """(labels with their head values spelled as the classes are, the heads the labels have a column for).

    EvaluationError for a value that is not a class of its head (the line, the value, the classes), and
    for box rows of one source that give its head different labels (other columns may differ).
    """
    out, labelled = [], set()
    for row in labels:
        columns = dict(row.columns)
        for head, names in classes.items():
            if head not in columns:
                continue
            value, line = columns[head]
            if head in row.conflicts:
                other, where = row.conflicts[head]
                raise EvaluationError(
                    f"{path} line {where}: {row.source!r} has {head} = {other!r} here but {value!r} on line {line}"
                )
            canonical = _canonical(value, names)
            if canonical is None:
                raise EvaluationError(
                    f"{path} line {line}: {head} = {value!r} is not a class of the {head} head "
                    f"(expected one of {', '.join(names)})"
                )
            columns[head] = (canonical, line)
            labelled.add(head)
        out.append(dataclasses.replace(row, columns=columns) if columns != row.columns else row)
    return out, {h: k for h, k in classes.items() if h in labelled}


def head_pairs(label: LabelRow, prediction: PredictionRow) -> dict[str, tuple[str, str]]:
    """head -> (label, predicted class) for the heads this label row has a value for."""
    return {h: (label.columns[h][0], p) for h, p in prediction.heads.items() if h in label.columns}


def head_report(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """One head over two label lists (the truth, the predicted class): the classes, n, correct, accuracy
    (Wilson 95% CI), Cohen's kappa and the confusion counts (rows: the truth, columns: the prediction, both
    in the classes' order); accuracy and kappa None when undefined. ValueError for a value not a class."""
    confusion = confusion_matrix(truth, predicted, classes)
    n, correct = int(confusion.sum()), int(confusion.trace())
    interval = wilson_interval(correct, n)
    return {
        "classes": list(classes),
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "accuracy_ci": None if interval is None else [float(interval[0]), float(interval[1])],
        "kappa": cohen_kappa(truth, predicted, classes),
        "confusion": confusion.tolist(),
    }


def evaluate_heads(cases: Sequence[Case], classes: HeadClasses) -> dict[str, dict[str, Any]]:
    """`head_report` of every head with labels, over the cases whose label row has a value for it."""
    out: dict[str, dict[str, Any]] = {}
    for head, names in classes.items():
        pairs = [c.heads[head] for c in cases if head in c.heads]
        if pairs:
            out[head] = head_report([t for t, _ in pairs], [p for _, p in pairs], names)
    return out
