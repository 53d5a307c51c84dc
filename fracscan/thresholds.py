"""The thresholds file (`thresholds.json`): per-region operating points, and the rules around them.

One home for what an operating point is (`OperatingPoint`: the score threshold, the map threshold that
draws boxes, the optional "definite" threshold), the file's format (`Thresholds`, with study-level
points in `StudyThresholds`), the paper's defaults, what a repository gets before calibration
(`uncalibrated`), when a calibration still fits a rebuilt repository (`calibration_still_fits`), and
whether a file counts as calibrated. `fracscan calibrate` (fracscan.evaluation.calibration) computes
them, the `threshold` model applies them (fracscan.postprocess.decide), export installs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fracscan.atomic import atomic_write_text
from fracscan.contract import STUDY_RULES

TARGET_SENSITIVITY = 0.925  # Jones et al. 2020: each region's threshold is set to reach this sensitivity
UNCALIBRATED_THRESHOLD = 0.5  # every score threshold of a repository not yet calibrated
DEFAULT_MAP_THRESHOLD = 0.5  # binarises the averaged map into boxes until calibration finds a better one


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
    map_threshold: float = DEFAULT_MAP_THRESHOLD  # binarises the averaged probability map into boxes
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
        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = "<thresholds>") -> Thresholds:
        def point(name: str, value: Any) -> OperatingPoint:
            if not isinstance(value, dict) or "threshold" not in value:
                raise ThresholdsError(f"{where}: {name} needs a 'threshold'")
            definite = value.get("definite_threshold")
            try:
                p = OperatingPoint(
                    float(value["threshold"]),
                    float(value.get("map_threshold", DEFAULT_MAP_THRESHOLD)),
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


def uncalibrated(regions: Iterable[str], spec_name: str) -> Thresholds:
    """0.5 everywhere, marked uncalibrated: a placeholder until `fracscan calibrate` runs."""
    point = OperatingPoint(UNCALIBRATED_THRESHOLD, DEFAULT_MAP_THRESHOLD)
    return Thresholds({r: point for r in regions}, point, {"calibrated": False, "spec": spec_name})


def is_calibrated(thresholds_provenance: dict[str, Any]) -> bool:
    """A thresholds file is calibrated unless it says otherwise (export writes `calibrated: false`)."""
    return bool(thresholds_provenance.get("calibrated", True))


def calibration_still_fits(same_members: bool, same_regions: bool, same_preprocess: bool) -> str | None:
    """Whether a repository's calibrated thresholds may be kept when it is rebuilt: None if so, else what
    changed. Thresholds are a property of the members' scores on frames made one way, per region: any of
    the three changing invalidates them."""
    if not same_members:
        return "members"
    if not (same_regions and same_preprocess):
        return "regions or pre-processing"
    return None
