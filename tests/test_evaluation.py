"""Calibration and evaluation: the threshold rules, the metrics, and the two CLI commands."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import typer
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score
from statsmodels.stats.proportion import proportion_confint
from typer.testing import CliRunner

from fracscan import evaluation as ev
from fracscan import provenance
from fracscan.cli import calibrate as calibrate_module
from fracscan.cli import evaluate as evaluate_module
from fracscan.contract import CONFIG_FILE, ENSEMBLE_MODEL, PARAM_PROVENANCE
from fracscan.export.repository import install_thresholds, parse_config
from fracscan.thresholds import OperatingPoint, Thresholds

# The two commands exactly as cli/app.py registers them (a test-local app keeps these tests
# independent of the other commands' imports).
app = typer.Typer(pretty_exceptions_enable=False)
app.command("calibrate")(calibrate_module.calibrate)
app.command("evaluate")(evaluate_module.evaluate)
runner = CliRunner()


def case(region, label, score, predicted=None, pred_boxes=(), label_boxes=(), source=None):
    return ev.Case(
        source or f"{region}-{score}-{label}",
        region,
        bool(label),
        float(score),
        predicted,
        np.asarray(pred_boxes, dtype=float).reshape(-1, 5),
        np.asarray(label_boxes, dtype=float).reshape(-1, 4),
    )


# --------------------------------------------------------------------------- threshold rule


@pytest.mark.parametrize(
    ("scores", "target", "expected"),
    [
        ([0.9, 0.8, 0.7, 0.6], 0.75, 0.7),  # k = 3
        ([0.9, 0.8, 0.7, 0.6], 0.76, 0.6),  # k = ceil(3.04) = 4
        ([0.9, 0.8, 0.8, 0.8, 0.1], 0.5, 0.8),  # ties: k = 3 lands in the tie, 4/5 >= 0.8
        ([0.9, 0.8, 0.8, 0.8, 0.1], 0.85, 0.1),  # k = 5
        ([0.4] * 7, 0.925, 0.4),  # all positives at one score
        ([0.3, 0.2, 0.9], 1.0, 0.2),  # target 1.0: the lowest positive
        ([0.55], 0.925, 0.55),  # P = 1
        ([0.7, 0.2], 0.925, 0.2),  # P = 2: k = 2
        ([0.7, 0.2], 0.5, 0.7),  # P = 2: k = 1
    ],
)
def test_sensitivity_threshold_hand_cases(scores, target, expected):
    assert ev.sensitivity_threshold(scores, target) == expected


def test_sensitivity_threshold_decimal_target_is_exact():
    # 0.925 * 40 is 37.000000000000007 in binary floating point; the rule must take k = 37.
    scores = np.linspace(0.99, 0.2, 40)
    t = ev.sensitivity_threshold(scores, 0.925)
    assert t == np.sort(scores)[::-1][36]
    assert np.sum(scores >= t) == 37


def test_sensitivity_threshold_is_the_highest_meeting_the_target():
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = int(rng.integers(1, 30))
        scores = np.round(rng.random(p), 1)  # many ties
        target = float(rng.choice([0.5, 0.8, 0.925, 0.95, 1.0]))
        t = ev.sensitivity_threshold(scores, target)
        assert np.mean(scores >= t) >= target
        higher = scores[scores > t]
        for u in higher:  # no candidate value above t meets the target
            assert np.mean(scores >= u) < target


def test_sensitivity_threshold_without_positives_and_bad_target():
    assert ev.sensitivity_threshold([], 0.925) is None
    with pytest.raises(ValueError):
        ev.sensitivity_threshold([0.5], 0.0)
    with pytest.raises(ValueError):
        ev.sensitivity_threshold([0.5], 1.2)


def test_specificity_threshold():
    neg = [0.1, 0.2, 0.3, 0.4]
    t = ev.specificity_threshold(neg, 0.75)
    assert 0.3 < t < 0.3 + 1e-15  # the next float above the 3rd lowest negative
    assert np.mean(np.asarray(neg) < t) == 0.75
    assert np.mean(np.asarray(neg) < 0.3) < 0.75  # nothing lower works
    assert ev.specificity_threshold([0.2, 0.2, 0.2], 0.5) > 0.2  # ties
    assert ev.specificity_threshold([1.0], 0.95) == 1.0  # capped
    assert ev.specificity_threshold([], 0.95) is None


def test_calibrate_regions_fallback_and_warning():
    cases = (
        [case("wrist", 1, s) for s in np.linspace(0.95, 0.5, 20)]
        + [case("wrist", 0, s) for s in np.linspace(0.6, 0.0, 20)]
        + [case("hand", 1, 0.8) for _ in range(12)]  # all positives at one score
        + [case("hand", 0, 0.3) for _ in range(5)]
        + [case("ribs", 0, 0.2) for _ in range(6)]  # no positives at all
        + [case("clavicle", 1, 0.99), case("clavicle", 1, 0.01)]  # too few positives
        + [case("unknown", 1, 0.5)]
    )
    result = ev.calibrate(cases, 0.925, min_positives=10)
    thresholds = result.thresholds
    assert set(thresholds.regions) == {"wrist", "hand"}
    wrist_pos = np.linspace(0.95, 0.5, 20)
    assert thresholds.regions["wrist"].threshold == np.sort(wrist_pos)[::-1][math.ceil(0.925 * 20) - 1]
    assert thresholds.regions["hand"].threshold == 0.8
    pooled = [c.score for c in cases if c.label]
    assert thresholds.fallback.threshold == ev.sensitivity_threshold(pooled, 0.925)
    warning = next(w for w in result.warnings if "fallback threshold" in w)
    assert "ribs (0)" in warning and "clavicle (2)" in warning and "wrist" not in warning
    assert thresholds.provenance["counts"]["ribs"] == {"n": 6, "positives": 0}
    assert thresholds.provenance["fallback_regions"] == ["clavicle", "ribs", "unknown"]
    assert thresholds.regions["wrist"].map_threshold == 0.5  # no box labels: kept
    # The served model reads it as written: fallback for ribs / clavicle.
    loaded = Thresholds.from_json(json.loads(json.dumps(thresholds.to_json())))
    assert loaded == thresholds
    assert loaded.for_region("ribs") == (loaded.fallback, True)
    assert loaded.for_region("hand")[0].threshold == 0.8
    # What the thresholds achieve on the calibration set, per region.
    fits = ev.fit_by_region(cases, thresholds)
    assert fits["wrist"].sensitivity >= 0.925 and not fits["wrist"].fallback
    assert fits["ribs"].fallback and fits["ribs"].sensitivity is None and fits["ribs"].specificity is not None
    assert fits["unknown"].threshold == thresholds.fallback.threshold and fits["unknown"].n == 1


def test_calibrate_definite_threshold():
    cases = [case("wrist", 1, s) for s in np.linspace(0.95, 0.5, 20)] + [
        case("wrist", 0, s) for s in np.linspace(0.7, 0.0, 40)
    ]
    thresholds = ev.calibrate(cases, 0.925, min_positives=10, definite_specificity=0.95).thresholds
    point = thresholds.regions["wrist"]
    neg = np.linspace(0.7, 0.0, 40)
    assert point.definite_threshold == ev.specificity_threshold(neg, 0.95)
    assert point.definite_threshold >= point.threshold
    assert np.mean(neg < point.definite_threshold) >= 0.95
    assert thresholds.fallback.definite_threshold is not None
    # thresholds.json carries it as `definite_threshold`, and Thresholds reads it back.
    raw = thresholds.to_json()
    assert raw["regions"]["wrist"]["definite_threshold"] == point.definite_threshold
    assert Thresholds.from_json(raw).regions["wrist"] == point


def test_map_threshold_rule_and_calibration():
    box = [10, 10, 50, 50]
    near = [12, 12, 52, 52]  # IoU ~0.82 with box
    far = [200, 200, 240, 240]  # IoU 0
    cases = []
    confidences = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    for i, conf in enumerate(confidences):
        cases.append(case("wrist", 1, 0.9, True, [[*near, conf], [*far, 0.99]], [box], source=f"w{i}"))
    cases.append(case("wrist", 1, 0.9, True, [[*far, 0.99]], [box], source="miss"))  # predicted box misses
    cases.append(case("wrist", 1, 0.1, False, [], [box], source="neg"))  # predicted negative: left out
    hits = ev.box_hit_confidences(cases[0])
    assert hits.tolist() == [0.95]
    assert np.isnan(ev.box_hit_confidences(cases[10])).all()
    # 11 evaluable boxes, target 0.8 -> k = ceil(8.8) = 9 -> the 9th largest hit confidence.
    result = ev.calibrate(cases, 0.8, min_positives=5, box_labels=True)
    assert result.thresholds.regions["wrist"].map_threshold == 0.55
    assert result.thresholds.provenance["map_threshold"]["boxes"]["wrist"] == {"boxes": 11, "hit": 10}
    assert any("predicted negative" in w for w in result.warnings)
    # Target out of reach: 11 boxes, only 10 hit, target 1.0 -> keep the current value.
    current = Thresholds.from_json(
        {"regions": {"wrist": {"threshold": 0.5, "map_threshold": 0.42}}, "fallback": {"threshold": 0.5}}
    )
    result = ev.calibrate(cases, 1.0, min_positives=5, box_labels=True, current=current)
    assert result.thresholds.regions["wrist"].map_threshold == 0.42
    assert any("kept at 0.42" in w and "10 of 11" in w for w in result.warnings)
    assert ev.map_threshold_from_hits([], 0.9) is None


def test_iou():
    assert ev.iou(np.array([0, 0, 10, 10.0]), np.array([[0, 0, 10, 10, 1.0]]))[0] == 1.0
    assert ev.iou(np.array([0, 0, 10, 10.0]), np.array([[5, 0, 15, 10, 1.0]]))[0] == pytest.approx(50 / 150)
    assert ev.iou(np.array([0, 0, 10, 10.0]), np.zeros((0, 5))).size == 0


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_and_statsmodels(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.3
    s = np.clip(np.round(0.35 * y + rng.random(n) * 0.7, 2), 0, 1)  # ties on purpose
    d = s >= 0.5
    m = ev.binary_metrics(y, s, d, bootstrap=200, seed=seed)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    tn, fp, fn, tp = confusion_matrix(y, d, labels=[False, True]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert m["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    assert m["ppv"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    assert m["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, d), abs=1e-12)
    assert m["sensitivity_ci"] == pytest.approx(list(proportion_confint(tp, tp + fn, method="wilson")), abs=1e-12)
    assert m["specificity_ci"] == pytest.approx(list(proportion_confint(tn, tn + fp, method="wilson")), abs=1e-12)
    assert m["n"] == n and m["positives"] == int(y.sum())


def test_wilson_edges_match_statsmodels():
    for k, n in [(0, 1), (1, 1), (0, 7), (7, 7), (3, 10), (999, 1000)]:
        assert ev.wilson_interval(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)
    assert ev.wilson_interval(0, 0) is None


def test_roc_curve_matches_auc():
    rng = np.random.default_rng(3)
    y = rng.random(100) < 0.4
    s = np.round(rng.random(100), 1)
    fpr, tpr = ev.roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_is_seeded_and_contains_the_estimate():
    rng = np.random.default_rng(5)
    y = rng.random(400) < 0.25
    s = np.clip(0.3 * y + rng.random(400) * 0.8, 0, 1)
    d = s >= 0.45
    a = ev.binary_metrics(y, s, d, bootstrap=300, seed=7)
    b = ev.binary_metrics(y, s, d, bootstrap=300, seed=7)
    c = ev.binary_metrics(y, s, d, bootstrap=300, seed=8)
    assert a == b
    assert a["auc_ci"] != c["auc_ci"]
    for name in ("auc", "ppv", "npv", "sensitivity", "specificity"):
        lo, hi = a[f"{name}_ci"]
        assert lo <= a[name] <= hi, name
        assert lo < hi
    none = ev.binary_metrics(y, s, d, bootstrap=0)
    assert none["auc_ci"] is None and none["sensitivity_ci"] is not None


def test_undefined_metrics_are_none():
    m = ev.binary_metrics([0, 0, 0], [0.1, 0.6, 0.2], [False, True, False], bootstrap=50)
    assert m["auc"] is None and m["auc_ci"] is None
    assert m["sensitivity"] is None and m["sensitivity_ci"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == 0.0
    assert m["kappa"] == pytest.approx(cohen_kappa_score([0, 0, 0], [0, 1, 0]))
    m = ev.binary_metrics([0, 0], [0.1, 0.2], [False, False], bootstrap=50)
    assert m["ppv"] is None and m["ppv_ci"] is None and m["kappa"] is None


def test_region_ci_does_not_depend_on_other_regions():
    a = [case("wrist", i % 3 == 0, (i * 37 % 100) / 100, (i * 37 % 100) >= 50) for i in range(60)]
    b = [case("hand", i % 2 == 0, (i * 13 % 100) / 100, True) for i in range(30)]
    only = ev.evaluate(a, ev.decisions_for(a, None), bootstrap=100, seed=0)
    both = ev.evaluate(a + b, ev.decisions_for(a + b, None), bootstrap=100, seed=0)
    assert only["regions"]["wrist"] == both["regions"]["wrist"]


# --------------------------------------------------------------------------- inputs


def test_match_by_file_name_and_report(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "source": "scans/a/img1.dcm",
                    "status": "ok",
                    "score": 0.9,
                    "fracture": True,
                    "region": "wrist",
                    "boxes": [],
                },
                {
                    "source": "scans/b/img2.dcm",
                    "status": "ok",
                    "score": 0.1,
                    "fracture": False,
                    "region": "wrist",
                    "boxes": [],
                },
                {"source": "scans/c/img3.dcm", "status": "error", "score": None, "error": "cannot decode"},
                {"source": "x/dup.png", "status": "ok", "score": 0.5, "fracture": True, "region": "hand"},
                {"source": "y/dup.png", "status": "ok", "score": 0.5, "fracture": True, "region": "hand"},
            ]
        )
        + "\n"
    )
    labels = tmp_path / "l.csv"
    labels.write_text("source,fracture,region\nimg1.dcm,1,\nimg2.dcm,0,hand\nimg3.dcm,1,\ndup.png,1,\nimg9.dcm,0,\n")
    matched = ev.match(ev.read_predictions(preds), ev.read_labels(labels)[0])
    assert matched.mode == "file name" and matched.by_name == 3
    assert [c.region for c in matched.cases] == ["wrist", "hand"]
    assert matched.errors == ["scans/c/img3.dcm"]
    assert matched.missing == ["img9.dcm"]
    assert matched.ambiguous == ["dup.png"]
    assert sorted(matched.unlabelled) == ["x/dup.png", "y/dup.png"]
    text = "\n".join(matched.report())
    assert "file name" in text and "img9.dcm" in text and 'status "error"' in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"source": "a", "status": "ok", "score": 0.5}\n{"source": "b", "score": \n', "line 2"),
        ('{"source": "a", "status": "ok", "score": 0.5}\n\n[1, 2]\n', "line 3"),
        ('{"status": "ok", "score": 0.5}\n', "line 1: needs a non-empty string 'source'"),
        ('{"source": "a", "status": "ok", "score": "high"}\n', "line 1"),
        (
            '{"source": "a", "status": "ok", "score": 0.5}\n{"source": "a", "status": "ok", "score": 0.5}\n',
            "already appeared on line 1",
        ),
    ],
)
def test_bad_predictions(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ev.EvaluationError, match=message):
        ev.read_predictions(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("source,label\na,1\n", "needs the column\\(s\\) fracture"),
        ("file,fracture\na,1\n", "needs the column\\(s\\) source"),
        ("source,fracture\na,maybe\n", "line 2: 'fracture' must be 1 or 0"),
        ("source,fracture,x0,y0,x1,y1\na,0,1,1,5,5\n", "line 2: a fracture box on a row with fracture = 0"),
        ("source,fracture\na,1\na,0\n", "line 3"),
        ("source,fracture,x0,y0\na,1,1,1\n", "all of the columns x0,y0,x1,y1"),
        ("", "empty labels file"),
    ],
)
def test_bad_labels(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ev.EvaluationError, match=message):
        ev.read_labels(path)


def test_labels_with_boxes_merge_rows(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("source,fracture,region,x0,y0,x1,y1\na,1,Wrist,1,2,3,4\na,1,,5,6,7,8\nb,0,,,,,\n")
    labels, has_boxes = ev.read_labels(path)
    assert has_boxes
    a = labels[0]
    assert a.region == "wrist" and a.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert labels[1].boxes.shape == (0, 4)


# --------------------------------------------------------------------------- CLI end to end

REGIONS = {"wrist": (60, 25), "hand": (50, 14), "clavicle": (20, 3), "ribs": (12, 0)}  # n, positives


def write_dataset(tmp_path, *, paths=False, boxes=False, seed=0):
    """Synthetic predictions + labels: per region, positives score higher on average."""
    rng = np.random.default_rng(seed)
    pred_rows, label_rows = [], ["source,fracture,region" + (",x0,y0,x1,y1" if boxes else "")]
    for region, (n, pos) in REGIONS.items():
        for i in range(n):
            label = i < pos
            score = float(np.clip(rng.normal(0.7 if label else 0.3, 0.15), 0, 1))
            name = f"{region}_{i:03d}.dcm"
            pred_boxes = []
            if label and boxes:
                conf = float(rng.uniform(0.55, 0.95))
                pred_boxes = [[100 + rng.uniform(-5, 5), 100, 200, 200, conf]]
            pred_rows.append(
                {
                    "source": f"/data/{region}/{name}" if paths else name,
                    "status": "ok",
                    "score": score,
                    "fracture": score >= 0.5,
                    "threshold": 0.5,
                    "region": region,
                    "boxes": pred_boxes,
                    "model": "demo:1",
                    "error": None,
                }
            )
            row = f"{name},{int(label)},{region}"
            if boxes:
                row += ",100,100,200,200" if label else ",,,,"
            label_rows.append(row)
    pred_rows.append(
        {
            "source": "broken.dcm",
            "status": "error",
            "score": None,
            "fracture": None,
            "threshold": None,
            "region": None,
            "boxes": [],
            "error": "cannot decode",
        }
    )
    label_rows.append("broken.dcm,1,wrist")
    label_rows.append("never_scored.dcm,0,wrist")
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in pred_rows))
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(label_rows) + "\n")
    return preds, labels


def test_cli_calibrate_then_evaluate(tmp_path):
    preds, labels = write_dataset(tmp_path)
    out = tmp_path / "thresholds.json"
    result = runner.invoke(app, ["calibrate", str(preds), str(labels), "--sensitivity", "0.925", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "fewer than 10 positives use the fallback" in result.stderr
    assert "clavicle (3)" in result.stderr and "ribs (0)" in result.stderr
    assert "broken.dcm" in result.stderr and "never_scored.dcm" in result.stderr
    raw = json.loads(out.read_text())
    assert set(raw["regions"]) == {"wrist", "hand"}
    assert set(raw["regions"]["wrist"]) == {"threshold", "map_threshold"}
    prov = raw["provenance"]
    assert prov["target_sensitivity"] == 0.925 and prov["min_positives"] == 10
    assert prov["counts"]["wrist"] == {"n": 60, "positives": 25}
    assert prov["predictions"] == "predictions.jsonl" and prov["model"] == "demo:1"
    assert prov["date"]
    Thresholds.load(out)  # the served model can read it

    result = runner.invoke(
        app, ["evaluate", str(preds), str(labels), "--thresholds", str(out), "--format", "json", "--bootstrap", "200"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["operating_point"] == str(out)
    for region in ("wrist", "hand"):  # enough positives: the calibration target is met
        assert report["regions"][region]["sensitivity"] >= 0.925
    assert report["overall"]["n"] == sum(n for n, _ in REGIONS.values())
    keys = {
        "n",
        "positives",
        "auc",
        "auc_ci",
        "sensitivity",
        "sensitivity_ci",
        "specificity",
        "specificity_ci",
        "ppv",
        "ppv_ci",
        "npv",
        "npv_ci",
        "kappa",
    }
    assert keys <= set(report["overall"]) and keys <= set(report["regions"]["ribs"])
    ribs = report["regions"]["ribs"]
    assert (
        ribs["positives"] == 0
        and ribs["auc"] is None
        and ribs["sensitivity"] is None
        and ribs["specificity"] is not None
    )
    assert report["matching"]["excluded_errors"] == 1 and report["matching"]["labels_without_prediction"] == 1


def served_provenance(repo):
    """The provenance the served ensemble config carries (what `health` and every client read)."""
    config = parse_config((repo / ENSEMBLE_MODEL / CONFIG_FILE).read_text())
    return provenance.Provenance.from_json(json.loads(config.parameters[PARAM_PROVENANCE].string_value))


def test_cli_evaluate_table_plot_and_repository(tmp_path, repository):
    preds, labels = write_dataset(tmp_path, paths=True, boxes=True)
    repo = tmp_path / "repo"  # the demo repository's files that installing thresholds reads and writes
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("*.onnx", "*.plan"))
    install_thresholds(repo, Thresholds({}, OperatingPoint(0.5), {"calibrated": False}))
    assert not served_provenance(repo).calibrated
    out = tmp_path / "t.json"
    result = runner.invoke(
        app,
        [
            "calibrate",
            str(preds),
            str(labels),
            "-o",
            str(out),
            "--repository",
            str(repo),
            "--definite-specificity",
            "0.95",
            "--min-positives",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "by file name" in result.stderr
    assert "restart the server" in result.stderr
    raw = json.loads((repo / "thresholds.json").read_text())
    assert raw == json.loads(out.read_text())
    assert "definite_threshold" in raw["regions"]["wrist"] and "definite_threshold" in raw["fallback"]
    assert raw["provenance"]["map_threshold"]["calibrated"] is True
    assert raw["regions"]["wrist"]["map_threshold"] > 0.5  # hit confidences lie in [0.55, 0.95]
    assert Thresholds.load(repo / "thresholds.json").regions["wrist"].threshold == raw["regions"]["wrist"]["threshold"]
    # The repository's provenance follows the installed thresholds: file and served config.
    assert provenance.read(repo).calibrated and served_provenance(repo).calibrated
    # A folder that is no fracscan repository is refused before anything is written.
    plain = tmp_path / "plain"
    plain.mkdir()
    result = runner.invoke(
        app, ["calibrate", str(preds), str(labels), "-o", str(tmp_path / "x.json"), "--repository", str(plain)]
    )
    _assert_clean_exit_2(result, str(plain), "fracscan.toml")
    assert not (tmp_path / "x.json").exists() and not any(plain.iterdir())

    png = tmp_path / "roc.png"
    result = runner.invoke(app, ["evaluate", str(preds), str(labels), "--plot", str(png), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "overall" in result.stdout and "ribs" in result.stdout and "—" in result.stdout
    assert "operating point: predictions" in result.stdout


def test_cli_seeded_json_is_reproducible(tmp_path):
    preds, labels = write_dataset(tmp_path)
    args = ["evaluate", str(preds), str(labels), "--format", "json", "--bootstrap", "100", "--seed", "3"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0 and json.loads(first.stdout) == json.loads(second.stdout)


def _assert_clean_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_cli_errors(tmp_path, command):
    preds, labels = write_dataset(tmp_path)
    missing = tmp_path / "nope.jsonl"
    _assert_clean_exit_2(runner.invoke(app, [command, str(missing), str(labels)]), str(missing), "not found")
    _assert_clean_exit_2(runner.invoke(app, [command, str(preds), str(tmp_path / "nope.csv")]), "nope.csv", "not found")

    bad = tmp_path / "bad.jsonl"
    lines = preds.read_text().splitlines()
    lines[4] = lines[4][:-5]
    bad.write_text("\n".join(lines) + "\n")
    _assert_clean_exit_2(runner.invoke(app, [command, str(bad), str(labels)]), str(bad), "line 5")

    no_col = tmp_path / "nocol.csv"
    no_col.write_text("source,label\nwrist_000.dcm,1\n")
    _assert_clean_exit_2(runner.invoke(app, [command, str(preds), str(no_col)]), str(no_col), "fracture")

    other = tmp_path / "other.csv"
    other.write_text("source,fracture\nsomething_else.dcm,1\n")
    _assert_clean_exit_2(runner.invoke(app, [command, str(preds), str(other)]), "no labelled radiograph", "other.csv")


def test_cli_bad_options(tmp_path):
    preds, labels = write_dataset(tmp_path)
    _assert_clean_exit_2(
        runner.invoke(app, ["calibrate", str(preds), str(labels), "--sensitivity", "1.5"]), "--sensitivity"
    )
    bad_thr = tmp_path / "thr.json"
    bad_thr.write_text("{}")
    _assert_clean_exit_2(
        runner.invoke(app, ["evaluate", str(preds), str(labels), "--thresholds", str(bad_thr)]), str(bad_thr)
    )
    result = runner.invoke(app, ["evaluate", str(preds), str(labels), "--format", "csv"])
    _assert_clean_exit_2(result, "--format", "csv")


def test_a_raised_map_threshold_whose_shrunken_boxes_miss_is_undone():
    from fracscan.evaluation import Case, recheck_map_thresholds

    truth = np.array([[100.0, 100.0, 140.0, 130.0]])
    shrunk = np.array([[115.0, 110.0, 125.0, 118.0, 0.8]])  # IoU 0.07 with the labelled box
    close = np.array([[102.0, 101.0, 138.0, 131.0, 0.9]])  # IoU 0.84

    def cases(region, boxes):
        return [Case(f"{region}{i}", region, True, 0.9, True, b, truth) for i, b in enumerate(boxes)]

    calibrated = Thresholds(
        regions={
            "humerus": OperatingPoint(0.9, 0.73),  # raised: its boxes now miss
            "femur": OperatingPoint(0.9, 0.6),  # raised: still hits 10 of 10
            "ankle": OperatingPoint(0.2, 0.5),  # not raised: not checked
        },
        fallback=OperatingPoint(0.5, 0.5),
        provenance={"map_threshold": {"calibrated": True}},
    )
    checked = (
        cases("humerus", [shrunk] * 8 + [close] * 2) + cases("femur", [close] * 10) + cases("ankle", [shrunk] * 10)
    )
    thresholds = recheck_map_thresholds(calibrated, checked, 0.925, previous=0.5)
    result = thresholds.provenance["map_threshold"]["checked_on_tuning_split"]
    assert thresholds.regions["humerus"].map_threshold == 0.5 and result["humerus"] == {
        "map_threshold": 0.73,
        "boxes": 10,
        "hit": 2,
        "kept": False,
    }
    assert thresholds.regions["femur"].map_threshold == 0.6 and result["femur"]["kept"]
    assert "ankle" not in result and thresholds.provenance["map_threshold"]["calibrated"] is True
    assert calibrated.regions["humerus"].map_threshold == 0.73 and calibrated.provenance == {
        "map_threshold": {"calibrated": True}
    }
