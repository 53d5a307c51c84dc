"""Metrics of the paper: AUC, sensitivity, specificity, PPV, NPV with 95% CIs, and Cohen's kappa.

Cohen's kappa has one home, `cohen_kappa`, from the confusion matrix of any number of classes: the
fracture decisions (two) and the classification heads (`evaluation.heads`) use the same one.

Wilson score intervals for sensitivity and specificity; for AUC, PPV and NPV the percentile
intervals of a seeded bootstrap that resamples radiographs stratified by label (P positives and
N negatives drawn with replacement from each class).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from fracscan.evaluation.matching import Case
from fracscan.evaluation.records import EvaluationError
from fracscan.evaluation.rules import IOU_HIT, box_hit_confidences, top_box_hit
from fracscan.postprocess import Thresholds


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


def roc_curve(labels: Any, scores: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
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


def confusion_matrix(truth: Iterable[Any], predicted: Iterable[Any], classes: Sequence[Any]) -> NDArray[np.int64]:
    """Counts [K, K]: rows the truth, columns the prediction, both in `classes`' order.

    ValueError for a value that is not one of `classes` (a typo must not pass as a disagreement).
    """
    index = {k: i for i, k in enumerate(classes)}

    def positions(values: Iterable[Any], what: str) -> NDArray[np.intp]:
        try:
            return np.fromiter((index[v] for v in values), dtype=np.intp)
        except KeyError as exc:
            raise ValueError(f"{what} value {exc.args[0]!r} is not one of the classes {list(classes)}") from None

    t, p = positions(truth, "truth"), positions(predicted, "predicted")
    if t.size != p.size:
        raise ValueError(f"truth and predicted differ in length ({t.size} vs {p.size})")
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def kappa_from_confusion(confusion: Any) -> float | None:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) of a confusion matrix; None when undefined (no cases, or
    chance agreement 1: both raters used one and the same class). Exact integer sums, one division."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = int(counts.sum())
    agree = int(np.trace(counts))
    chance = sum(int(r) * int(c) for r, c in zip(counts.sum(axis=1), counts.sum(axis=0), strict=True))  # n² p_e
    if n == 0 or chance >= n * n:
        return None
    return (n * agree - chance) / (n * n - chance)


def cohen_kappa(truth: Any, predicted: Any, classes: Sequence[Any] | None = None) -> float | None:
    """Cohen's kappa of the predictions against the truth over `classes`; None when undefined.

    Without `classes`, binary: both are read as booleans (the fracture labels and decisions).
    """
    if classes is None:
        truth = np.asarray(truth, dtype=bool).reshape(-1).tolist()
        predicted = np.asarray(predicted, dtype=bool).reshape(-1).tolist()
        classes = (False, True)
    return kappa_from_confusion(confusion_matrix(truth, predicted, classes))


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


def percentile_interval(draws: Any, confidence: float = 0.95) -> tuple[float, float] | None:
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return None
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return (float(lo), float(hi))


def rng_for(seed: int, key: str) -> np.random.Generator:
    """One generator per (seed, group): a group's CI does not depend on which other groups exist."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


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
