"""Study-level answers: several views of one examination make one decision.

A fracture is often visible in one view only, so a study is scored from its views' ensemble scores
by a configured rule (`max`, the default; `mean`; `noisy_or` = 1 - prod(1 - s)) and decided against
study thresholds calibrated for that rule (`Thresholds.study`, from `fracscan calibrate --by-study`).
Without them the image-level thresholds and the default rule apply, and the answer says so
(`calibrated` false): study scores under `max` are on the image scale, which makes that a sound,
if more sensitive and less specific, default.

Views that failed are left out; the answer counts the views it used. Numpy only: the Triton study
model (`fracscan.triton_models.StudyModel`), the demo and the evaluation all call these functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fracscan.contract import DEFAULT_STUDY_RULE, STUDY_RULES, UNKNOWN_REGION, Level
from fracscan.postprocess import level_for
from fracscan.thresholds import Thresholds


class StudyError(ValueError):
    """A study cannot be scored (no view was scored, or an unknown rule)."""


def check_rule(rule: str) -> str:
    if rule not in STUDY_RULES:
        raise StudyError(f"unknown study rule {rule!r}, expected one of {', '.join(STUDY_RULES)}")
    return rule


def aggregate(view_scores: Sequence[float], rule: str = DEFAULT_STUDY_RULE) -> float:
    """The study score of the views' ensemble scores under `rule`."""
    scores = np.asarray(view_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise StudyError("a study needs at least one scored view")
    check_rule(rule)
    if rule == "max":
        return float(scores.max())
    if rule == "mean":
        return float(scores.mean())
    return float(1.0 - np.prod(1.0 - np.clip(scores, 0.0, 1.0)))


def study_region(user_region: str | None, view_regions: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """(the study's region, the indices of the views that resolved to another one).

    The user's region when given; else the region most views resolve to, views of unknown region
    not voting unless no view knows its region; a tie goes to the region of the earliest view
    among the tied ones (the same answer for the same request, every time).
    """
    if user_region:
        region = user_region
    else:
        known = [r for r in view_regions if r != UNKNOWN_REGION] or list(view_regions) or [UNKNOWN_REGION]
        counts = Counter(known)
        best = max(counts.values())
        region = next(r for r in known if counts[r] == best)
    return region, tuple(i for i, r in enumerate(view_regions) if r != region)


@dataclass(frozen=True)
class StudyDecision:
    score: float
    fracture: bool
    threshold: float
    level: Level
    definite_threshold: float | None  # the one applied, never below `threshold`
    region: str
    fallback: bool  # the region has no study (or image) threshold of its own
    rule: str
    calibrated: bool  # study thresholds applied; false: the image-level ones with the default rule
    views_used: int
    disagreeing: tuple[int, ...]  # indices (among the scored views) whose region differs from `region`


def decide_study(
    view_scores: Sequence[float],
    view_regions: Sequence[str],
    thresholds: Thresholds,
    user_region: str | None = None,
) -> StudyDecision:
    """The study decision of its scored views (failed views are not passed in)."""
    if len(view_scores) != len(view_regions):
        raise ValueError("one region per view score")
    study = thresholds.study
    rule = study.rule if study is not None else DEFAULT_STUDY_RULE
    score = aggregate(view_scores, rule)
    region, disagreeing = study_region(user_region, view_regions)
    point, fallback = (study or thresholds).for_region(region)
    level, definite = level_for(score, point)
    return StudyDecision(
        score=score,
        fracture=bool(score >= point.threshold),
        threshold=point.threshold,
        level=level,
        definite_threshold=definite,
        region=region,
        fallback=fallback,
        rule=rule,
        calibrated=study is not None,
        views_used=len(view_scores),
        disagreeing=disagreeing,
    )
