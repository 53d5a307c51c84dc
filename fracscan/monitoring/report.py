"""The monitoring report: per window, model series and region, every figure against its baseline and limits.

    report = build_report(records, baseline=None, verdicts=None, settings=Settings(by="week"))
    report["alarms"]  # [{"window", "series", "region", "figure", "message"}], empty when all is in control

A change of model identity starts a new series: its windows are compared only with a baseline of the
same model (given, or its own first windows), never mixed into another model's. The report holds counts,
rates and limits only: no source, no UID, no value of any one row. docs/monitoring.md defines each figure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.uid import UID

from fracscan.monitoring import statistics as st
from fracscan.monitoring.baseline import RegionBase, describe, from_calibration, from_records
from fracscan.monitoring.records import ALL, SCANNER_KEYS, UNKNOWN_IDENTITY, CalibrationBaseline, Record, Verdict
from fracscan.thresholds import TARGET_SENSITIVITY

WINDOW_DAYS = {"day": 1.0, "week": 7.0, "month": 365.25 / 12}
TOO_FEW, NO_BASELINE, IN_BASELINE = "too few", "no baseline", "baseline"


@dataclass(frozen=True)
class Settings:
    """The limits; the defaults give a stable site of 200 radiographs a week under one false alarm a year."""

    by: str = "week"
    alpha_per_week: float = 1e-4  # per test and window; scaled by the window's length (docs/monitoring.md)
    baseline_windows: int = 4  # a series without a given baseline is compared with its own first windows
    min_rate_n: int = 30  # answered rows in the cell before a rate is judged
    min_shift_n: int = 50  # rows before a distribution is compared
    min_baseline_n: int = 100  # baseline rows of the region before anything is judged against it
    min_positives: int = 10  # radiologist-positive rows before sensitivity is judged
    min_new_scanner: int = 5  # images of an unseen acquisition value before it raises an alarm
    psi_alarm: float = 0.2  # a shift must be this large (PSI) as well as significant
    target_sensitivity: float = TARGET_SENSITIVITY

    @property
    def alpha(self) -> float:
        return self.alpha_per_week * WINDOW_DAYS[self.by] / 7.0


def window_of(when: datetime, by: str) -> str:
    if by == "day":
        return when.strftime("%Y-%m-%d")
    if by == "month":
        return when.strftime("%Y-%m")
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def assign_identities(records: list[Record]) -> list[Record]:
    """Failure rows that do not name a model belong to the model that answered last before them."""
    dated = sorted((r for r in records if r.when is not None), key=lambda r: r.when)  # type: ignore[arg-type,return-value]
    named: Counter[str] = Counter(r.identity for r in dated if r.identity is not None)
    current = named.most_common(1)[0][0] if named else UNKNOWN_IDENTITY
    first = next((r.identity for r in dated if r.identity is not None), current)
    out: list[Record] = []
    last: str | None = first
    for r in dated:
        if r.identity is None:
            r = Record(**{**_fields(r), "identity": last})
        last = r.identity
        out.append(r)
    return out


def _fields(r: Record) -> dict[str, Any]:
    return {k: getattr(r, k) for k in r.__dataclass_fields__}


def build_report(
    records: list[Record],
    baseline: list[Record] | CalibrationBaseline | None = None,
    verdicts: dict[str, Verdict] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    settings = settings or Settings()
    undated = sum(r.when is None for r in records)
    dated = assign_identities(records)
    identities = list(dict.fromkeys(r.identity for r in dated))
    given = assign_identities(baseline) if isinstance(baseline, list) else None
    cells: list[dict[str, Any]] = []
    series_out = []
    for index, identity in enumerate(identities, start=1):
        rows = [r for r in dated if r.identity == identity]
        windows: dict[str, list[Record]] = {}
        for r in rows:
            windows.setdefault(window_of(r.when, settings.by), []).append(r)  # type: ignore[arg-type]
        bases, source = _baseline_for(identity or UNKNOWN_IDENTITY, given, baseline)
        own = list(windows)[: settings.baseline_windows] if bases is None else []
        if bases is None:
            bases = from_records([r for w in own for r in windows[w]])
            source = f"its first {len(own)} window(s)"
        series_out.append(
            {"series": index, "identity": identity, "first_window": next(iter(windows)), "baseline": source}
        )
        seen = {region: {k: set(v) for k, v in (b.scanners or {}).items()} for region, b in bases.items()}
        for number, (window, group) in enumerate(windows.items()):
            cells += _window_cells(window, index, group, bases, seen, verdicts, settings, window in own)
            if number == 0 and index > 1:
                cells[-len(_regions(group))]["figures"]["model_identity"] = {"status": "alarm", "value": identity}
    alarms = []
    for c in cells:
        for name, f in c["figures"].items():
            if f.get("status") == "alarm":
                where = {"window": c["window"], "series": c["series"], "region": c["region"], "figure": name}
                alarms.append(where | {"message": f.get("message") or _message(name, f)})
    notes = []
    if undated:
        notes.append(f"{undated} row(s) have no scored_at (written before rows carried it): counted here, in no window")
    if verdicts is not None:
        matched = sum(_verdict(r, verdicts) is not None for r in dated)
        notes.append(f"{matched} dated result row(s) have a verdict ({len(verdicts)} verdicts read)")
    if isinstance(baseline, CalibrationBaseline) and not any(
        str(s["baseline"]).startswith("calibration") for s in series_out
    ):
        notes.append(
            f"the calibration baseline (thresholds {baseline.thresholds_hash}) matches no model in the history"
        )
    return {
        "settings": asdict(settings) | {"alpha": settings.alpha},
        "rows": len(records),
        "undated_rows": undated,
        "series": series_out,
        "cells": cells,
        "alarms": alarms,
        "notes": notes,
    }


def _baseline_for(
    identity: str, given: list[Record] | None, baseline: list[Record] | CalibrationBaseline | None
) -> tuple[dict[str, RegionBase] | None, str]:
    if isinstance(baseline, CalibrationBaseline):
        if identity == UNKNOWN_IDENTITY or f"thresholds {baseline.thresholds_hash}" in identity:
            return from_calibration(baseline), f"calibration (thresholds {baseline.thresholds_hash})"
        return None, ""
    if given is not None:
        same = [r for r in given if r.identity == identity]
        if same:
            return from_records(same), f"baseline rows ({len(same)})"
    return None, ""


def _regions(group: list[Record]) -> list[str]:
    return [ALL, *sorted({r.region for r in group if r.ok})]


def _window_cells(
    window: str,
    series: int,
    group: list[Record],
    bases: dict[str, RegionBase],
    seen: dict[str, dict[str, set[str]]],
    verdicts: dict[str, Verdict] | None,
    s: Settings,
    in_baseline: bool,
) -> list[dict[str, Any]]:
    cells = []
    for region in _regions(group):
        rows = [r for r in group if r.ok and (region == ALL or r.region == region)]
        base = bases.get(region)
        figures: dict[str, dict[str, Any]] = {"volume": {"value": len(rows)}}
        if region == ALL:
            failures = Counter(r.failure for r in group if not r.ok)
            figures["failures"] = {"value": sum(failures.values()), "by_reason": dict(sorted(failures.items()))}
            fail_base = None if base is None or base.failures is None else (base.failures, base.total)
            figures["failure_rate"] = _rate(sum(failures.values()), len(group), fail_base, s, sides=1)
        pb = None if base is None else (base.positives, base.n)
        figures["positive_rate"] = _rate(sum(r.positive for r in rows), len(rows), pb, s)
        db = None if base is None else (base.definite, base.n)
        figures["definite_rate"] = _rate(sum(r.level == "definite" for r in rows), len(rows), db, s)
        fb = None if base is None or base.fallback is None else (base.fallback, base.n)
        figures["fallback_rate"] = _rate(sum(r.fallback for r in rows), len(rows), fb, s, sides=1)
        qc = [r.qc for r in rows if r.qc is not None]
        if qc:
            qb = None if base is None or not base.qc_n else (base.qc, base.qc_n)
            figures["qc_rate"] = _rate(sum(qc), len(qc), qb, s, sides=1)
        scores = np.array([r.score for r in rows], dtype=np.float64)
        figures["score_shift"] = _shift(scores, None if base is None else (base.scores, base.quantiles, base.n), s)
        spreads = [r.spread for r in rows if r.spread is not None]
        if spreads:
            sb = None if base is None or base.spreads is None else (base.spreads, None, len(base.spreads))
            figures["spread_shift"] = _shift(np.array(spreads), sb, s)
        if base is not None and base.scanners is not None:
            figures["new_acquisition"] = _new_scanners(rows, base, seen.setdefault(region, {}), s, region == ALL)
        if verdicts is not None:
            figures.update(_reads(rows, verdicts, s))
        if in_baseline:  # these windows are the baseline: nothing to judge them against
            for f in figures.values():
                if "status" in f:
                    f["status"] = IN_BASELINE
        cells.append({"window": window, "series": series, "region": region, "n": len(rows), "figures": figures})
    return cells


def _rate(hits: int, n: int, base: tuple[int, int] | None, s: Settings, sides: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {"value": hits / n if n else None, "hits": hits, "n": n}
    if base is None:
        return out | {"status": NO_BASELINE}
    b_hits, b_n = base
    out["baseline"] = b_hits / b_n if b_n else None
    if n < s.min_rate_n or b_n < s.min_baseline_n:
        return out | {"status": TOO_FEW}
    limits = st.rate_limits(n, b_hits, b_n, s.alpha, sides)
    alarm = st.out_of_limits(hits, n, limits)
    return out | {"lower": limits.lower, "upper": limits.upper, "status": "alarm" if alarm else "ok"}


def _shift(
    sample: NDArray[np.float64], base: tuple[NDArray[np.float64] | None, list[float] | None, int] | None, s: Settings
) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(sample), "median": float(np.median(sample)) if len(sample) else None}
    if base is None or (base[0] is None and base[1] is None):
        return out | {"status": NO_BASELINE}
    values, quantiles, b_n = base
    if values is not None:
        out["baseline_median"] = float(np.median(values)) if len(values) else None
    elif quantiles is not None:
        out["baseline_median"] = quantiles[len(quantiles) // 2]
    if len(sample) < s.min_shift_n or b_n < s.min_baseline_n:
        return out | {"status": TOO_FEW}
    qs = quantiles if quantiles is not None else st.quantiles_of(values, 21).tolist()  # type: ignore[arg-type]
    value = st.psi(sample, qs)
    p = st.ks_pvalue(sample, values, quantiles, b_n)
    alarm = p < s.alpha and value >= s.psi_alarm
    return out | {"value": value, "ks_p": p, "upper": s.psi_alarm, "status": "alarm" if alarm else "ok"}


def _new_scanners(
    rows: list[Record], base: RegionBase, seen: dict[str, set[str]], s: Settings, judge: bool
) -> dict[str, Any]:
    """Acquisition values (per SCANNER_KEYS) not in the baseline nor in an earlier window with enough of
    them. The pooled region judges (its message names the regions); a region's cell lists them."""
    new: list[dict[str, Any]] = []
    base_rate = base.positives / base.n if base.n else None
    for key in SCANNER_KEYS:
        found: dict[str, list[Record]] = {}
        for r in rows:
            value = r.scanner().get(key)
            if value is not None and value not in seen.get(key, set()):
                found.setdefault(value, []).append(r)
        for value, group in sorted(found.items()):
            regions = Counter(r.region for r in group)
            new.append({
                "key": key,
                "value": UID(value).name if key == "transfer_syntax" else value,  # the name, never a bare UID
                "n": len(group),
                "positive_rate": sum(r.positive for r in group) / len(group),
                "baseline": base_rate,
                "regions": dict(regions.most_common()),
            })  # fmt: skip
            if len(group) >= s.min_new_scanner:
                seen.setdefault(key, set()).add(value)
    big = [i for i in new if i["n"] >= s.min_new_scanner]
    out: dict[str, Any] = {"value": len(new), "new": new}
    if judge:
        out["status"] = "alarm" if big else "ok"
    if judge and big:
        out["message"] = "; ".join(
            f"new {i['key']} {i['value']!r}: {i['n']} image(s), positive rate {i['positive_rate']:.2f}"
            + (f" vs {i['baseline']:.2f}" if i["baseline"] is not None else "")
            + " ("
            + ", ".join(f"{region} {n}" for region, n in list(i["regions"].items())[:4])
            + ")"
            for i in big
        )
    return out


def _verdict(r: Record, verdicts: dict[str, Verdict]) -> Verdict | None:
    return next((verdicts[k] for k in r.keys if k in verdicts), None)


def _reads(rows: list[Record], verdicts: dict[str, Verdict], s: Settings) -> dict[str, dict[str, Any]]:
    read = [(r, v) for r in rows if (v := _verdict(r, verdicts)) is not None]
    pos = [r.positive for r, v in read if v.fracture]
    neg = [not r.positive for r, v in read if not v.fracture]
    out: dict[str, dict[str, Any]] = {}
    for name, hits in (("sensitivity", pos), ("specificity", neg)):
        f: dict[str, Any] = {"value": sum(hits) / len(hits) if hits else None, "hits": sum(hits), "n": len(hits)}
        if hits:
            f["lower"], f["upper"] = st.wilson(sum(hits), len(hits))
        if name == "sensitivity":
            f["target"] = s.target_sensitivity
            if len(hits) < s.min_positives:
                f["status"] = TOO_FEW
            else:
                low = st.below_target(sum(hits), len(hits), s.target_sensitivity, s.alpha)
                f["status"] = "alarm" if low else "ok"
        out[name] = f
    judged = Counter(v.judgement for _, v in read if v.judgement)
    if judged:
        out["judgements"] = {"value": sum(judged.values()), "by_judgement": dict(sorted(judged.items()))}
    return out


def _message(name: str, f: dict[str, Any]) -> str:
    if name == "model_identity":
        return f"a new model answers: {f['value']}"
    if name in ("score_shift", "spread_shift"):
        return f"{name} PSI {f['value']:.2f} (KS p {f['ks_p']:.1e}), median {f['median']:.3f} vs {f['baseline_median']:.3f}"
    if name == "sensitivity":
        return f"sensitivity {f['value']:.3f} ({f['hits']}/{f['n']}, 95% CI {f['lower']:.3f}-{f['upper']:.3f}) below target {f['target']}"
    return f"{name} {f['value']:.3f} ({f['hits']}/{f['n']}) outside [{f['lower']:.3f}, {f['upper']:.3f}], baseline {f['baseline']:.3f}"


def baseline_summary(baseline: list[Record] | CalibrationBaseline) -> dict[str, Any]:
    bases = from_calibration(baseline) if isinstance(baseline, CalibrationBaseline) else from_records(baseline)
    return describe(bases)
