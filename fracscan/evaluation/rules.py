"""The threshold rules: exact order statistics of scores and of box-hit confidences.

* `sensitivity_threshold`: the highest score t with at least the target fraction of the
  positives scoring >= t, i.e. the ceil(target * P)-th largest positive score.
* `specificity_threshold` (the optional "definite" operating point): the lowest threshold with
  at least the target fraction of the negatives scoring strictly below it.
* `map_threshold_from_hits`: the same rule as the first over labelled boxes, each scored by the
  best confidence of a predicted box that hits it (IoU >= `IOU_HIT`).

`required_count` computes ceil(target * n) on the decimal target: in float, 0.55 * 100 is
55.00000000000001 and its ceiling one too many.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.evaluation.records import Case

IOU_HIT = 0.3  # a labelled box is "hit" by a predicted box with IoU >= this


def check_fraction(value: float, name: str) -> None:
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
    check_fraction(target, "target sensitivity")
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
    check_fraction(target, "target specificity")
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64).reshape(-1))
    if scores.size == 0:
        return None
    s = scores[required_count(target, scores.size) - 1]
    return float(min(np.nextafter(s, np.inf), 1.0))


def iou(box: NDArray[np.float64], boxes: NDArray[np.float64]) -> NDArray[np.float64]:
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


def box_hit_confidences(case: Case, min_iou: float = IOU_HIT) -> NDArray[np.float64]:
    """Per labelled box: the highest confidence of a predicted box with IoU >= min_iou, NaN if none."""
    out = np.full(len(case.label_boxes), np.nan)
    for i, box in enumerate(case.label_boxes):
        overlaps = iou(box, case.pred_boxes)
        hits = case.pred_boxes[overlaps >= min_iou, 4] if overlaps.size else np.zeros(0)
        if hits.size:
            out[i] = hits.max()
    return out


def top_box_hit(label_boxes: Any, pred_boxes: Any, min_iou: float = IOU_HIT) -> bool:
    """Whether the top predicted box (the first: highest confidence) overlaps a labelled box with IoU >= min_iou."""
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 5)
    labels = np.asarray(label_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(pred) or not len(labels):
        return False
    return bool(iou(pred[0, :4], labels).max() >= min_iou)


def map_threshold_from_hits(hit_confidences: Any, target: float) -> float | None:
    """Largest m such that at least `target` of the labelled boxes are hit at confidence >= m.

    `hit_confidences` holds one value per labelled box (NaN = not hit at all). The same rule
    as `sensitivity_threshold` over the boxes; None when the target is out of reach (fewer
    than ceil(target * B) boxes are hit at any confidence) or there are no boxes.
    """
    check_fraction(target, "target sensitivity")
    hits = np.asarray(hit_confidences, dtype=np.float64).reshape(-1)
    if hits.size == 0:
        return None
    k = required_count(target, hits.size)
    found = np.sort(hits[~np.isnan(hits)])[::-1]
    return float(found[k - 1]) if found.size >= k else None


def box_hits(cases: list[Case]) -> NDArray[np.float64]:
    """`box_hit_confidences` of every labelled box on the fractured radiographs predicted positive."""
    hits = [box_hit_confidences(c) for c in cases if c.label and len(c.label_boxes) and c.predicted]
    return np.concatenate(hits) if hits else np.zeros(0)
