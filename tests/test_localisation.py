"""`fracscan evaluate` reports where the boxes land when the labels have boxes (top box IoU >= 0.3, box sensitivity)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from fracscan import evaluation as ev


def _prediction(source: str, score: float, boxes: list[list[float]]) -> str:
    row = {
        "source": source,
        "status": "ok",
        "score": score,
        "fracture": score >= 0.5,
        "threshold": 0.5,
        "region": "wrist",
        "boxes": boxes,
        "error": None,
    }
    return json.dumps(row) + "\n"


@pytest.fixture
def labelled(tmp_path):
    """Four fractured radiographs with five labelled boxes, one without boxes, two negatives."""
    predictions = [
        _prediction("hit.png", 0.9, [[10, 10, 50, 50, 0.9]]),  # top box on the box
        _prediction("second.png", 0.8, [[200, 200, 240, 240, 0.9], [12, 12, 52, 52, 0.7]]),  # only the 2nd hits
        _prediction("missed.png", 0.2, []),  # called negative: no boxes
        _prediction("two.png", 0.9, [[100, 100, 140, 140, 0.8]]),  # hits one of its two boxes
        _prediction("nobox.png", 0.9, [[0, 0, 5, 5, 0.9]]),  # fractured, but the label has no box
        _prediction("neg1.png", 0.1, []),
        _prediction("neg2.png", 0.7, [[0, 0, 40, 40, 0.6]]),
    ]
    labels = [
        "source,fracture,region,x0,y0,x1,y1",
        "hit.png,1,wrist,12,12,52,52",
        "second.png,1,wrist,10,10,50,50",
        "missed.png,1,wrist,10,10,50,50",
        "two.png,1,wrist,100,100,140,140",
        "two.png,1,wrist,300,300,340,340",
        "nobox.png,1,wrist,,,,",
        "neg1.png,0,wrist,,,,",
        "neg2.png,0,wrist,,,,",
    ]
    (tmp_path / "p.jsonl").write_text("".join(predictions))
    (tmp_path / "l.csv").write_text("\n".join(labels) + "\n")
    return tmp_path / "p.jsonl", tmp_path / "l.csv"


def test_localisation_counts_top_boxes_and_labelled_boxes(labelled):
    predictions, labels = labelled
    cases = ev.match(ev.read_predictions(predictions), ev.read_labels(labels)[0]).cases
    loc = ev.localisation(cases)
    assert loc["radiographs"] == 4 and loc["top_box_hits"] == 2 and loc["top_box_rate"] == 0.5
    assert loc["boxes"] == 5 and loc["boxes_hit"] == 3 and loc["box_sensitivity"] == pytest.approx(0.6)
    lo, hi = loc["top_box_rate_ci"]
    assert lo < 0.5 < hi
    assert ev.localisation([c for c in cases if not len(c.label_boxes)]) is None


def test_fracscan_evaluate_reports_localisation_only_with_box_labels(labelled, tmp_path):
    predictions, labels = labelled
    cmd = [sys.executable, "-m", "fracscan.cli", "evaluate", str(predictions), str(labels), "--bootstrap", "0"]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "top box on a labelled box in 2 of 4 fractured radiographs with boxes, 0.500 (" in text
    assert "box sensitivity 3 of 5 labelled boxes hit, 0.600 (" in text
    report = json.loads(subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True).stdout)
    assert report["localisation"]["top_box_rate"] == 0.5 and report["localisation"]["iou"] == ev.IOU_HIT

    no_boxes = tmp_path / "plain.csv"
    no_boxes.write_text("source,fracture\nhit.png,1\nneg1.png,0\n")
    plain = json.loads(
        subprocess.run(
            [*cmd[:4], str(predictions), str(no_boxes), "--bootstrap", "0", "--format", "json"],
            capture_output=True,
            text=True,
        ).stdout
    )
    assert "localisation" not in plain


def test_the_demo_reports_top_box_rate_is_the_evaluation_one():
    """demo/build.py's top-box figure and `fracscan evaluate`'s come from one function."""
    demo = ROOT / "demo"
    report = json.loads((demo / "report.json").read_text())
    cases = ev.match(
        ev.read_predictions(demo / "test_predictions.jsonl"), ev.read_labels(demo / "test_labels.csv")[0]
    ).cases
    loc = ev.localisation(cases)
    assert loc["top_box_rate"] == report["top_box_iou_0.3_rate"]
    assert loc["radiographs"] == report["fractured_test_cases"]
    assert ev.top_box_hit(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.8]]))
    assert not ev.top_box_hit(np.array([[0, 0, 10, 10]]), np.array([[50, 50, 60, 60, 0.9], [0, 0, 10, 10, 0.8]]))
