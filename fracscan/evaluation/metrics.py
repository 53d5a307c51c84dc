"""Metrics of the paper: AUC, sensitivity, specificity, PPV, NPV with 95% CIs, and Cohen's kappa.

Cohen's kappa has one home, `cohen_kappa`, from the confusion matrix of any number of classes: the
fracture decisions (two) and the classification heads (`evaluation.heads`) use the same one.

Wilson score intervals for sensitivity and specificity; for AUC, PPV and NPV the percentile
intervals of a seeded bootstrap that resamples radiographs stratified by label (P positives and
N negatives drawn with replacement from each class).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from fracscan.evaluation.records import Case, EvaluationError
from fracscan.evaluation.rules import IOU_HIT, box_hit_confidences, top_box_hit
from fracscan.evaluation.statistics import (
    auc,
    cohen_kappa,
    percentile_interval,
    rng_for,
    wilson_interval,
)
from fracscan.thresholds import Thresholds


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _bootstrap(
    y: NDArray[np.bool_],
    s: NDArray[np.float64],
    d: NDArray[np.bool_],
    resamples: int,
    rng: np.random.Generator,
    chunk: int = 250,
) -> dict[str, NDArray[np.float64]]:
    """Stratified bootstrap draws of (auc, ppv, npv); NaN where a draw leaves a metric undefined."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    p, n = pos.size, neg.size
    out: dict[str, list[NDArray[np.float64]]] = {"auc": [], "ppv": [], "npv": []}
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = np.concatenate(
            [
                pos[rng.integers(0, p, (b, p))] if p else np.zeros((b, 0), int),
                neg[rng.integers(0, n, (b, n))] if n else np.zeros((b, 0), int),
            ],
            axis=1,
        )
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


def binary_metrics(
    labels: Any, scores: Any, decisions: Any, *, bootstrap: int = 1000, seed: int = 0, key: str = "overall"
) -> dict[str, Any]:
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


def decisions_for(cases: list[Case], thresholds: Thresholds | None) -> NDArray[np.bool_]:
    """The operating point: the predictions' own `fracture`, or score >= the region's threshold."""
    if thresholds is None:
        missing = [c.source for c in cases if c.predicted is None]
        if missing:
            raise EvaluationError(
                f"{len(missing)} predictions carry no 'fracture' decision (e.g. {missing[0]!r}): pass --thresholds"
            )
        return np.array([bool(c.predicted) for c in cases], dtype=bool)
    return np.array([c.score >= thresholds.for_region(c.region)[0].threshold for c in cases], dtype=bool)


def evaluate(cases: list[Case], decisions: Any, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"overall": metrics, "regions": {name: metrics}} (see `binary_metrics`)."""
    if not cases:
        raise EvaluationError('no labelled radiographs with an "ok" prediction to evaluate')
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    y = np.array([c.label for c in cases], dtype=bool)
    s = np.array([c.score for c in cases], dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    regions = np.array([c.region for c in cases])
    out: dict[str, Any] = {
        "overall": binary_metrics(y, s, d, bootstrap=bootstrap, seed=seed, key="overall"),
        "regions": {},
    }
    for name in sorted(set(regions.tolist())):
        mask = regions == name
        out["regions"][name] = binary_metrics(
            y[mask], s[mask], d[mask], bootstrap=bootstrap, seed=seed, key=f"region:{name}"
        )
    return out


def localisation(cases: list[Case]) -> dict[str, Any] | None:
    """Where the boxes land, over the fractured radiographs whose labels have boxes; None when none has.

    `top_box_rate`: the share of those radiographs whose top box (the answer's first) overlaps a
    labelled box with IoU >= IOU_HIT; `box_sensitivity`: the share of their labelled boxes hit by any
    predicted box. A radiograph called negative has no boxes, so it counts as a miss in both.
    Wilson 95% intervals.
    """
    boxed = [c for c in cases if c.label and len(c.label_boxes)]
    if not boxed:
        return None
    top = sum(top_box_hit(c.label_boxes, c.pred_boxes) for c in boxed)
    hits = np.concatenate([box_hit_confidences(c) for c in boxed])
    found = int(np.count_nonzero(~np.isnan(hits)))
    return {
        "iou": IOU_HIT,
        "radiographs": len(boxed),
        "top_box_hits": top,
        "top_box_rate": top / len(boxed),
        "top_box_rate_ci": list(wilson_interval(top, len(boxed)) or ()),
        "boxes": int(hits.size),
        "boxes_hit": found,
        "box_sensitivity": found / hits.size,
        "box_sensitivity_ci": list(wilson_interval(found, int(hits.size)) or ()),
    }
