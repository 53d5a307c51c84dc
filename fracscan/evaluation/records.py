"""Reading the two inputs of calibrate / evaluate: predictions JSONL and labels CSV.

Both readers validate as they go, so a bad file fails with the file name and line number
rather than with a confusing metric later on.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.contract import UNKNOWN_REGION

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
MODEL_KEYS = ("model", "model_version", "spec", "ensemble")  # model identity keys in prediction rows
# `fracscan predict` writes, per classification head, `<head>` (top class) and `<head>_probs` ({class: p}
# in the spec's order): the key that makes a row's heads and their classes known (cli/_predict_output.py).
HEAD_PROBS_SUFFIX = "_probs"
KNOWN_LABEL_COLUMNS = ("source", "fracture", "region", *BOX_COLUMNS)


class EvaluationError(ValueError):
    """Bad input for calibrate / evaluate; the message names the file (and line)."""


@dataclass(frozen=True)
class PredictionRow:
    source: str
    line: int
    status: str  # "ok" | "error"
    score: float | None
    fracture: bool | None
    threshold: float | None
    region: str
    boxes: NDArray[np.float64]  # [K, 5] x0, y0, x1, y1, confidence
    error: str | None = None
    model: Any = None  # model identity keys found in the row, if any
    heads: dict[str, str] = field(default_factory=dict)  # classification head -> its top class ("ok" rows)
    head_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # head -> its classes, in order


@dataclass(frozen=True)
class LabelRow:
    source: str
    fracture: bool
    region: str | None  # overrides the predicted region when given
    boxes: NDArray[np.float64]  # [B, 4] x0, y0, x1, y1
    line: int
    # The other columns' non-empty values with the line each came from (the source's first row that has
    # one): a classification head's label when the column is named like a head of the predictions (see
    # evaluation.heads).
    columns: dict[str, tuple[str, int]] = field(default_factory=dict)
    # A value of another box row of the source that differs from `columns`' (value, line): an error for a
    # head's column only (evaluation.heads.check_head_labels); a free-text column (a note) may differ.
    conflicts: dict[str, tuple[str, int]] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _norm_region(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "_").replace("-", "_")
    return text or None


def read_predictions(path: str | Path) -> list[PredictionRow]:
    """Read a `fracscan predict --format jsonl` file; errors name the file and line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"{path}: predictions file not found") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path}: is a directory, expected a JSONL predictions file") from None
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not a UTF-8 text (JSONL) file") from None
    rows: list[PredictionRow] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(raw, dict):
            raise EvaluationError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("kind") == "study":  # the study rows of `predict --by-study`: see evaluation.studies
            continue
        source = raw.get("source")
        if not isinstance(source, str) or not source:
            raise EvaluationError(f"{where}: needs a non-empty string 'source'")
        if source in seen:
            raise EvaluationError(f"{where}: source {source!r} already appeared on line {seen[source]}")
        seen[source] = number
        status = raw.get("status", "ok")
        if status not in ("ok", "error"):
            raise EvaluationError(f'{where}: \'status\' must be "ok" or "error", got {status!r}')
        score = _number(raw.get("score"))
        fracture = raw.get("fracture")
        if status == "ok":
            if score is None:
                raise EvaluationError(f"{where}: status \"ok\" needs a finite number 'score', got {raw.get('score')!r}")
            if fracture is not None and not isinstance(fracture, bool):
                raise EvaluationError(f"{where}: 'fracture' must be true/false, got {fracture!r}")
        else:
            fracture = fracture if isinstance(fracture, bool) else None
        boxes = _prediction_boxes(raw.get("boxes"), where) if status == "ok" else np.zeros((0, 5))
        region = _norm_region(raw.get("region")) or UNKNOWN_REGION
        identity = {k: raw[k] for k in MODEL_KEYS if raw.get(k) is not None}
        model = next(iter(identity.values())) if len(identity) == 1 else (identity or None)
        error = raw.get("error")
        heads, head_classes = _prediction_heads(raw, where) if status == "ok" else ({}, {})
        rows.append(
            PredictionRow(
                source,
                number,
                status,
                score,
                fracture,
                _number(raw.get("threshold")),
                region,
                boxes,
                None if error is None else str(error),
                model,
                heads,
                head_classes,
            )
        )
    return rows


def _prediction_heads(raw: dict[str, Any], where: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """A row's classification heads: `<head>` (the top class) beside `<head>_probs` ({class: p})."""
    heads: dict[str, str] = {}
    classes: dict[str, tuple[str, ...]] = {}
    for key, probs in raw.items():
        if not key.endswith(HEAD_PROBS_SUFFIX) or not isinstance(probs, dict):
            continue
        head = key.removesuffix(HEAD_PROBS_SUFFIX)
        label = raw.get(head)
        if not isinstance(label, str) or label not in probs:
            raise EvaluationError(
                f"{where}: {head!r} must be one of the classes of {key!r} {list(probs)}, got {label!r}"
            )
        heads[head], classes[head] = label, tuple(probs)
    return heads, classes


def _prediction_boxes(value: Any, where: str) -> NDArray[np.float64]:
    if value is None:
        return np.zeros((0, 5))
    if not isinstance(value, list):
        raise EvaluationError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1, confidence]")
    rows: list[list[float]] = []
    for box in value:
        numbers = [_number(v) for v in box] if isinstance(box, list) else []
        finite = [v for v in numbers if v is not None]
        if len(finite) != 5 or len(numbers) != 5:
            raise EvaluationError(f"{where}: each box must be [x0, y0, x1, y1, confidence], got {box!r}")
        if finite[4] < 0:  # padding rows of the Triton BOXES tensor (confidence -1)
            continue
        rows.append(finite)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


def read_labels(path: str | Path) -> tuple[list[LabelRow], bool]:
    """Read the labels CSV -> (one LabelRow per source, whether it has box columns).

    Columns: `source`, `fracture` (1/0) required; `region` optional (overrides the predicted
    region); `x0,y0,x1,y1` optional localisation labels, one box per row (repeat the source
    on several rows for several boxes; leave them empty for a radiograph without a box). Other
    columns are kept per source (`LabelRow.columns`): those named like a classification head
    of the predictions are its labels (`evaluation.heads`).
    """
    path = Path(path)
    merged: dict[str, _LabelledSource] = {}
    with _open_labels(path) as handle:
        reader = csv.reader(handle)
        try:
            layout = _LabelLayout.from_header(path, next(reader, None))
            for row in reader:
                if any(cell.strip() for cell in row):
                    _merge_row(merged, layout, row, f"{path} line {reader.line_num}", reader.line_num)
        except csv.Error as exc:
            raise EvaluationError(f"{path} line {reader.line_num}: not a valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise EvaluationError(f"{path}: not a UTF-8 text (CSV) file") from None
    if not merged:
        raise EvaluationError(f"{path}: no label rows after the header")
    return [entry.label_row(source) for source, entry in merged.items()], layout.has_boxes


def _open_labels(path: Path) -> Any:
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvaluationError(f"{path}: labels file not found") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path}: is a directory, expected a labels CSV") from None


@dataclass(frozen=True)
class _LabelLayout:
    """Where each column of a labels CSV is: the known ones by name, every other one kept per source."""

    index: dict[str, int]  # known column -> position
    others: dict[str, int]  # any other named column -> position (head labels, notes)
    has_boxes: bool

    @classmethod
    def from_header(cls, path: Path, header: list[str] | None) -> _LabelLayout:
        if header is None:
            raise EvaluationError(f"{path}: empty labels file, expected a header 'source,fracture'")
        columns = [h.strip().lower() for h in header]
        missing = [c for c in ("source", "fracture") if c not in columns]
        if missing:
            raise EvaluationError(
                f"{path}: labels CSV needs the column(s) {', '.join(missing)} "
                f"(found: {', '.join(repr(c) for c in columns) or 'none'})"
            )
        present_box = [c for c in BOX_COLUMNS if c in columns]
        if present_box and len(present_box) != len(BOX_COLUMNS):
            raise EvaluationError(
                f"{path}: box labels need all of the columns x0,y0,x1,y1 (found {', '.join(present_box)})"
            )
        index = {c: columns.index(c) for c in KNOWN_LABEL_COLUMNS if c in columns}
        others = {c: i for i, c in enumerate(columns) if c and c not in KNOWN_LABEL_COLUMNS}
        return cls(index, others, bool(present_box))

    def cells(self, row: list[str]) -> dict[str, str]:
        return {name: row[i].strip() if i < len(row) else "" for name, i in self.index.items()}

    def extra(self, row: list[str]) -> dict[str, str]:
        return {c: row[i].strip() for c, i in self.others.items() if i < len(row) and row[i].strip()}


@dataclass
class _LabelledSource:
    """What the rows of one source say so far (a source may take several rows: one box each)."""

    fracture: bool
    region: str | None
    line: int  # its first row
    boxes: list[list[float]] = field(default_factory=list)
    columns: dict[str, tuple[str, int]] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, int]] = field(default_factory=dict)

    def label_row(self, source: str) -> LabelRow:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        return LabelRow(source, self.fracture, self.region, boxes, self.line, self.columns, self.conflicts)


def _merge_row(merged: dict[str, _LabelledSource], layout: _LabelLayout, row: list[str], where: str, line: int) -> None:
    """One CSV row into its source's entry; a row that contradicts an earlier one of its source is an error."""
    cells = layout.cells(row)
    source = cells["source"]
    if not source:
        raise EvaluationError(f"{where}: empty 'source'")
    fracture = _fracture_flag(cells["fracture"], where)
    region = _norm_region(cells.get("region"))
    box = _label_box([cells[c] for c in BOX_COLUMNS], fracture, where) if layout.has_boxes else None
    entry = merged.get(source)
    if entry is None:
        entry = merged[source] = _LabelledSource(fracture, region, line)
    else:
        if entry.fracture != fracture:
            raise EvaluationError(
                f"{where}: {source!r} has fracture = {int(fracture)} here but {int(entry.fracture)} on line {entry.line}"
            )
        if region and entry.region and region != entry.region:
            raise EvaluationError(
                f"{where}: {source!r} has region {region!r} here but {entry.region!r} on line {entry.line}"
            )
        entry.region = entry.region or region
    for name, value in layout.extra(row).items():
        before = entry.columns.setdefault(name, (value, line))
        if before[0] != value:
            entry.conflicts.setdefault(name, (value, line))
    if box is not None:
        entry.boxes.append(box)


def _fracture_flag(value: str, where: str) -> bool:
    flag = value.lower()
    if flag not in _TRUE | _FALSE:
        raise EvaluationError(f"{where}: 'fracture' must be 1 or 0, got {value!r}")
    return flag in _TRUE


def _label_box(values: list[str], fracture: bool, where: str) -> list[float] | None:
    """x0,y0,x1,y1 of a row: None when all are empty; four finite numbers with x1 > x0, y1 > y0 otherwise."""
    if not any(values):
        return None
    try:
        box = [float(v) for v in values]
    except ValueError:
        raise EvaluationError(f"{where}: box x0,y0,x1,y1 must be four numbers, got {values}") from None
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise EvaluationError(f"{where}: box needs x1 > x0 and y1 > y0, got {values}")
    if not fracture:
        raise EvaluationError(f"{where}: a fracture box on a row with fracture = 0")
    return box


# --- what matching labels to predictions yields (evaluation.matching), read by every metric ---

SHOW = 5  # how many names a report lists


@dataclass(frozen=True)
class Case:
    """One labelled radiograph with an "ok" prediction."""

    source: str
    region: str  # the label's region when given, else the predicted one
    label: bool
    score: float
    predicted: bool | None  # the `fracture` field of the prediction
    pred_boxes: NDArray[np.float64]  # [K, 5]
    label_boxes: NDArray[np.float64]  # [B, 4]
    heads: dict[str, tuple[str, str]] = field(default_factory=dict)  # head -> (label, predicted class)


@dataclass
class Matched:
    cases: list[Case]
    by_source: int = 0
    by_name: int = 0
    missing: list[str] = field(default_factory=list)  # labelled, no prediction
    unlabelled: list[str] = field(default_factory=list)  # predicted, no label
    errors: list[str] = field(default_factory=list)  # labelled, prediction status "error": excluded
    ambiguous: list[str] = field(default_factory=list)  # label whose file name fits several predictions
    region_overrides: int = 0  # cases whose label region differs from the predicted one

    @property
    def mode(self) -> str:
        if self.by_name and self.by_source:
            return "source and file name"
        return "file name" if self.by_name else "source"

    def summary(self) -> dict[str, Any]:
        return {
            "matched": len(self.cases) + len(self.errors),
            "by": self.mode,
            "by_source": self.by_source,
            "by_file_name": self.by_name,
            "excluded_errors": len(self.errors),
            "labels_without_prediction": len(self.missing),
            "predictions_without_label": len(self.unlabelled),
            "ambiguous_file_names": len(self.ambiguous),
        }

    def report(self) -> list[str]:
        """Human-readable lines about everything that was not matched one-to-one."""

        def names(items: list[str]) -> str:
            shown = ", ".join(items[:SHOW])
            return shown + (f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else "")

        total = len(self.cases) + len(self.errors)
        lines = [
            f"matched {total} labelled radiographs to predictions by {self.mode}"
            + (
                f" ({self.by_source} by exact source, {self.by_name} by file name)"
                if self.by_name and self.by_source
                else ""
            )
        ]
        if self.errors:
            lines.append(f'excluded {len(self.errors)} with prediction status "error": {names(self.errors)}')
        if self.missing:
            lines.append(f"{len(self.missing)} labelled sources have no prediction: {names(self.missing)}")
        if self.ambiguous:
            lines.append(
                f"{len(self.ambiguous)} labelled sources match several predictions by file name, not used: {names(self.ambiguous)}"
            )
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} predictions have no label: {names(self.unlabelled)}")
        if self.region_overrides:
            lines.append(f"{self.region_overrides} radiographs use the label's region instead of the predicted one")
        return lines
