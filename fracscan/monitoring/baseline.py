"""What a window is compared with: a baseline's counts, scores and scanners per region.

Built from result rows (a `--baseline` JSONL, or the first windows of a series when none applies) or
from a calibration record (the score distribution `fracscan calibrate` stores in thresholds.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.monitoring.records import ALL, CalibrationBaseline, Record
from fracscan.monitoring.statistics import quantiles_of

QUANTILES = 21


@dataclass
class RegionBase:
    """One region's baseline: every count a rate is judged against, and the score distribution."""

    n: int = 0  # answered rows
    positives: int = 0
    definite: int = 0
    fallback: int | None = 0
    qc_n: int = 0  # rows whose ensemble has QC heads
    qc: int = 0
    total: int = 0  # rows, failures included (ALL only)
    failures: int | None = 0
    scores: NDArray[np.float64] | None = None
    quantiles: list[float] | None = None
    spreads: NDArray[np.float64] | None = None
    scanners: dict[str, set[str]] | None = field(default_factory=dict)  # None: the baseline does not know them


def scanners_of(records: list[Record]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for r in records:
        for key, value in r.scanner().items():
            seen.setdefault(key, set()).add(value)
    return seen


def from_records(records: list[Record]) -> dict[str, RegionBase]:
    """Per region (and ALL) from rows: answered rows per region, failures in ALL only."""
    answered = [r for r in records if r.ok]
    groups: dict[str, list[Record]] = {ALL: answered}
    for r in answered:
        groups.setdefault(r.region, []).append(r)
    bases = {}
    for region, group in groups.items():
        scores = np.array([r.score for r in group], dtype=np.float64)
        spreads = [r.spread for r in group if r.spread is not None]
        qc = [r.qc for r in group if r.qc is not None]
        bases[region] = RegionBase(
            n=len(group),
            positives=sum(r.positive for r in group),
            definite=sum(r.level == "definite" for r in group),
            fallback=sum(r.fallback for r in group),
            qc_n=len(qc),
            qc=sum(qc),
            scores=scores,
            quantiles=quantiles_of(scores, QUANTILES).tolist() if len(scores) else None,
            spreads=np.array(spreads, dtype=np.float64) if len(spreads) == len(group) and spreads else None,
            scanners=scanners_of(group),
        )
    bases[ALL].total = len(records)
    bases[ALL].failures = sum(not r.ok for r in records)
    return bases


def from_calibration(calibration: CalibrationBaseline) -> dict[str, RegionBase]:
    """Per region from a calibration record: count, quantiles and the rates at the calibrated points.

    The tuning split knows no failures, spreads, fallback shares or scanners: those figures go unjudged.
    """
    bases = {}
    for region, entry in calibration.regions.items():
        n = int(entry["n"])
        bases[region] = RegionBase(
            n=n,
            positives=round(float(entry["positive_rate"]) * n),
            definite=round(float(entry.get("definite_rate", 0.0)) * n),
            fallback=None,
            quantiles=[float(q) for q in entry["quantiles"]],
            failures=None,
            scanners=None,
        )
    return bases


def describe(bases: dict[str, RegionBase]) -> dict[str, Any]:
    """The baseline as a report states it: counts and rates per region, no values of any one row."""
    out = {}
    for region, b in sorted(bases.items()):
        out[region] = {"n": b.n, "positive_rate": b.positives / b.n if b.n else None}
        if b.quantiles is not None:
            out[region]["median_score"] = b.quantiles[len(b.quantiles) // 2]
    return out
