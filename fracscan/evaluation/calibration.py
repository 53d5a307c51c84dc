"""Calibration (Jones et al. 2020, Methods): per-region operating points from labelled predictions.

The paper: "anatomical-region-specific thresholds were optimized on the tuning set such that the
ensemble system yielded a 92.5% sensitivity on each anatomical region". The result is the core's
`fracscan.postprocess.Thresholds`, the same object the served `threshold` model loads, plus the
warnings the user should read; `fit_by_region` says what those thresholds achieve on the
calibration set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.contract import UNKNOWN_REGION
from fracscan.evaluation.records import Case, EvaluationError
from fracscan.evaluation.rules import (
    IOU_HIT,
    box_hits,
    check_fraction,
    map_threshold_from_hits,
    required_count,
    sensitivity_threshold,
    specificity_threshold,
)
from fracscan.thresholds import DEFAULT_MAP_THRESHOLD, TARGET_SENSITIVITY, OperatingPoint, Thresholds

DISTRIBUTION_QUANTILES = 21  # 0 %, 5 %, ..., 100 %: the baseline `fracscan monitor` compares a site's scores with
ALL_REGIONS = "all"  # the pooled entry of the score distribution


@dataclass(frozen=True)
class CalibrationResult:
    """The calibrated thresholds (save them as thresholds.json) and what the user should be told."""

    thresholds: Thresholds
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionFit:
    """What a region's operating point achieves on the calibration set."""

    n: int
    positives: int
    threshold: float
    fallback: bool  # the region has no entry of its own: the fallback point applies
    sensitivity: float | None
    specificity: float | None
    map_threshold: float
    definite_threshold: float | None


def group_by_region(cases: list[Case]) -> dict[str, list[Case]]:
    """Cases per region, regions sorted by name."""
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


def fit_by_region(cases: list[Case], thresholds: Thresholds) -> dict[str, RegionFit]:
    """Per region of `cases`: its operating point and the sensitivity / specificity it achieves there."""
    fits = {}
    for name, group in group_by_region(cases).items():
        point, fallback = thresholds.for_region(name)
        sens, spec = _rates(group, point.threshold)
        fits[name] = RegionFit(
            n=len(group),
            positives=sum(c.label for c in group),
            threshold=point.threshold,
            fallback=fallback,
            sensitivity=sens,
            specificity=spec,
            map_threshold=point.map_threshold,
            definite_threshold=point.definite_threshold,
        )
    return fits


def calibrate(
    cases: list[Case],
    target_sensitivity: float = TARGET_SENSITIVITY,
    *,
    min_positives: int = 10,
    definite_specificity: float | None = None,
    box_labels: bool = False,
    current: Thresholds | None = None,
    provenance: dict[str, Any] | None = None,
) -> CalibrationResult:
    """Per-region operating points from labelled predictions.

    Score threshold (per region, fallback = all regions pooled, incl. unknown ones):
    `sensitivity_threshold` — the ceil(target * P)-th largest positive score. A region with
    fewer than `min_positives` positives gets no entry: the served model applies the fallback
    to it (and says so). The "unknown" region never gets an entry of its own.

    Definite threshold (only with `definite_specificity`): `specificity_threshold` on the
    region's negatives (pooled negatives when it has fewer than `min_positives` of them), raised
    to the region's score threshold if below it, so "definite" is never less strict. Stored as
    the operating point's `definite_threshold` (thresholds.json key `definite_threshold`).

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
    _check_arguments(cases, target_sensitivity, definite_specificity, min_positives)
    warnings: list[str] = []
    groups = group_by_region(cases)
    pooled, scores, counts = _score_thresholds(cases, groups, target_sensitivity, min_positives, warnings)
    prov: dict[str, Any] = {
        "target_sensitivity": float(target_sensitivity),
        "rule": "threshold = the ceil(target * P)-th largest positive score of the region (fracture iff score >= threshold)",
        "min_positives": int(min_positives),
        "counts": counts,
        "fallback_regions": sorted(n for n in groups if n not in scores),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    definite: dict[str, float] = {}
    fallback_definite = None
    if definite_specificity is not None:
        prov["definite_specificity"] = float(definite_specificity)
        definite, fallback_definite = _definite_thresholds(
            cases, groups, scores, pooled, definite_specificity, min_positives, warnings
        )

    def current_map(region: str | None) -> float:
        if current is None:
            return DEFAULT_MAP_THRESHOLD
        return (current.fallback if region is None else current.for_region(region)[0]).map_threshold

    maps = {name: current_map(name) for name in scores}
    fallback_map = current_map(None)
    if box_labels:
        prov["map_threshold"], maps, fallback_map = _calibrate_maps(
            groups, maps, fallback_map, target_sensitivity, min_positives, warnings
        )
    else:
        prov["map_threshold"] = {"calibrated": False, "why": "no box labels (x0,y0,x1,y1): current map thresholds kept"}
    prov.update({key: value for key, value in (provenance or {}).items() if value is not None})

    thresholds = Thresholds(
        {name: OperatingPoint(threshold, maps[name], definite.get(name)) for name, threshold in scores.items()},
        OperatingPoint(pooled, fallback_map, fallback_definite),
        prov,
    )
    _check_probabilities(thresholds)
    distribution = score_distribution(cases, thresholds)
    thresholds = replace(thresholds, provenance={**prov, "score_distribution": distribution})
    return CalibrationResult(thresholds, tuple(warnings))


def score_distribution(
    cases: list[Case], thresholds: Thresholds, quantiles: int = DISTRIBUTION_QUANTILES
) -> dict[str, Any]:
    """The tuning split's scores per region (and pooled as "all"): count, evenly spaced quantiles (linear
    interpolation) and the share the calibrated points call suspicious-or-definite / definite. Stored in the
    calibration record, so that a thresholds.json is a monitoring baseline without the files."""
    probabilities = np.linspace(0.0, 1.0, quantiles)

    def summary(group: list[Case], points: list[OperatingPoint]) -> dict[str, Any]:
        s = np.array([c.score for c in group], dtype=np.float64)
        positive = np.array([c.score >= p.threshold for c, p in zip(group, points, strict=True)])
        definite = np.array(
            [
                p.definite_threshold is not None and c.score >= p.definite_threshold
                for c, p in zip(group, points, strict=True)
            ]
        )
        return {
            "n": len(group),
            "quantiles": [float(v) for v in np.quantile(s, probabilities)],
            "positive_rate": float(positive.mean()),
            "definite_rate": float(definite.mean()),
        }

    point = {name: thresholds.for_region(name)[0] for name in group_by_region(cases)}
    regions = {name: summary(group, [point[name]] * len(group)) for name, group in group_by_region(cases).items()}
    regions[ALL_REGIONS] = summary(cases, [point[c.region] for c in cases])
    return {"probabilities": [float(p) for p in probabilities], "regions": regions}


def _check_arguments(
    cases: list[Case], target_sensitivity: float, definite_specificity: float | None, min_positives: int
) -> None:
    check_fraction(target_sensitivity, "target sensitivity")
    if definite_specificity is not None:
        check_fraction(definite_specificity, "target specificity")
    if min_positives < 1:
        raise ValueError(f"min_positives must be at least 1, got {min_positives}")
    if not cases:
        raise EvaluationError('no labelled radiographs with an "ok" prediction to calibrate on')


def _score_thresholds(
    cases: list[Case], groups: dict[str, list[Case]], target: float, min_positives: int, warnings: list[str]
) -> tuple[float, dict[str, float], dict[str, dict[str, int]]]:
    """Step 1, the score thresholds: (pooled fallback, {region: own threshold}, counts per region).

    A region gets its own threshold only with at least `min_positives` positives; "unknown" never does."""
    positives = [c.score for c in cases if c.label]
    if not positives:
        raise EvaluationError("no positive (fracture = 1) labels among the matched radiographs: cannot calibrate")
    pooled = sensitivity_threshold(positives, target)
    assert pooled is not None  # there are positives
    if len(positives) < min_positives:
        warnings.append(
            f"the fallback threshold rests on only {len(positives)} positives (fewer than --min-positives {min_positives})"
        )
    scores: dict[str, float] = {}
    counts: dict[str, dict[str, int]] = {}
    too_few: list[str] = []
    for name, group in groups.items():
        pos = [c.score for c in group if c.label]
        counts[name] = {"n": len(group), "positives": len(pos)}
        if name == UNKNOWN_REGION:
            continue
        own = sensitivity_threshold(pos, target)
        if own is None or len(pos) < min_positives:
            too_few.append(f"{name} ({len(pos)})")
            continue
        scores[name] = own
    if too_few:
        warnings.append(
            f"{len(too_few)} region(s) with fewer than {min_positives} positives use the fallback threshold "
            f"{pooled:.6g}: {', '.join(too_few)}"
        )
    if UNKNOWN_REGION in groups:
        warnings.append(f"{len(groups[UNKNOWN_REGION])} radiographs of unknown region count only towards the fallback")
    return pooled, scores, counts


def _definite_thresholds(
    cases: list[Case],
    groups: dict[str, list[Case]],
    scores: dict[str, float],
    pooled: float,
    specificity: float,
    min_positives: int,
    warnings: list[str],
) -> tuple[dict[str, float], float | None]:
    """Step 2, the "definite" thresholds: ({region: threshold}, fallback), never below the score threshold.

    From the region's negatives, or the pooled negatives when it has fewer than `min_positives` of them."""
    negatives = [c.score for c in cases if not c.label]
    if not negatives:
        warnings.append("no negative labels: no definite (high-specificity) threshold computed")
        return {}, None
    fallback = max(_specificity(negatives, specificity), pooled)
    definite = {}
    for name, threshold in scores.items():
        neg = [c.score for c in groups[name] if not c.label]
        own = _specificity(neg, specificity) if len(neg) >= min_positives else fallback
        definite[name] = max(own, threshold)
    sparse = [n for n in scores if sum(not c.label for c in groups[n]) < min_positives]
    if sparse:
        warnings.append(
            f"definite threshold from the pooled negatives (fewer than {min_positives} negatives): {', '.join(sparse)}"
        )
    return definite, fallback


def _specificity(negative_scores: list[float], target: float) -> float:
    threshold = specificity_threshold(negative_scores, target)
    assert threshold is not None  # only called with negatives
    return threshold


def _check_probabilities(thresholds: Thresholds) -> None:
    """Thresholds outside [0, 1] mean the inputs were no probabilities: refuse before anything is written."""
    points = [*thresholds.regions.values(), thresholds.fallback]
    if any(not 0.0 <= p.threshold <= 1.0 for p in points):
        raise EvaluationError("scores outside [0, 1]: thresholds must be probabilities")
    if any(not 0.0 <= p.map_threshold <= 1.0 for p in points):
        raise EvaluationError("box confidences outside [0, 1]: map thresholds must be probabilities")


def _calibrate_maps(
    groups: dict[str, list[Case]],
    maps: dict[str, float],
    fallback_map: float,
    target: float,
    min_boxes: int,
    warnings: list[str],
) -> tuple[dict[str, Any], dict[str, float], float]:
    """(provenance, map threshold per calibrated region, fallback map threshold); appends to `warnings`."""
    info: dict[str, Any] = {
        "calibrated": True,
        "rule": (
            f"largest m such that >= {target:g} of the labelled boxes on radiographs predicted positive are hit "
            f"by a predicted box with IoU >= {IOU_HIT} and confidence >= m"
        ),
        "boxes": {},
    }
    maps = dict(maps)
    all_hits: list[NDArray[np.float64]] = []
    skipped = 0
    for name, group in groups.items():
        hits = box_hits(group)
        skipped += sum(len(c.label_boxes) for c in group if c.label and not c.predicted)
        all_hits.append(hits)
        hit = int(np.sum(~np.isnan(hits)))
        info["boxes"][name] = {"boxes": int(hits.size), "hit": hit}
        if name not in maps:
            continue
        keep = maps[name]
        if hits.size < min_boxes:
            warnings.append(
                f"map threshold of {name} kept at {keep:g}: only {hits.size} labelled boxes on radiographs "
                f"predicted positive (fewer than {min_boxes})"
            )
            continue
        m = map_threshold_from_hits(hits, target)
        if m is None:
            warnings.append(
                f"map threshold of {name} kept at {keep:g}: only {hit} of {hits.size} labelled boxes are hit "
                f"(IoU >= {IOU_HIT}) at any confidence, the target needs {required_count(target, hits.size)}"
            )
            continue
        maps[name] = m
    pooled = np.concatenate(all_hits) if all_hits else np.zeros(0)
    m = map_threshold_from_hits(pooled, target) if pooled.size >= min_boxes else None
    if m is None:
        warnings.append(
            f"fallback map threshold kept at {fallback_map:g}: "
            + (
                f"only {pooled.size} labelled boxes on radiographs predicted positive"
                if pooled.size < min_boxes
                else f"only {int(np.sum(~np.isnan(pooled)))} of {pooled.size} labelled boxes are hit at any confidence"
            )
        )
    else:
        fallback_map = m
    if skipped:
        info["boxes_on_predicted_negatives"] = int(skipped)
        warnings.append(
            f"{skipped} labelled boxes are on radiographs predicted negative (no predicted boxes): "
            "left out of the map thresholds"
        )
    return info, maps, fallback_map


def recheck_map_thresholds(thresholds: Thresholds, cases: list[Case], target: float, previous: float) -> Thresholds:
    """Undo raised map thresholds whose shrunken boxes no longer hit `target` of the labelled boxes.

    The map-threshold rule of `calibrate` assumes a hit box stays a hit under a higher threshold.
    `cases`: the calibration set predicted again at the calibrated thresholds. A region whose
    map threshold was raised above `previous` (the one in use when the calibration set was first
    predicted) and now hits fewer than `target` of its boxes goes back to `previous`. Returns the
    checked thresholds; their provenance records the check under
    `map_threshold.checked_on_tuning_split`.
    """
    check: dict[str, dict[str, Any]] = {}
    regions = dict(thresholds.regions)
    for name, point in thresholds.regions.items():
        if point.map_threshold <= previous:
            continue
        hits = box_hits([c for c in cases if c.region == name])
        hit = int(np.sum(~np.isnan(hits)))
        kept = hits.size > 0 and hit >= required_count(target, hits.size)
        check[name] = {"map_threshold": point.map_threshold, "boxes": int(hits.size), "hit": hit, "kept": kept}
        if not kept:
            regions[name] = replace(point, map_threshold=previous)
    map_info = {**thresholds.provenance.get("map_threshold", {}), "checked_on_tuning_split": check}
    return replace(thresholds, regions=regions, provenance={**thresholds.provenance, "map_threshold": map_info})


def file_provenance(path: str | Path) -> dict[str, str]:
    """The predictions file's name and content hash, for the thresholds' provenance."""
    path = Path(path)
    return {"predictions": path.name, "predictions_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
