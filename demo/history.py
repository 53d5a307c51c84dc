"""A synthetic monitoring history from the demo's test-split predictions (DEMO ONLY).

    python -m fracscan.demo.history history.jsonl --verdicts verdicts.csv --weeks 8 \\
        --event 7=new_scanner --event 8=model_replaced [--scored real_rows.jsonl]

Each week draws `per_week` rows (with replacement) from `demo/test_predictions.jsonl`, stamps them with a
time in that week, the stable site's acquisition facts and the demo model's identity. An event changes one
week: `new_scanner` (a third of the images from an unseen detector, whose higher contrast lifts the scores),
`model_replaced` (another model identity answers), `failures` (a fifth of the requests fail), `score_shift`
(every score lifted), `missed_fractures` (the fractured images score low). `--scored` adds rows that were
really scored (e.g. the examples with their contrast and header changed) to the first new_scanner week.
The verdicts are the demo's labels of the drawn images (keyed by source).
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DEMO = Path(__file__).resolve().parent
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: week 1 is ISO week 2026-W02
EVENTS = ("new_scanner", "model_replaced", "failures", "score_shift", "missed_fractures")
STABLE_SCANNERS = (
    {"manufacturer": "Siemens", "model_name": "Ysio Max", "photometric": "MONOCHROME2", "rows": 2832, "columns": 2832},
    {"manufacturer": "Carestream", "model_name": "DRX-Evolution", "photometric": "MONOCHROME2", "rows": 3072, "columns": 2560},
)  # fmt: skip
NEW_SCANNER = {
    "manufacturer": "Acme Imaging",
    "model_name": "NovaDR 2",
    "photometric": "MONOCHROME1",
    "rows": 2048,
    "columns": 1536,
}
IDENTITY = {
    "model_spec": "demo",
    "model_members": "3f2a9c1d0b7e6a54",
    "model_thresholds": "9e8d7c6b5a493827",
    "model_flags": ["demo"],
}
REPLACED = {**IDENTITY, "model_members": "c0ffee0ddba11a57"}


def _acquisition(scanner: dict[str, Any], region: str) -> dict[str, Any]:
    return {
        "modality": "DX",
        **scanner,
        "bits_stored": 12,
        "pixel_spacing": [0.139, 0.139],
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "view_position": "AP",
        "body_part": region.upper(),
    }


def _lift(score: float, logit: float) -> float:
    z = np.log(max(score, 1e-6) / max(1 - score, 1e-6)) + logit
    return float(1 / (1 + np.exp(-z)))


def history(
    weeks: int = 8, per_week: int = 200, events: dict[int, str] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The rows of `weeks` weeks; `events` maps a week (1-based) to one of EVENTS."""
    base = [json.loads(line) for line in (DEMO / "test_predictions.jsonl").read_text().splitlines() if line]
    labels = {
        r["source"]: r["fracture"] == "1" for r in csv.DictReader((DEMO / "test_labels.csv").read_text().splitlines())
    }
    rng = np.random.default_rng(seed)
    events = events or {}
    rows = []
    for week in range(1, weeks + 1):
        event = events.get(week)
        for i in range(per_week):
            row = dict(base[int(rng.integers(len(base)))])
            when = START + timedelta(weeks=week - 1, seconds=int(rng.integers(7 * 86400)))
            scanner = STABLE_SCANNERS[i % 2]
            identity = REPLACED if event == "model_replaced" else IDENTITY
            if event == "new_scanner" and i % 3 == 0:
                scanner, row["score"] = NEW_SCANNER, _lift(row["score"], 2.0)
            elif event == "score_shift":
                row["score"] = _lift(row["score"], 1.5)
            elif event == "missed_fractures" and labels[row["source"]]:
                row["score"] = row["score"] * 0.2
            if event == "failures" and i % 5 == 0:
                rows.append(_failure(row["source"], when))
                continue
            positive = row["score"] >= row["threshold"]
            row |= {"fracture": positive, "level": "suspicious" if positive else "negative", "fallback": False}
            row |= {"member_spread": float(abs(rng.normal(0.05, 0.02)))}
            row |= {"scored_at": _stamp(when), "acquisition": _acquisition(scanner, row["region"]), **identity}
            rows.append(row)
    return rows


def _failure(source: str, when: datetime) -> dict[str, Any]:
    return {"source": source, "status": "error", "score": None, "region": None, "scored_at": _stamp(when),
            "acquisition": None, "error_kind": "server", "error": "server error 500: model failed"}  # fmt: skip


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def add_scored(
    rows: list[dict[str, Any]], scored: list[dict[str, Any]], week: int, seed: int = 1
) -> list[dict[str, Any]]:
    """Really scored rows, re-stamped into `week` (their own acquisition facts and identity kept)."""
    rng = np.random.default_rng(seed)
    for row in scored:
        row = dict(row)
        row["scored_at"] = _stamp(START + timedelta(weeks=week - 1, seconds=int(rng.integers(7 * 86400))))
        rows.append(row)
    return rows


def write_verdicts(path: Path) -> None:
    """The demo's labels as radiologists' verdicts (source, fracture)."""
    with open(DEMO / "test_labels.csv") as f, open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["source", "fracture"])
        for r in csv.DictReader(f):
            writer.writerow([r["source"], r["fracture"]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--per-week", type=int, default=200)
    parser.add_argument("--event", action="append", default=[], help="WEEK=EVENT, EVENT one of " + ", ".join(EVENTS))
    parser.add_argument("--scored", type=Path, help="really scored rows (JSONL) to add to the new_scanner week")
    parser.add_argument("--verdicts", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    events = {}
    for item in args.event:
        week, _, event = item.partition("=")
        if event not in EVENTS or not week.isdigit():
            parser.error(f"--event {item}: expected WEEK=EVENT with EVENT one of {', '.join(EVENTS)}")
        events[int(week)] = event
    rows = history(args.weeks, args.per_week, events, args.seed)
    if args.scored:
        week = next((w for w, e in sorted(events.items()) if e == "new_scanner"), args.weeks)
        scored = [json.loads(line) for line in args.scored.read_text().splitlines() if line.strip()]
        rows = add_scored(rows, scored, week)
    args.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.verdicts:
        write_verdicts(args.verdicts)
    print(f"wrote {len(rows)} rows over {args.weeks} weeks to {args.output}")


if __name__ == "__main__":
    main()
