"""Does the committed demo ensemble still give its recorded answers on the held-out test split?

    .venv/bin/python benchmarks/check_demo_parity.py      # ~2 min on 2 cores

The demo build regenerates the test split deterministically (`fracscan.demo.build.make_split`)
and `predictions` scores it through `ReferenceRunner` (today's pre-processing); the answers are
compared with `demo/test_predictions.jsonl`, written when the demo was built. Prints the largest
score difference and the number of flipped decisions (thresholds: model_repository/thresholds.json),
and exits 1 if a score moved by more than 1e-3 or a decision flipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fracscan.demo.build import make_split, predictions
from fracscan.pipeline import ReferenceRunner
from fracscan.server import DEMO_REPOSITORY

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "demo" / "test_predictions.jsonl"
TOLERANCE = 1e-3


def main() -> int:
    recorded = [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]
    runner = ReferenceRunner(DEMO_REPOSITORY)
    split = make_split("test", len(recorded), runner.repo.spec)
    rows = {r["source"]: r for r in predictions(runner, split, "test")}
    diffs = [abs(rows[r["source"]]["score"] - r["score"]) for r in recorded]
    flipped = sum(rows[r["source"]]["fracture"] != r["fracture"] for r in recorded)
    worst = max(diffs)
    print(
        f"{len(recorded)} test cases: max |score - recorded| = {worst:.2e}, mean {sum(diffs) / len(diffs):.2e}, "
        f"scores off by > {TOLERANCE:g}: {sum(d > TOLERANCE for d in diffs)}, flipped decisions: {flipped}"
    )
    return 0 if worst <= TOLERANCE and flipped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
