"""The tests `fracscan monitor` judges a window with: numpy / scipy only, every one exact or stated.

- `rate_limits`: control limits for a count of n trials against a baseline of x in m, from the
  beta-binomial predictive distribution (Jeffreys prior on the baseline rate): the limits of a binomial
  chart that also carry the baseline's own uncertainty, and stay sane when the baseline saw none (x = 0).
- `psi`: population stability index over bins cut at the baseline's quantiles.
- `ks_pvalue`: two-sample Kolmogorov-Smirnov test; against a baseline known only by its quantiles, the
  statistic is taken against the piecewise-linear CDF through them, with the baseline's count in the
  effective sample size.
- `wilson`: Wilson score interval; `below_target`: exact one-sided binomial test of a sensitivity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

PSI_SMOOTHING = 0.5  # added to every bin's count (window and baseline alike), so an empty bin stays finite


@dataclass(frozen=True)
class Limits:
    """Control limits of a rate: the window's rate is out of control outside [lower, upper]."""

    lower: float
    upper: float
    expected: float  # the baseline's rate (posterior mean)


def rate_limits(n: int, baseline_hits: int, baseline_n: int, alpha: float, sides: int = 2) -> Limits:
    """Rates a window of `n` stays within with probability >= 1 - alpha if nothing changed.

    The window's count under the baseline is beta-binomial(n, x + 1/2, m - x + 1/2); the limits are its
    alpha/2 and 1 - alpha/2 quantiles (sides=2), or 0 and its 1 - alpha quantile (sides=1: only a rise
    matters). A count strictly beyond a limit has probability <= alpha/2 (<= alpha one-sided).
    """
    a, b = baseline_hits + 0.5, baseline_n - baseline_hits + 0.5
    tail = alpha / sides
    dist = stats.betabinom(n, a, b)
    # the largest count whose upper tail P(X >= k) still exceeds `tail`: counts above it alarm
    upper = float(dist.isf(tail))
    lower = float(dist.ppf(tail)) if sides == 2 else 0.0
    return Limits(lower / n, upper / n, a / (a + b))


def out_of_limits(hits: int, n: int, limits: Limits) -> bool:
    rate = hits / n
    return rate > limits.upper + 1e-12 or rate < limits.lower - 1e-12


def psi(sample: ArrayLike, baseline_quantiles: Sequence[float]) -> float:
    """Population stability index: sum (p - q) ln(p / q) over the bins between the baseline's quantiles,
    q the baseline's share of each bin (equal, 1/(k-1), by construction), p the window's with half a count
    added to each bin. Repeated quantiles (a baseline piled on one value) merge into one bin holding their
    shares."""
    x = np.asarray(sample, dtype=np.float64)
    qs = np.asarray(baseline_quantiles, dtype=np.float64)
    edges, first = np.unique(qs[1:-1], return_index=True)  # inner cut points
    shares = np.diff(np.concatenate([[0.0], (first + 1.0) / (len(qs) - 1), [1.0]]))  # baseline share per bin
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(shares))
    p = (counts + PSI_SMOOTHING) / (len(x) + PSI_SMOOTHING * len(shares))
    q = shares
    return float(np.sum((p - q) * np.log(p / q)))


def quantiles_of(sample: ArrayLike, k: int) -> NDArray[np.float64]:
    return np.quantile(np.asarray(sample, dtype=np.float64), np.linspace(0.0, 1.0, k))


def ks_pvalue(
    sample: ArrayLike, baseline: ArrayLike | None, quantiles: Sequence[float] | None, baseline_n: int
) -> float:
    """p-value that `sample` comes from the baseline's distribution (two-sided).

    With the baseline's values: scipy's two-sample test. With its quantiles only: D = sup |F_n - G|, G
    the piecewise-linear CDF through the quantiles, and the Kolmogorov distribution at the effective
    size n m / (n + m) (as the two-sample test uses).
    """
    x = np.sort(np.asarray(sample, dtype=np.float64))
    if baseline is not None:
        return float(stats.ks_2samp(x, np.asarray(baseline, dtype=np.float64)).pvalue)
    assert quantiles is not None
    qs = np.asarray(quantiles, dtype=np.float64)
    probs = np.linspace(0.0, 1.0, len(qs))
    qs, keep = np.unique(qs, return_index=True)  # np.interp needs increasing points: keep each value's first
    g = np.interp(x, qs, probs[keep], left=0.0, right=1.0)
    n = len(x)
    d = max(np.max(np.arange(1, n + 1) / n - g), np.max(g - np.arange(0, n) / n))
    n_eff = n * baseline_n / (n + baseline_n)
    return float(stats.kstwo.sf(d, max(1, round(n_eff))))


def wilson(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion hits / n."""
    z = float(stats.norm.isf((1 - confidence) / 2))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def below_target(hits: int, n: int, target: float, alpha: float) -> bool:
    """Exact one-sided binomial test: so few hits in n are unlikely (p < alpha) at the target rate."""
    return float(stats.binom.cdf(hits, n, target)) < alpha
