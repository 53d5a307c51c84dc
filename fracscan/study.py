"""Study-level answers: several views of one examination make one decision.

A fracture is often visible in one view only, so a study is scored from its views' ensemble scores
by a configured rule (`max`, the default; `mean`; `noisy_or` = 1 - prod(1 - s)) and decided against
study thresholds calibrated for that rule (`Thresholds.study`, from `fracscan calibrate --by-study`).
Without them the image-level thresholds and the default rule apply, and the answer says so
(`calibrated` false): study scores under `max` are on the image scale, which makes that a sound,
if more sensitive and less specific, default.

Views that failed are left out; the answer counts the views it used. Numpy only: the Triton study
model (`fracscan.triton_models.StudyModel`), the demo and the evaluation all call these functions.

An ensemble with classification heads answers each head for the study too (`study_heads`): each scored
view votes for its top class with its top-class probability as the weight; the study's class is the one
with the largest sum of weights (a tie goes to the class of the earliest view among the tied ones), and
its probabilities are the classes' shares of the votes. A head with a DICOM check (laterality, body part)
describes the whole study, so a view whose top class differs from the study's is a QC warning; the views
of a head without one (the exam view) differ by design.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fracscan.contract import DEFAULT_STUDY_RULE, STUDY_RULES, UNKNOWN_REGION, Level
from fracscan.heads import HeadAnswer, answer
from fracscan.postprocess import level_for
from fracscan.spec import HeadSpec
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


@dataclass(frozen=True)
class StudyHeads:
    answers: dict[str, HeadAnswer]  # per head: the study's class and the classes' vote shares
    disagreeing: dict[str, tuple[int, ...]]  # per head with a check: the views whose top class differs
    qc: tuple[str, ...]  # one warning per checked head whose views disagree; empty when they agree


def study_heads(heads: Sequence[HeadSpec], views: Mapping[int, Mapping[str, npt.ArrayLike]]) -> StudyHeads:
    """The study's answer for each head from its scored views' probabilities (see the module docstring).

    `views` maps each scored view's index (in request order, which the warnings name) to its
    probabilities per head, in the head's class order.
    """
    if not views:
        raise StudyError("a study needs at least one scored view")
    answers, disagreeing, qc = {}, {}, []
    for head in heads:
        found = {i: answer(head, probs[head.name]) for i, probs in views.items()}
        votes = np.zeros(len(head.classes), dtype=np.float64)
        for view in found.values():
            votes[head.classes.index(view.label)] += view.confidence
        best = votes.max()
        label = next(v.label for v in found.values() if votes[head.classes.index(v.label)] == best)
        answers[head.name] = HeadAnswer(label, (votes / votes.sum()).astype(np.float32))
        if head.check is None:
            continue
        odd = tuple(i for i, v in found.items() if v.label != label)
        disagreeing[head.name] = odd
        if odd:
            named = ", ".join(f"view {i}: {found[i].label} (p = {found[i].confidence:.2f})" for i in odd)
            qc.append(f"{head.name}: the views disagree, the study is {label} by their votes ({named})")
    return StudyHeads(answers, disagreeing, tuple(qc))
