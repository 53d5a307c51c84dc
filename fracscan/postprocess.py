"""Averaging and post-processing (Jones et al. 2020): ensemble score, decision, boxes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fracscan.contract import STUDY_RULES, Level
from fracscan.preprocess import Geometry


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


class ThresholdsError(ValueError):
    """The thresholds file is malformed; the message names the file and the problem."""


def read_thresholds_json(path: str | Path) -> Any:
    """A thresholds file's JSON (ThresholdsError naming the file when it is missing or not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ThresholdsError(f"{path}: thresholds file not found") from None
    except json.JSONDecodeError as exc:
        raise ThresholdsError(f"{path}: not valid JSON: {exc}") from None


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # fracture iff ensemble score >= threshold
    map_threshold: float = 0.5  # binarises the averaged probability map into boxes
    definite_threshold: float | None = None  # optional high-specificity ("definite") point


@dataclass(frozen=True)
class StudyThresholds:
    """Study-level operating points, valid only for the aggregation rule they were calibrated for."""

    rule: str  # one of contract.STUDY_RULES
    regions: dict[str, OperatingPoint]
    fallback: OperatingPoint
    provenance: dict[str, Any] = field(default_factory=dict)

    def for_region(self, region: str) -> tuple[OperatingPoint, bool]:
        point = self.regions.get(region)
        return (point, False) if point is not None else (self.fallback, True)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "regions": {name: _point_json(p) for name, p in sorted(self.regions.items())},
            "fallback": _point_json(self.fallback),
            "provenance": self.provenance,
        }


@dataclass(frozen=True)
class Thresholds:
    """Per-region operating points plus the fallback for unknown / unsupported regions.

    `study` (optional) holds the study-level points of `fracscan calibrate --by-study`; without it a
    study answer applies these image-level points with the default rule (and says so).
    """

    regions: dict[str, OperatingPoint]
    fallback: OperatingPoint
    provenance: dict[str, Any] = field(default_factory=dict)
    study: StudyThresholds | None = None

    def for_region(self, region: str) -> tuple[OperatingPoint, bool]:
        """(operating point, is_fallback) for a region name."""
        point = self.regions.get(region)
        return (point, False) if point is not None else (self.fallback, True)

    def to_json(self) -> dict[str, Any]:
        out = {
            "regions": {name: _point_json(p) for name, p in sorted(self.regions.items())},
            "fallback": _point_json(self.fallback),
            "provenance": self.provenance,
        }
        return out if self.study is None else {**out, "study": self.study.to_json()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "<thresholds>") -> Thresholds:
        def point(name: str, value: Any) -> OperatingPoint:
            if not isinstance(value, dict) or "threshold" not in value:
                raise ThresholdsError(f"{where}: {name} needs a 'threshold'")
            definite = value.get("definite_threshold")
            try:
                p = OperatingPoint(
                    float(value["threshold"]),
                    float(value.get("map_threshold", 0.5)),
                    None if definite is None else float(definite),
                )
            except (TypeError, ValueError):
                raise ThresholdsError(f"{where}: {name} thresholds must be numbers") from None
            values = [p.threshold, p.map_threshold] + ([] if p.definite_threshold is None else [p.definite_threshold])
            if not all(0.0 <= v <= 1.0 for v in values):
                raise ThresholdsError(f"{where}: {name} thresholds must lie in [0, 1], got {p}")
            return p

        if not isinstance(raw, dict) or "fallback" not in raw:
            raise ThresholdsError(f"{where}: needs a 'fallback' operating point")
        regions = {str(k): point(f"region '{k}'", v) for k, v in (raw.get("regions") or {}).items()}
        study = raw.get("study")
        if study is not None:
            if not isinstance(study, dict) or "fallback" not in study or study.get("rule") not in STUDY_RULES:
                raise ThresholdsError(f"{where}: 'study' needs a 'rule' ({', '.join(STUDY_RULES)}) and a 'fallback'")
            study = StudyThresholds(
                study["rule"],
                {str(k): point(f"study region '{k}'", v) for k, v in (study.get("regions") or {}).items()},
                point("study fallback", study["fallback"]),
                dict(study.get("provenance") or {}),
            )
        return cls(regions, point("fallback", raw["fallback"]), dict(raw.get("provenance") or {}), study)

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        return cls.from_json(read_thresholds_json(path), str(path))


def _point_json(point: OperatingPoint) -> dict[str, float]:
    return {k: v for k, v in asdict(point).items() if v is not None}


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
