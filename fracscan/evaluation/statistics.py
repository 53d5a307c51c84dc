"""The statistics every evaluation figure is built from (a leaf: it imports nothing of fracscan).

AUC (Mann-Whitney) and the ROC curve, Wilson score intervals, confusion matrices and Cohen's kappa
of any number of classes (one home: the fracture decisions and the classification heads use it),
percentile intervals of bootstrap draws, and one seeded generator per group.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats


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
