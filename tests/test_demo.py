"""A shortened demo rebuild (the full one is `make demo-rebuild`) and the committed demo's answers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, example_files

from fracscan.pipeline import EnsembleRepository, ReferenceRunner


def test_shortened_demo_build_end_to_end(tmp_path):
    from fracscan.demo.build import build_demo
    from fracscan.spec import builtin_spec_path

    report = build_demo(
        builtin_spec_path("demo"),
        tmp_path / "repo",
        tmp_path / "report",
        tmp_path / "examples",
        n_train=64,
        n_tune=48,
        n_test=32,
        epochs=1,
        members=2,
        save_weights=tmp_path / "weights.pt",
    )
    repo = EnsembleRepository.open(tmp_path / "repo")
    assert len(repo.spec.members) == 2 and repo.thresholds.provenance["target_sensitivity"] == 0.925
    assert set(report["test"]["overall"]) >= {"n", "auc", "sensitivity", "specificity", "ppv", "npv"}
    assert report["test"]["overall"]["n"] == 32
    assert [m["trained_on"] for m in report["members"]] == ["cpu", "cpu"] and report["weights_from"] is None
    assert (tmp_path / "report" / "roc_test.png").stat().st_size > 10_000
    labels = list(csv.DictReader((tmp_path / "examples" / "labels.csv").read_text().splitlines()))
    assert len(labels) >= 12 and {r["fracture"] for r in labels} == {"0", "1"}
    result = ReferenceRunner(tmp_path / "repo").predict((tmp_path / "examples" / labels[0]["source"]).read_bytes())
    assert 0 <= result.score <= 1 and len(result.member_scores) == 2

    # Finishing from the saved weights (how a GPU-trained build is finished on another machine)
    # gives the same thresholds and test predictions as the build that trained them.
    again = build_demo(
        builtin_spec_path("demo"),
        tmp_path / "repo2",
        tmp_path / "report2",
        None,
        n_train=64,
        n_tune=48,
        n_test=32,
        epochs=1,
        members=2,
        from_weights=tmp_path / "weights.pt",
    )
    assert again["test"] == report["test"] and again["weights_from"] == "weights.pt"
    first, second = (json.loads((tmp_path / r / "thresholds.json").read_text()) for r in ("repo", "repo2"))
    first["provenance"].pop("date"), second["provenance"].pop("date")
    assert first == second
    assert (tmp_path / "report2" / "test_predictions.jsonl").read_text() == (
        tmp_path / "report" / "test_predictions.jsonl"
    ).read_text()
    with pytest.raises(SystemExit, match=r"weights.pt: no weights for drn_d_38_both_map"):
        build_demo(
            builtin_spec_path("demo"),
            tmp_path / "repo3",
            tmp_path / "report3",
            None,
            n_train=64,
            n_tune=8,
            n_test=8,
            epochs=1,
            members=3,
            from_weights=tmp_path / "weights.pt",
        )


def test_sampling_is_balanced_over_region_and_label_with_the_hard_regions_weighted_up():
    from fracscan.demo import synthetic
    from fracscan.demo.build import HARD_REGIONS, sampling_weights

    regions = list(synthetic.REGIONS)
    ankle, ribs = 2 * regions.index("ankle"), 2 * regions.index("ribs")
    groups = np.array([ankle] * 6 + [ankle + 1] * 2 + [ribs] * 4 + [ribs + 1] * 4)  # unequal counts
    p = sampling_weights(groups)
    assert p.sum() == pytest.approx(1.0)
    per_group = {g: p[groups == g].sum() for g in np.unique(groups)}
    assert per_group[ankle] == pytest.approx(per_group[ankle + 1])  # balanced over label
    assert per_group[ribs] == pytest.approx(HARD_REGIONS["ribs"] * per_group[ankle])  # ribs drawn 2.5x
    assert HARD_REGIONS["ribs"] > 1 and "ankle" not in HARD_REGIONS


def test_map_target_is_the_box_coverage_of_each_cell():
    from fracscan.demo.build import coverage_target

    target = coverage_target((44.0, 40.0, 52.0, 44.0), 128)  # x 44..52 straddles cells 5|6; y 40..44 is half of row 5
    assert target.shape == (16, 16) and target.max() == 1.0
    assert target[5, 5] == target[5, 6] == 1.0 and np.count_nonzero(target) == 2
    uneven = coverage_target((42.0, 40.0, 50.0, 48.0), 128)  # 6/8 of cell 5, 2/8 of cell 6
    assert uneven[5, 5] == 1.0 and uneven[5, 6] == pytest.approx(1 / 3)


def test_every_member_trains_with_a_map_head_and_score_only_members_drop_it():
    from fracscan.demo.build import make_split, train_member
    from fracscan.spec import builtin_spec_path, load_spec

    spec = load_spec(builtin_spec_path("demo"))
    split = make_split("train", 8, spec, workers=1, paired=True)
    # paired: the same synthetic radiograph with and without its fracture
    assert [c.seed for c in split.cases[:2]] == [split.cases[0].seed] * 2
    assert [c.fracture for c in split.cases[:2]] == [True, False] and split.maps[1].sum() == 0
    score_only = next(m for m in spec.members if not m.map)
    model, history = train_member(score_only, split, split, seed=0, epochs=1, batch=4)
    assert model.map_head is None and set(model(split.pixels[:2].float())) == {"score"} and len(history) == 1


def test_the_core_the_client_and_the_cli_import_nothing_of_the_demo():
    """The demo wing is a leaf: finding its spec imports its empty package and nothing else of it."""
    code = (
        "import sys, fracscan.pipeline, fracscan.server, fracscan.client, fracscan.cli.app\n"
        "from fracscan.spec import builtin_spec_path\n"
        "assert builtin_spec_path('demo').is_file()\n"
        "print(sorted(m for m in sys.modules if m.startswith('fracscan.demo')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['fracscan.demo']"]


def test_parity_inputs_are_demo_radiographs_through_the_core_preprocessing():
    from fracscan.demo.inputs import synthetic_radiographs
    from fracscan.preprocess import local_contrast_normalize
    from fracscan.spec import PreprocessSpec

    x = synthetic_radiographs(3, 64, seed=5)
    assert x.shape == (3, 2, 64, 64) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(x, synthetic_radiographs(3, 64, seed=5))
    assert not np.array_equal(x, synthetic_radiographs(3, 64, seed=6))
    x[0] = 0  # callers get a copy: the cached frames stay intact
    assert not np.array_equal(x, synthetic_radiographs(3, 64, seed=5))
    # one LCN: channel 1 is the core's LCN of channel 0, at the shipped specs' sigma of S / 64
    for plain, lcn in synthetic_radiographs(2, 128, seed=0):
        assert plain.std() > 0.1 and np.abs(lcn).max() > 0.5
        np.testing.assert_array_equal(lcn, local_contrast_normalize(plain, PreprocessSpec(size=128, lcn_sigma=2.0)))


def separates(labels: list[int], scores: list[float]) -> bool:
    """Whether the scores rank fractures above normals (scikit-learn's AUC >= 0.8)."""
    from sklearn.metrics import roc_auc_score

    return len(set(labels)) == 2 and roc_auc_score(labels, scores) >= 0.8


def test_the_separation_check_fails_a_constant_or_inverted_model():
    labels = [1, 1, 1, 0, 0, 0]
    assert separates(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert not separates(labels, [0.5] * 6)  # a constant model
    assert not separates(labels, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])  # an inverted one


def test_committed_examples_are_labelled_and_scored(repository):
    labels = {r["source"]: r for r in csv.DictReader((EXAMPLES / "labels.csv").read_text().splitlines())}
    files = example_files()
    assert len(files) >= 12 and {p.name for p in files} <= set(labels)
    runner = ReferenceRunner(repository)
    scores = {p.name: runner.predict(p.read_bytes()).score for p in files}
    assert np.all(np.isfinite(list(scores.values())))
    names = sorted(scores)
    assert separates([int(labels[n]["fracture"]) for n in names], [scores[n] for n in names])


def test_demo_report_is_reproduced_from_the_committed_predictions(repository):
    """demo/README.md's numbers, recomputed by other means than the code that wrote report.json:
    scikit-learn's AUC, and counts of the thresholded predictions against the labels."""
    from sklearn.metrics import roc_auc_score

    from fracscan.thresholds import Thresholds

    demo = EXAMPLES.parent / "demo"
    report = json.loads((demo / "report.json").read_text())
    assert report["notice"].startswith("DEMO ONLY")
    labels: dict[str, dict[str, str]] = {}
    for r in csv.DictReader((demo / "test_labels.csv").read_text().splitlines()):
        labels.setdefault(r["source"], r)  # a source's first row (one box a row)
    rows = [json.loads(line) for line in (demo / "test_predictions.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["source"] in labels and r["status"] == "ok"]
    thresholds = Thresholds.load(repository / "thresholds.json")
    y = np.array([labels[r["source"]]["fracture"] == "1" for r in rows])
    region = [labels[r["source"]]["region"] or r["region"] for r in rows]
    decided = np.array([r["score"] >= thresholds.for_region(g)[0].threshold for r, g in zip(rows, region, strict=True)])
    overall = report["test"]["overall"]
    assert overall["n"] == len(rows) and overall["positives"] == int(y.sum())
    assert overall["auc"] == pytest.approx(roc_auc_score(y, [r["score"] for r in rows]), abs=1e-9)
    assert overall["sensitivity"] == pytest.approx((decided & y).sum() / y.sum(), abs=1e-9)
    assert overall["specificity"] == pytest.approx((~decided & ~y).sum() / (~y).sum(), abs=1e-9)
    assert overall["ppv"] == pytest.approx((decided & y).sum() / decided.sum(), abs=1e-9)
    assert overall["npv"] == pytest.approx((~decided & ~y).sum() / (~decided).sum(), abs=1e-9)
    # demo/README.md's localisation number: each fracture's top box against its labelled box, IoU >= 0.3, by hand
    hits = []
    for r in rows:
        label = labels[r["source"]]
        if label["fracture"] == "1":
            box = [float(label[k]) for k in ("x0", "y0", "x1", "y1")]
            hits.append(bool(r["boxes"]) and _iou(box, r["boxes"][0][:4]) >= 0.3)
    assert len(hits) == report["fractured_test_cases"]
    assert np.mean(hits) == pytest.approx(report["top_box_iou_0.3_rate"], abs=1e-12)


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union
