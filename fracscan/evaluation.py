"""Calibration and evaluation (Jones et al. 2020, Methods): numpy/scipy only, no CLI.

Inputs are the predictions written by `fracscan predict --format jsonl` and a labels CSV
(`source,fracture[,region][,x0,y0,x1,y1]`). `fracscan calibrate` and `fracscan evaluate`
(`fracscan.cli.evaluate`) are thin wrappers over this module.

Calibration (the paper: "anatomical-region-specific thresholds were optimized on the tuning
set such that the ensemble system yielded a 92.5% sensitivity on each anatomical region"):

* `sensitivity_threshold`: the highest score t with at least the target fraction of the
  positives scoring >= t, i.e. the ceil(target * P)-th largest positive score.
* regions with fewer than `min_positives` positives get no entry of their own: they use the
  fallback, computed by the same rule over all regions pooled.
* `specificity_threshold` (optional "definite" operating point): the lowest threshold with at
  least the target fraction of the negatives scoring strictly below it.
* `map_threshold_from_hits`: map-binarisation thresholds from box labels (see `calibrate`).

Evaluation (the paper: AUC, sensitivity, specificity, PPV, NPV; Wilson CIs for sensitivity and
specificity, bootstrap with m = 1000 for the others): `binary_metrics`, `evaluate`. The
bootstrap resamples radiographs stratified by label (P positives and N negatives drawn with
replacement from each class), seeded, percentile 95% intervals. `plot_roc` imports matplotlib
only when called.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fracscan.postprocess import OperatingPoint, Thresholds
from fracscan.spec import UNKNOWN_REGION

IOU_HIT = 0.3  # a labelled box is "hit" by a predicted box with IoU >= this
DEFAULT_MAP_THRESHOLD = OperatingPoint(0.5).map_threshold
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
MODEL_KEYS = ("model", "model_version", "spec", "ensemble")  # model identity keys in prediction rows
SHOW = 5  # how many names a report lists


class EvaluationError(ValueError):
    """Bad input for calibrate / evaluate; the message names the file (and line)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PredictionRow:
    source: str
    line: int
    status: str  # "ok" | "error"
    score: float | None
    fracture: bool | None
    threshold: float | None
    region: str
    boxes: np.ndarray  # [K, 5] x0, y0, x1, y1, confidence
    error: str | None = None
    model: Any = None  # model identity keys found in the row, if any


@dataclass(frozen=True)
class LabelRow:
    source: str
    fracture: bool
    region: str | None  # overrides the predicted region when given
    boxes: np.ndarray  # [B, 4] x0, y0, x1, y1
    line: int


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
        source = raw.get("source")
        if not isinstance(source, str) or not source:
            raise EvaluationError(f"{where}: needs a non-empty string 'source'")
        if source in seen:
            raise EvaluationError(f"{where}: source {source!r} already appeared on line {seen[source]}")
        seen[source] = number
        status = raw.get("status", "ok")
        if status not in ("ok", "error"):
            raise EvaluationError(f"{where}: 'status' must be \"ok\" or \"error\", got {status!r}")
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
        model = {k: raw[k] for k in MODEL_KEYS if raw.get(k) is not None}
        model = next(iter(model.values())) if len(model) == 1 else (model or None)
        error = raw.get("error")
        rows.append(
            PredictionRow(
                source, number, status, score, fracture, _number(raw.get("threshold")), region, boxes,
                None if error is None else str(error), model,
            )
        )
    return rows


def _prediction_boxes(value: Any, where: str) -> np.ndarray:
    if value is None:
        return np.zeros((0, 5))
    if not isinstance(value, list):
        raise EvaluationError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1, confidence]")
    rows = []
    for box in value:
        numbers = [_number(v) for v in box] if isinstance(box, list) else []
        if len(numbers) != 5 or any(v is None for v in numbers):
            raise EvaluationError(f"{where}: each box must be [x0, y0, x1, y1, confidence], got {box!r}")
        if numbers[4] < 0:  # padding rows of the Triton BOXES tensor (confidence -1)
            continue
        rows.append(numbers)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


def read_labels(path: str | Path) -> tuple[list[LabelRow], bool]:
    """Read the labels CSV -> (one LabelRow per source, whether it has box columns).

    Columns: `source`, `fracture` (1/0) required; `region` optional (overrides the predicted
    region); `x0,y0,x1,y1` optional localisation labels, one box per row (repeat the source
    on several rows for several boxes; leave them empty for a radiograph without a box).
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvaluationError(f"{path}: labels file not found") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path}: is a directory, expected a labels CSV") from None
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
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
            if present_box and len(present_box) != 4:
                raise EvaluationError(f"{path}: box labels need all of the columns x0,y0,x1,y1 (found {', '.join(present_box)})")
            has_boxes = bool(present_box)
            index = {c: columns.index(c) for c in ("source", "fracture", "region", *BOX_COLUMNS) if c in columns}
            merged: dict[str, dict[str, Any]] = {}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                cell = lambda name: row[index[name]].strip() if name in index and index[name] < len(row) else ""  # noqa: E731
                where = f"{path} line {line}"
                source = cell("source")
                if not source:
                    raise EvaluationError(f"{where}: empty 'source'")
                flag = cell("fracture").lower()
                if flag not in _TRUE | _FALSE:
                    raise EvaluationError(f"{where}: 'fracture' must be 1 or 0, got {cell('fracture')!r}")
                fracture = flag in _TRUE
                region = _norm_region(cell("region"))
                box = None
                if has_boxes:
                    values = [cell(c) for c in BOX_COLUMNS]
                    if any(values):
                        try:
                            box = [float(v) for v in values]
                        except ValueError:
                            raise EvaluationError(f"{where}: box x0,y0,x1,y1 must be four numbers, got {values}") from None
                        if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                            raise EvaluationError(f"{where}: box needs x1 > x0 and y1 > y0, got {values}")
                        if not fracture:
                            raise EvaluationError(f"{where}: a fracture box on a row with fracture = 0")
                entry = merged.get(source)
                if entry is None:
                    merged[source] = {"fracture": fracture, "region": region, "boxes": [], "line": line}
                    entry = merged[source]
                else:
                    if entry["fracture"] != fracture:
                        raise EvaluationError(f"{where}: {source!r} has fracture = {int(fracture)} here but {int(entry['fracture'])} on line {entry['line']}")
                    if region and entry["region"] and region != entry["region"]:
                        raise EvaluationError(f"{where}: {source!r} has region {region!r} here but {entry['region']!r} on line {entry['line']}")
                    entry["region"] = entry["region"] or region
                if box is not None:
                    entry["boxes"].append(box)
        except csv.Error as exc:
            raise EvaluationError(f"{path} line {reader.line_num}: not a valid CSV ({exc})") from None
        except UnicodeDecodeError:
            raise EvaluationError(f"{path}: not a UTF-8 text (CSV) file") from None
    if not merged:
        raise EvaluationError(f"{path}: no label rows after the header")
    labels = [
        LabelRow(s, e["fracture"], e["region"], np.asarray(e["boxes"], dtype=np.float64).reshape(-1, 4), e["line"])
        for s, e in merged.items()
    ]
    return labels, has_boxes


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Case:
    """One labelled radiograph with an "ok" prediction."""

    source: str
    region: str  # the label's region when given, else the predicted one
    label: bool
    score: float
    predicted: bool | None  # the `fracture` field of the prediction
    pred_boxes: np.ndarray  # [K, 5]
    label_boxes: np.ndarray  # [B, 4]


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
        lines = [f"matched {total} labelled radiographs to predictions by {self.mode}"
                 + (f" ({self.by_source} by exact source, {self.by_name} by file name)" if self.by_name and self.by_source else "")]
        if self.errors:
            lines.append(f"excluded {len(self.errors)} with prediction status \"error\": {names(self.errors)}")
        if self.missing:
            lines.append(f"{len(self.missing)} labelled sources have no prediction: {names(self.missing)}")
        if self.ambiguous:
            lines.append(f"{len(self.ambiguous)} labelled sources match several predictions by file name, not used: {names(self.ambiguous)}")
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} predictions have no label: {names(self.unlabelled)}")
        if self.region_overrides:
            lines.append(f"{self.region_overrides} radiographs use the label's region instead of the predicted one")
        return lines


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
        if pred.status != "ok":
            result.errors.append(pred.source)
            continue
        region = label.region or pred.region or UNKNOWN_REGION
        if label.region and label.region != pred.region:
            result.region_overrides += 1
        result.cases.append(Case(pred.source, region, label.fracture, float(pred.score), pred.fracture, pred.boxes, label.boxes))
    return result


def model_identity(predictions: list[PredictionRow]) -> Any:
    """The model / spec identity recorded in the predictions: one value, a list, or None."""
    seen: dict[str, Any] = {}
    for p in predictions:
        if p.model is not None:
            seen.setdefault(json.dumps(p.model, sort_keys=True, default=str), p.model)
    values = list(seen.values())
    return None if not values else values[0] if len(values) == 1 else values


# --------------------------------------------------------------------------- threshold rules


def _check_fraction(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) <= 1.0):
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")


def required_count(target: float, n: int) -> int:
    """The smallest k with k / n >= target, computed exactly on the decimal target (0.925 = 37/40)."""
    return max(1, math.ceil(Fraction(repr(float(target))) * n))


def sensitivity_threshold(positive_scores: Any, target: float) -> float | None:
    """Highest t such that at least `target` of the positives have score >= t.

    Exactly: sort the P positive scores descending; t is the ceil(target * P)-th of them.
    Ties are harmless (>= counts them all). None when there are no positives.
    """
    _check_fraction(target, "target sensitivity")
    scores = np.sort(np.asarray(positive_scores, dtype=np.float64).reshape(-1))[::-1]
    if scores.size == 0:
        return None
    return float(scores[required_count(target, scores.size) - 1])


def specificity_threshold(negative_scores: Any, target: float) -> float | None:
    """Lowest t such that at least `target` of the negatives have score < t (i.e. called negative).

    Exactly: sort the N negative scores ascending, s = the ceil(target * N)-th of them, and
    t = the next float64 above s (every negative <= s is then below t; no smaller t works).
    Capped at 1.0 (then the target may not be met: only when negatives score 1.0).
    """
    _check_fraction(target, "target specificity")
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64).reshape(-1))
    if scores.size == 0:
        return None
    s = scores[required_count(target, scores.size) - 1]
    return float(min(np.nextafter(s, np.inf), 1.0))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one [4] box with [K, >=4] boxes (continuous coordinates)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros(0)
    boxes = boxes.reshape(-1, boxes.shape[-1])
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_hit_confidences(case: Case, min_iou: float = IOU_HIT) -> np.ndarray:
    """Per labelled box: the highest confidence of a predicted box with IoU >= min_iou, NaN if none."""
    out = np.full(len(case.label_boxes), np.nan)
    for i, box in enumerate(case.label_boxes):
        overlaps = iou(box, case.pred_boxes)
        hits = case.pred_boxes[overlaps >= min_iou, 4] if overlaps.size else np.zeros(0)
        if hits.size:
            out[i] = hits.max()
    return out


def map_threshold_from_hits(hit_confidences: Any, target: float) -> float | None:
    """Largest m such that at least `target` of the labelled boxes are hit at confidence >= m.

    `hit_confidences` holds one value per labelled box (NaN = not hit at all). The same rule
    as `sensitivity_threshold` over the boxes; None when the target is out of reach (fewer
    than ceil(target * B) boxes are hit at any confidence) or there are no boxes.
    """
    _check_fraction(target, "target sensitivity")
    hits = np.asarray(hit_confidences, dtype=np.float64).reshape(-1)
    if hits.size == 0:
        return None
    k = required_count(target, hits.size)
    found = np.sort(hits[~np.isnan(hits)])[::-1]
    return float(found[k - 1]) if found.size >= k else None


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """The calibrated thresholds.json content plus what the user should be told."""

    regions: dict[str, dict[str, float]]
    fallback: dict[str, float]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    achieved: dict[str, dict[str, Any]] = field(default_factory=dict)  # per region, on the calibration set

    def to_json(self) -> dict[str, Any]:
        return {"regions": dict(sorted(self.regions.items())), "fallback": self.fallback, "provenance": self.provenance}

    def thresholds(self) -> Thresholds:
        """As the served `threshold` model reads it (extra keys such as definite_threshold are ignored)."""
        return Thresholds.from_json(json.loads(json.dumps(self.to_json())), "<calibration>")

    def save(self, path: str | Path) -> None:
        """Write thresholds.json; `Thresholds.load` reads it (the extra keys are ignored there)."""
        self.thresholds()  # validate before writing
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _group(cases: list[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.region, []).append(c)
    return dict(sorted(groups.items()))


def _rates(cases: list[Case], threshold: float) -> tuple[float | None, float | None]:
    y = np.array([c.label for c in cases], dtype=bool)
    s = np.array([c.score for c in cases], dtype=np.float64)
    d = s >= threshold
    sens = float(d[y].mean()) if y.any() else None
    spec = float((~d[~y]).mean()) if (~y).any() else None
    return sens, spec


def calibrate(
    cases: list[Case],
    target_sensitivity: float = 0.925,
    *,
    min_positives: int = 10,
    definite_specificity: float | None = None,
    box_labels: bool = False,
    current: Thresholds | None = None,
    provenance: dict[str, Any] | None = None,
) -> Calibration:
    """Per-region operating points from labelled predictions.

    Score threshold (per region, fallback = all regions pooled, incl. unknown ones):
    `sensitivity_threshold` — the ceil(target * P)-th largest positive score. A region with
    fewer than `min_positives` positives gets no entry: the served model applies the fallback
    to it (and says so). The "unknown" region never gets an entry of its own.

    Definite threshold (only with `definite_specificity`): `specificity_threshold` on the
    region's negatives (pooled negatives when it has fewer than `min_positives` of them), raised
    to the region's score threshold if below it, so "definite" is never less strict. Stored as
    an extra `definite_threshold` key; `Thresholds.load` ignores it.

    Map-binarisation threshold (only with `box_labels`): the predicted boxes carry only their
    confidence (the peak of the averaged map inside the box), so the rule works on that:
    for each labelled fracture box on a radiograph the predictions called positive, its hit
    confidence is the highest confidence of a predicted box with IoU >= 0.3 (none: a miss);
    map_threshold = `map_threshold_from_hits` — the largest m such that at least the target
    fraction of those boxes are hit by a box of confidence >= m. Radiographs predicted
    negative carry no boxes and are left out (counted in the provenance). Because the boxes
    were extracted at the map threshold in use when predicting, m is never below it: the rule
    can only raise that threshold, and it assumes a hit box stays a hit when it shrinks
    under the higher threshold (an optimistic approximation: re-run predict and check,
    e.g. with `recheck_map_thresholds`).
    Regions with fewer than `min_positives` such boxes, or whose target is out of reach,
    keep their current map_threshold (from `current`, else 0.5) and a warning says why.
    """
    _check_fraction(target_sensitivity, "target sensitivity")
    if definite_specificity is not None:
        _check_fraction(definite_specificity, "target specificity")
    if min_positives < 1:
        raise ValueError(f"min_positives must be at least 1, got {min_positives}")
    if not cases:
        raise EvaluationError("no labelled radiographs with an \"ok\" prediction to calibrate on")
    warnings: list[str] = []
    groups = _group(cases)
    positives = [c.score for c in cases if c.label]
    negatives = [c.score for c in cases if not c.label]
    if not positives:
        raise EvaluationError("no positive (fracture = 1) labels among the matched radiographs: cannot calibrate")
    pooled = sensitivity_threshold(positives, target_sensitivity)
    if len(positives) < min_positives:
        warnings.append(f"the fallback threshold rests on only {len(positives)} positives (fewer than --min-positives {min_positives})")

    def current_map(region: str | None) -> float:
        if current is None:
            return DEFAULT_MAP_THRESHOLD
        return (current.fallback if region is None else current.for_region(region)[0]).map_threshold

    fallback: dict[str, float] = {"threshold": pooled, "map_threshold": current_map(None)}
    regions: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    too_few: list[str] = []
    for name, group in groups.items():
        pos = [c.score for c in group if c.label]
        counts[name] = {"n": len(group), "positives": len(pos)}
        if name == UNKNOWN_REGION:
            continue
        if len(pos) < min_positives:
            too_few.append(f"{name} ({len(pos)})")
            continue
        regions[name] = {"threshold": sensitivity_threshold(pos, target_sensitivity), "map_threshold": current_map(name)}
    if too_few:
        warnings.append(
            f"{len(too_few)} region(s) with fewer than {min_positives} positives use the fallback threshold "
            f"{pooled:.6g}: {', '.join(too_few)}"
        )
    if UNKNOWN_REGION in groups:
        warnings.append(f"{len(groups[UNKNOWN_REGION])} radiographs of unknown region count only towards the fallback")

    prov: dict[str, Any] = {
        "target_sensitivity": float(target_sensitivity),
        "rule": "threshold = the ceil(target * P)-th largest positive score of the region (fracture iff score >= threshold)",
        "min_positives": int(min_positives),
        "counts": counts,
        "fallback_regions": sorted(n for n in groups if n not in regions),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    if definite_specificity is not None:
        prov["definite_specificity"] = float(definite_specificity)
        if negatives:
            pooled_def = max(specificity_threshold(negatives, definite_specificity), pooled)
            fallback["definite_threshold"] = pooled_def
            for name, point in regions.items():
                neg = [c.score for c in groups[name] if not c.label]
                own = specificity_threshold(neg, definite_specificity) if len(neg) >= min_positives else pooled_def
                point["definite_threshold"] = max(own, point["threshold"])
            sparse = [n for n in regions if sum(not c.label for c in groups[n]) < min_positives]
            if sparse:
                warnings.append(f"definite threshold from the pooled negatives (fewer than {min_positives} negatives): {', '.join(sparse)}")
        else:
            warnings.append("no negative labels: no definite (high-specificity) threshold computed")

    if box_labels:
        prov["map_threshold"] = _calibrate_maps(groups, regions, fallback, target_sensitivity, min_positives, current_map, warnings)
    else:
        prov["map_threshold"] = {"calibrated": False, "why": "no box labels (x0,y0,x1,y1): current map thresholds kept"}

    for key, value in (provenance or {}).items():
        if value is not None:
            prov[key] = value

    achieved: dict[str, dict[str, Any]] = {}
    for name, group in groups.items():
        point = regions.get(name, fallback)
        sens, spec = _rates(group, point["threshold"])
        achieved[name] = {
            **counts[name], "threshold": point["threshold"], "fallback": name not in regions,
            "sensitivity": sens, "specificity": spec, "map_threshold": point["map_threshold"],
            "definite_threshold": point.get("definite_threshold"),
        }
    if any(not (0.0 <= p["threshold"] <= 1.0) for p in [*regions.values(), fallback]):
        raise EvaluationError("scores outside [0, 1]: thresholds must be probabilities")
    return Calibration(regions, fallback, prov, warnings, achieved)


def _calibrate_maps(groups, regions, fallback, target, min_boxes, current_map, warnings) -> dict[str, Any]:
    info: dict[str, Any] = {
        "calibrated": True,
        "rule": (
            f"largest m such that >= {target:g} of the labelled boxes on radiographs predicted positive are hit "
            f"by a predicted box with IoU >= {IOU_HIT} and confidence >= m"
        ),
        "boxes": {},
    }
    all_hits: list[np.ndarray] = []
    skipped = 0
    for name, group in groups.items():
        hits_arr = _box_hits(group)
        skipped += sum(len(c.label_boxes) for c in group if c.label and not c.predicted)
        all_hits.append(hits_arr)
        info["boxes"][name] = {"boxes": int(hits_arr.size), "hit": int(np.sum(~np.isnan(hits_arr)))}
        if name not in regions:
            continue
        keep = regions[name]["map_threshold"]
        if hits_arr.size < min_boxes:
            warnings.append(f"map threshold of {name} kept at {keep:g}: only {hits_arr.size} labelled boxes on radiographs predicted positive (fewer than {min_boxes})")
            continue
        m = map_threshold_from_hits(hits_arr, target)
        if m is None:
            warnings.append(
                f"map threshold of {name} kept at {keep:g}: only {int(np.sum(~np.isnan(hits_arr)))} of {hits_arr.size} "
                f"labelled boxes are hit (IoU >= {IOU_HIT}) at any confidence, the target needs {required_count(target, hits_arr.size)}"
            )
            continue
        regions[name]["map_threshold"] = m
    pooled = np.concatenate(all_hits) if all_hits else np.zeros(0)
    m = map_threshold_from_hits(pooled, target) if pooled.size >= min_boxes else None
    if m is None:
        warnings.append(
            f"fallback map threshold kept at {fallback['map_threshold']:g}: "
            + (f"only {pooled.size} labelled boxes on radiographs predicted positive" if pooled.size < min_boxes
               else f"only {int(np.sum(~np.isnan(pooled)))} of {pooled.size} labelled boxes are hit at any confidence")
        )
    else:
        fallback["map_threshold"] = m
    if skipped:
        info["boxes_on_predicted_negatives"] = int(skipped)
        warnings.append(f"{skipped} labelled boxes are on radiographs predicted negative (no predicted boxes): left out of the map thresholds")
    return info


def _box_hits(cases: list[Case]) -> np.ndarray:
    """`box_hit_confidences` of every labelled box on the fractured radiographs predicted positive."""
    hits = [box_hit_confidences(c) for c in cases if c.label and len(c.label_boxes) and c.predicted]
    return np.concatenate(hits) if hits else np.zeros(0)


def recheck_map_thresholds(calibration: Calibration, cases: list[Case], target: float, previous: float) -> dict[str, Any]:
    """Undo raised map thresholds whose shrunken boxes no longer hit `target` of the labelled boxes.

    The map-threshold rule of `calibrate` assumes a hit box stays a hit under a higher threshold.
    `cases`: the calibration set predicted again at the calibrated thresholds. A region whose
    map threshold was raised above `previous` (the one in use when the calibration set was first
    predicted) and now hits fewer than `target` of its boxes goes back to `previous`; the
    provenance records the check.
    """
    result = {}
    for name, point in calibration.regions.items():
        if point["map_threshold"] <= previous:
            continue
        hits = _box_hits([c for c in cases if c.region == name])
        hit = int(np.sum(~np.isnan(hits)))
        kept = hits.size > 0 and hit >= required_count(target, hits.size)
        result[name] = {"map_threshold": point["map_threshold"], "boxes": int(hits.size), "hit": hit, "kept": kept}
        if not kept:
            point["map_threshold"] = previous
    calibration.provenance["map_threshold"]["checked_on_tuning_split"] = result
    return result


def file_provenance(path: str | Path) -> dict[str, str]:
    path = Path(path)
    return {"predictions": path.name, "predictions_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# --------------------------------------------------------------------------- metrics


def auc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count one half); None without both classes."""
    y = np.asarray(labels, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = int(y.sum())
    n = y.size - p
    if p == 0 or n == 0:
        return None
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - p * (p + 1) / 2.0) / (p * n))


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(labels, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1] if y.size else np.zeros(0, dtype=int)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / n], np.r_[0.0, tps / p]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None when there are no trials."""
    if trials <= 0:
        return None
    z = float(stats.norm.isf((1.0 - confidence) / 2.0))
    p = successes / trials
    z2n = z * z / trials
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / trials + z2n / (4.0 * trials)) / (1.0 + z2n)
    return (max(0.0, center - half), min(1.0, center + half))


def cohen_kappa(labels: Any, decisions: Any) -> float | None:
    """Cohen's kappa of the binary decisions against the labels; None when undefined (chance agreement 1)."""
    y = np.asarray(labels, dtype=bool).reshape(-1)
    d = np.asarray(decisions, dtype=bool).reshape(-1)
    n = y.size
    if n == 0:
        return None
    observed = float(np.mean(y == d))
    expected = (y.mean() * d.mean()) + ((1 - y.mean()) * (1 - d.mean()))
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _bootstrap(y: np.ndarray, s: np.ndarray, d: np.ndarray, resamples: int, rng: np.random.Generator, chunk: int = 250):
    """Stratified bootstrap draws of (auc, ppv, npv); NaN where a draw leaves a metric undefined."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    p, n = pos.size, neg.size
    out = {"auc": [], "ppv": [], "npv": []}
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = np.concatenate([pos[rng.integers(0, p, (b, p))] if p else np.zeros((b, 0), int),
                              neg[rng.integers(0, n, (b, n))] if n else np.zeros((b, 0), int)], axis=1)
        ys, ds = y[idx], d[idx]
        tp = np.sum(ds & ys, axis=1)
        fp = np.sum(ds & ~ys, axis=1)
        tn = np.sum(~ds & ~ys, axis=1)
        fn = np.sum(~ds & ys, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["ppv"].append(np.where(tp + fp > 0, tp / (tp + fp), np.nan))
            out["npv"].append(np.where(tn + fn > 0, tn / (tn + fn), np.nan))
        if p and n:
            ranks = stats.rankdata(s[idx], axis=1)  # positives are the first p columns
            out["auc"].append((ranks[:, :p].sum(axis=1) - p * (p + 1) / 2.0) / (p * n))
        else:
            out["auc"].append(np.full(b, np.nan))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float] | None:
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return None
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return (float(lo), float(hi))


def rng_for(seed: int, key: str) -> np.random.Generator:
    """One generator per (seed, group): a group's CI does not depend on which other groups exist."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def binary_metrics(labels: Any, scores: Any, decisions: Any, *, bootstrap: int = 1000, seed: int = 0, key: str = "overall") -> dict[str, Any]:
    """n, positives, AUC, sensitivity, specificity, PPV, NPV (each with a 95% CI), kappa, counts.

    Sensitivity / specificity: Wilson score intervals. AUC, PPV, NPV: percentile intervals of
    `bootstrap` stratified resamples (seeded by `seed` and `key`); `bootstrap=0` skips them.
    Undefined values are None.
    """
    y = np.asarray(labels, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    d = np.asarray(decisions, dtype=bool).reshape(-1)
    if not (y.size == s.size == d.size):
        raise ValueError("labels, scores and decisions must have the same length")
    tp = int(np.sum(d & y))
    fp = int(np.sum(d & ~y))
    tn = int(np.sum(~d & ~y))
    fn = int(np.sum(~d & y))
    p, n = tp + fn, tn + fp
    result: dict[str, Any] = {
        "n": int(y.size),
        "positives": p,
        "negatives": n,
        "auc": auc(y, s),
        "auc_ci": None,
        "sensitivity": _ratio(tp, p),
        "sensitivity_ci": wilson_interval(tp, p),
        "specificity": _ratio(tn, n),
        "specificity_ci": wilson_interval(tn, n),
        "ppv": _ratio(tp, tp + fp),
        "ppv_ci": None,
        "npv": _ratio(tn, tn + fn),
        "npv_ci": None,
        "kappa": cohen_kappa(y, d),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
    if bootstrap > 0 and y.size:
        draws = _bootstrap(y, s, d, bootstrap, rng_for(seed, key))
        for name in ("auc", "ppv", "npv"):
            if result[name] is not None:
                result[f"{name}_ci"] = percentile_interval(draws[name])
    for name in ("auc_ci", "sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci"):
        if result[name] is not None:
            result[name] = [float(result[name][0]), float(result[name][1])]
    return result


def decisions_for(cases: list[Case], thresholds: Thresholds | None) -> np.ndarray:
    """The operating point: the predictions' own `fracture`, or score >= the region's threshold."""
    if thresholds is None:
        missing = [c.source for c in cases if c.predicted is None]
        if missing:
            raise EvaluationError(
                f"{len(missing)} predictions carry no 'fracture' decision (e.g. {missing[0]!r}): pass --thresholds"
            )
        return np.array([bool(c.predicted) for c in cases], dtype=bool)
    return np.array([c.score >= thresholds.for_region(c.region)[0].threshold for c in cases], dtype=bool)


def evaluate(cases: list[Case], decisions: np.ndarray, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"overall": metrics, "regions": {name: metrics}} (see `binary_metrics`)."""
    if not cases:
        raise EvaluationError("no labelled radiographs with an \"ok\" prediction to evaluate")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    y = np.array([c.label for c in cases], dtype=bool)
    s = np.array([c.score for c in cases], dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    regions = np.array([c.region for c in cases])
    out: dict[str, Any] = {"overall": binary_metrics(y, s, d, bootstrap=bootstrap, seed=seed, key="overall"), "regions": {}}
    for name in sorted(set(regions.tolist())):
        mask = regions == name
        out["regions"][name] = binary_metrics(y[mask], s[mask], d[mask], bootstrap=bootstrap, seed=seed, key=f"region:{name}")
    return out


# --------------------------------------------------------------------------- plot


def plot_roc(
    cases: list[Case],
    decisions: np.ndarray,
    path: str | Path,
    *,
    title: str,
    subtitle: str = "",
    metrics: dict[str, Any] | None = None,
) -> Path:
    """ROC curves as a PNG: overall (bold) and per region (thin), operating points marked."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    y = np.array([c.label for c in cases], dtype=bool)
    s = np.array([c.score for c in cases], dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    regions = np.array([c.region for c in cases])
    names = sorted(set(regions.tolist()))
    # Dark tab20 shades first, then the light ones: up to 10 regions all get strong colours.
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    palette = [colormaps["tab20"](order[i % 20]) for i in range(len(names))]

    fig = Figure(figsize=(11, 7.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    chance = ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")[0]

    def point(mask):
        yy, dd = y[mask], d[mask]
        return float(np.mean(dd[~yy])), float(np.mean(dd[yy]))

    handles, skipped = [], []
    for i, name in enumerate(names):
        mask = regions == name
        area = auc(y[mask], s[mask])
        if area is None:
            skipped.append(name)
            continue
        fpr, tpr = roc_curve(y[mask], s[mask])
        color = palette[i]
        handles.append(ax.plot(fpr, tpr, color=color, linewidth=1.2, alpha=0.9,
                               label=f"{name}  AUC {area:.3f}  (n={int(mask.sum())}, {int(y[mask].sum())} pos)")[0])
        ax.plot(*point(mask), marker="o", markersize=7, color=color, markeredgecolor="0.15", markeredgewidth=0.8,
                linestyle="none", zorder=4)
    area = auc(y, s)
    if area is not None:
        fpr, tpr = roc_curve(y, s)
        ci = (metrics or {}).get("overall", {}).get("auc_ci")
        ci_text = f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else ""
        overall = ax.plot(fpr, tpr, color="black", linewidth=2.8, zorder=5,
                          label=f"overall  AUC {area:.3f}{ci_text}  (n={y.size}, {int(y.sum())} pos)")[0]
        ax.plot(*point(np.ones(y.size, bool)), marker="D", markersize=10, color="black", markeredgecolor="white",
                markeredgewidth=1.2, linestyle="none", zorder=6)
        handles.insert(0, overall)
    handles += [
        Line2D([], [], marker="D", markersize=8, color="black", markeredgecolor="white", linestyle="none", label="operating point (overall)"),
        Line2D([], [], marker="o", markersize=7, color="0.75", markeredgecolor="0.15", linestyle="none", label="operating point (region)"),
        chance,
    ]
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if skipped:
        ax.text(0.99, 0.01, "no ROC (one class only): " + ", ".join(skipped), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.4")
    path = Path(path)
    fig.savefig(path, format="png")
    return path
