"""Averaging and post-processing (Jones et al. 2020): ensemble score, decision, boxes.

The operating points it applies (the thresholds file) are `fracscan.thresholds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fracscan.contract import Level
from fracscan.preprocess import Geometry
from fracscan.thresholds import OperatingPoint, Thresholds


def average_scores(member_scores: npt.ArrayLike) -> float:
    """Unweighted mean of the member probabilities."""
    return float(np.mean(np.asarray(member_scores, dtype=np.float64)))


def average_maps(maps: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32] | None:
    """Unweighted mean over the members that produce a map (None when none does)."""
    if not maps:
        return None
    stacked = np.stack([np.asarray(m, dtype=np.float32).reshape(m.shape[-2:]) for m in maps])
    mean: npt.NDArray[np.float32] = stacked.mean(axis=0, dtype=np.float32)
    return mean


def extract_boxes(
    prob_map: npt.NDArray[np.float32], map_threshold: float, geometry: Geometry
) -> npt.NDArray[np.float32]:
    """Boxes around connected high-probability regions, in original pixel coordinates.

    The S/8 map is first upsampled bilinearly to the S x S frame (each map value sits at the
    centre of its cell), so a box edge can fall inside a cell rather than only on the stride-8
    grid. Returns [K, 5] float32 rows (x0, y0, x1, y1, confidence), highest confidence first;
    confidence is the peak of the upsampled probability inside the region.
    """
    coarse = np.asarray(prob_map, dtype=np.float32)
    stride = geometry.size / coarse.shape[-1]  # = MAP_STRIDE for a DRN map
    prob = ndimage.zoom(coarse, stride, order=1, mode="nearest", grid_mode=True)
    labels, count = ndimage.label(prob >= map_threshold, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros((0, 5), dtype=np.float32)
    scale = geometry.size / prob.shape[-1]  # 1 unless the zoom rounded the frame size
    rows = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        peak = float(prob[sl][labels[sl] == index].max())
        corners = np.array([[sl[1].start, sl[0].start], [sl[1].stop, sl[0].stop]], dtype=np.float64) * scale
        (bx0, by0), (bx1, by1) = geometry.frame_to_original(corners)
        if bx1 - bx0 < 1e-6 or by1 - by0 < 1e-6:
            continue  # entirely in the padding
        rows.append((bx0, by0, bx1, by1, peak))
    rows.sort(key=lambda r: -r[4])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


@dataclass(frozen=True)
class Decision:
    fracture: bool
    threshold: float
    region: str
    fallback: bool  # the region has no calibrated threshold: the fallback one was applied
    boxes: npt.NDArray[np.float32]  # [K, 5]
    level: Level = "negative"  # the boxes inherit it
    definite_threshold: float | None = None  # the one applied, never below `threshold`


def level_for(score: float, point: OperatingPoint) -> tuple[Level, float | None]:
    """negative / suspicious / definite, and the definite threshold applied.

    `definite` needs score >= max(threshold, definite threshold): a definite answer is never below
    the suspicious (high-sensitivity) threshold, whatever calibration produced.
    """
    definite = None if point.definite_threshold is None else max(point.threshold, point.definite_threshold)
    if score < point.threshold:
        return "negative", definite
    return ("definite" if definite is not None and score >= definite else "suspicious"), definite


def decide(
    score: float, prob_map: npt.NDArray[np.float32] | None, region: str, geometry: Geometry, thresholds: Thresholds
) -> Decision:
    """Fracture iff score >= the region's threshold; boxes only for a positive radiograph."""
    point, fallback = thresholds.for_region(region)
    fracture = bool(score >= point.threshold)
    if fracture and prob_map is not None:
        boxes = extract_boxes(prob_map, point.map_threshold, geometry)
    else:
        boxes = np.zeros((0, 5), dtype=np.float32)
    level, definite = level_for(score, point)
    return Decision(fracture, point.threshold, region, fallback, boxes, level, definite)
