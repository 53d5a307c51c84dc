"""A shortened demo rebuild (the full one is `make demo-rebuild`) and the committed demo's answers."""

from __future__ import annotations

import csv
import json

import numpy as np

from conftest import EXAMPLES, example_files
from fracscan.pipeline import EnsembleRepository, ReferenceRunner


def test_shortened_demo_build_end_to_end(tmp_path):
    from fracscan.export.demo import build_demo
    from fracscan.spec import builtin_spec_path

    report = build_demo(
        builtin_spec_path("demo"), tmp_path / "repo", tmp_path / "report", tmp_path / "examples",
        n_train=64, n_tune=48, n_test=32, epochs=1, members=2,
    )
    repo = EnsembleRepository.open(tmp_path / "repo")
    assert len(repo.spec.members) == 2 and repo.thresholds.provenance["target_sensitivity"] == 0.925
    assert set(report["test"]["overall"]) >= {"n", "auc", "sensitivity", "specificity", "ppv", "npv"}
    assert report["test"]["overall"]["n"] == 32
    assert (tmp_path / "report" / "roc_test.png").stat().st_size > 10_000
    labels = list(csv.DictReader(open(tmp_path / "examples" / "labels.csv")))
    assert len(labels) >= 12 and {r["fracture"] for r in labels} == {"0", "1"}
    result = ReferenceRunner(tmp_path / "repo").predict((tmp_path / "examples" / labels[0]["source"]).read_bytes())
    assert 0 <= result.score <= 1 and len(result.member_scores) == 2


def test_committed_examples_are_labelled_and_scored(repository):
    labels = {r["source"]: r for r in csv.DictReader(open(EXAMPLES / "labels.csv"))}
    files = example_files()
    assert len(files) >= 12 and {p.name for p in files} <= set(labels)
    runner = ReferenceRunner(repository)
    scores = {p.name: runner.predict(p.read_bytes()).score for p in files}
    positives = [s for name, s in scores.items() if labels[name]["fracture"] == "1"]
    negatives = [s for name, s in scores.items() if labels[name]["fracture"] == "0"]
    assert positives and negatives and np.all(np.isfinite(list(scores.values())))


def test_demo_report_is_reproduced_by_fracscan_evaluate(repository):
    """The README's demo numbers: `fracscan evaluate` on the committed test-split predictions."""
    from fracscan.evaluation import decisions_for, evaluate, match, read_labels, read_predictions
    from fracscan.postprocess import Thresholds

    demo = EXAMPLES.parent / "demo"
    report = json.loads((demo / "report.json").read_text())
    assert report["notice"].startswith("DEMO ONLY")
    matched = match(read_predictions(demo / "test_predictions.jsonl"), read_labels(demo / "test_labels.csv")[0])
    thresholds = Thresholds.load(repository / "thresholds.json")
    metrics = evaluate(matched.cases, decisions_for(matched.cases, thresholds), bootstrap=1000, seed=0)
    for key in ("n", "positives", "auc", "sensitivity", "specificity", "ppv", "npv"):
        assert metrics["overall"][key] == report["test"]["overall"][key], key
