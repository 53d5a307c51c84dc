"""Study-level answers: the aggregation rules, study thresholds, the served `fracscan_study` model, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import synthetic_png

from fracscan.study import StudyError, aggregate, decide_study, study_region
from fracscan.thresholds import OperatingPoint, StudyThresholds, Thresholds, ThresholdsError

IMAGE_POINTS = Thresholds({"wrist": OperatingPoint(0.4, 0.5, 0.8)}, OperatingPoint(0.5, 0.5))
STUDY_POINTS = StudyThresholds("noisy_or", {"wrist": OperatingPoint(0.7, 0.5, 0.9)}, OperatingPoint(0.6))


def test_the_three_rules():
    scores = [0.2, 0.5, 0.1]
    assert aggregate(scores) == aggregate(scores, "max") == 0.5
    assert aggregate(scores, "mean") == pytest.approx(0.8 / 3)
    assert aggregate(scores, "noisy_or") == pytest.approx(1 - 0.8 * 0.5 * 0.9)
    assert aggregate([0.3], "noisy_or") == pytest.approx(0.3)
    with pytest.raises(StudyError):
        aggregate([], "max")
    with pytest.raises(StudyError):
        aggregate(scores, "median")


def test_study_region_is_the_users_else_the_majority_with_a_deterministic_tie():
    assert study_region("hip", ["wrist", "wrist"]) == ("hip", (0, 1))
    assert study_region(None, ["hand", "wrist", "wrist"]) == ("wrist", (0,))
    assert study_region(None, ["hand", "wrist"]) == ("hand", (1,))  # tie: the earliest view's region
    assert study_region(None, ["wrist", "hand"]) == ("wrist", (1,))
    assert study_region(None, ["unknown", "wrist"]) == ("wrist", (0,))  # unknown views do not vote
    assert study_region(None, ["unknown", "unknown"]) == ("unknown", ())


def test_without_study_thresholds_the_image_ones_apply_with_max():
    d = decide_study([0.3, 0.85], ["wrist", "wrist"], IMAGE_POINTS)
    assert (d.rule, d.calibrated, d.score, d.threshold, d.level, d.fracture) == (
        "max",
        False,
        0.85,
        0.4,
        "definite",
        True,
    )
    assert d.views_used == 2 and d.disagreeing == () and not d.fallback
    d = decide_study([0.45], ["knee"], IMAGE_POINTS)
    assert d.fallback and d.threshold == 0.5 and d.level == "negative" and d.definite_threshold is None


def test_study_thresholds_and_their_rule_apply():
    thresholds = Thresholds(IMAGE_POINTS.regions, IMAGE_POINTS.fallback, {}, STUDY_POINTS)
    d = decide_study([0.5, 0.5], ["wrist", "hand"], thresholds, user_region=None)
    assert d.rule == "noisy_or" and d.calibrated and d.score == pytest.approx(0.75)
    assert d.region == "wrist" and d.disagreeing == (1,) and d.threshold == 0.7 and d.level == "suspicious"
    d = decide_study([0.1], ["hip"], thresholds)
    assert d.fallback and d.threshold == 0.6 and not d.fracture


def test_study_section_round_trips_and_is_checked(tmp_path):
    path = tmp_path / "thresholds.json"
    thresholds = Thresholds(IMAGE_POINTS.regions, IMAGE_POINTS.fallback, {"x": 1}, STUDY_POINTS)
    thresholds.save(path)
    assert Thresholds.load(path) == thresholds
    IMAGE_POINTS.save(path)
    assert "study" not in json.loads(path.read_text()) and Thresholds.load(path).study is None
    raw = {**thresholds.to_json(), "study": {"rule": "median", "fallback": {"threshold": 0.5}}}
    with pytest.raises(ThresholdsError, match="rule"):
        Thresholds.from_json(raw)
    raw["study"] = {"rule": "max", "fallback": {"threshold": 1.5}}
    with pytest.raises(ThresholdsError, match="study fallback"):
        Thresholds.from_json(raw)


def _study_infer(server, views: list[bytes], region: str | None = None) -> dict:
    from fracscan import contract

    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    inputs = [httpclient.InferInput("IMAGE", [len(views)], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(views, dtype=np.object_))
    if region is not None:
        inputs.append(httpclient.InferInput("REGION", [1], "BYTES"))
        inputs[1].set_data_from_numpy(np.array([region.encode()], dtype=np.object_))
    result = client.infer("fracscan_study", inputs)
    return {name: result.as_numpy(name) for name in contract.STUDY_OUTPUT_NAMES}


def _single(server, data: bytes) -> dict:
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    inputs = [httpclient.InferInput("IMAGE", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer("fracscan", inputs)
    return {n: result.as_numpy(n) for n in ("SCORE", "LEVEL", "REGION_USED", "BOXES")}


def test_three_views_answer_as_three_single_calls_aggregated(server, repository):
    from fracscan.study import aggregate as by_rule

    views = [synthetic_png(1), synthetic_png(2), synthetic_png(5)]
    study = _study_infer(server, views)
    singles = [_single(server, v) for v in views]
    scores = [float(s["SCORE"][0, 0]) for s in singles]
    assert np.allclose(study["VIEW_SCORES"], scores, atol=1e-6)
    assert [x.decode() for x in study["VIEW_LEVELS"]] == [s["LEVEL"][0, 0].decode() for s in singles]
    assert [x.decode() for x in study["VIEW_REGIONS"]] == [s["REGION_USED"][0, 0].decode() for s in singles]
    assert [x.decode() for x in study["VIEW_ERRORS"]] == ["", "", ""]
    thresholds = Thresholds.load(repository / "thresholds.json")
    rule = study["STUDY_RULE"][0].decode()
    assert rule == (thresholds.study.rule if thresholds.study else "max")
    assert bool(study["STUDY_CALIBRATED"][0]) == (thresholds.study is not None)
    assert float(study["STUDY_SCORE"][0]) == pytest.approx(by_rule(scores, rule), abs=1e-6)
    regions = [s["REGION_USED"][0, 0].decode() for s in singles]
    expected = decide_study(scores, regions, thresholds)
    assert study["REGION_USED"][0].decode() == expected.region
    assert bool(study["STUDY_FRACTURE"][0]) == expected.fracture
    assert study["STUDY_LEVEL"][0].decode() == expected.level
    assert float(study["STUDY_THRESHOLD"][0]) == pytest.approx(expected.threshold)
    assert int(study["STUDY_VIEWS_USED"][0]) == 3
    boxes = study["VIEW_BOXES"]
    for i, single in enumerate(singles):
        own = single["BOXES"][0]
        own = own[own[:, 4] >= 0]
        assert np.allclose(boxes[boxes[:, 0] == i][:, 1:], own, atol=1e-4)


def test_a_bad_view_does_not_sink_its_study(server):
    study = _study_infer(server, [synthetic_png(1), b"not an image", synthetic_png(3)], region="wrist")
    errors = [x.decode() for x in study["VIEW_ERRORS"]]
    assert errors[0] == errors[2] == "" and errors[1]
    assert float(study["VIEW_SCORES"][1]) == -1.0 and int(study["STUDY_VIEWS_USED"][0]) == 2
    assert study["REGION_USED"][0].decode() == "wrist"
    with pytest.raises(Exception, match="no view could be scored"):
        _study_infer(server, [b"junk"])


def _fracscan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory) -> Path:
    """study_a/: three DICOM views of one StudyInstanceUID; study_b/: two PNG views and a bad file."""
    import pydicom

    from fracscan.demo.synthetic import make_case, write_dicom

    root = tmp_path_factory.mktemp("studies")
    (root / "study_a").mkdir()
    (root / "study_b").mkdir()
    for i in range(3):
        path = write_dicom(make_case(10 + i, "wrist", i == 1, (320, 260)), root / "study_a" / f"view{i}.dcm")
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.4242"
        ds.save_as(path)
    for i in range(2):
        (root / "study_b" / f"view{i}.png").write_bytes(synthetic_png(20 + i))
    (root / "study_b" / "view2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_predict_by_study_writes_study_rows_and_every_view_row(server, two_studies, tmp_path):
    output = tmp_path / "out.jsonl"
    result = _fracscan("predict", str(two_studies), "--url", server.http_url, "--by-study", "-o", str(output))
    assert result.returncode == 1, result.stderr  # one view failed
    assert "grouped by folder" in result.stderr and "view2.png" in result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    studies = [r for r in rows if r["kind"] == "study"]
    views = [r for r in rows if r["kind"] == "image"]
    assert len(studies) == 2 and len(views) == 6
    by_key = {s["grouped_by"]: s for s in studies}
    dicom, folder = by_key["dicom"], by_key["folder"]
    assert dicom["study"] == "1.2.826.0.1.3680043.8.498.4242" and dicom["views_used"] == 3
    assert dicom["region"] == "wrist" and len(dicom["sources"]) == 3 and dicom["status"] == "ok"
    assert folder["study"].endswith("study_b") and folder["views_used"] == 2 and len(folder["sources"]) == 3
    bad = [v for v in views if v["status"] == "error"]
    assert [Path(v["source"]).name for v in bad] == ["view2.png"] and bad[0]["study"] == folder["study"]
    for study in studies:
        scores = [v["score"] for v in views if v["study"] == study["study"] and v["status"] == "ok"]
        assert study["score"] == pytest.approx(aggregate(scores, study["rule"]), abs=1e-6)
        assert study["level"] in ("negative", "suspicious", "definite")

    # --resume: the complete study is kept, the one with a failed view is scored again as a whole
    again = _fracscan(
        "predict", str(two_studies), "--url", server.http_url, "--by-study", "-o", str(output), "--resume"
    )
    assert again.returncode == 1 and "1 studies already scored" in again.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "study"]) == 2 and len([r for r in rows if r["kind"] == "image"]) == 6
    assert sorted(r["study"] for r in rows if r["kind"] == "study") == sorted(s["study"] for s in studies)


def test_sdk_predict_study_over_http_and_grpc(server, two_studies):
    import asyncio

    from fracscan.client import AsyncFracScanClient, FracScanClient, PredictionError, ViewPrediction

    views = sorted((two_studies / "study_b").iterdir())
    with FracScanClient(server.http_url) as client:
        study = client.predict_study([*views, two_studies / "missing.png"])
        single = [client.predict(v) for v in views[:2]]
    assert study.views_used == 2 and all(isinstance(v, PredictionError) for v in study.views[2:])
    assert [v.kind for v in study.views[2:]] == ["rejected", "input"]  # by the server, by the client
    assert [isinstance(v, ViewPrediction) for v in study.views] == [True, True, False, False]
    assert [v.score for v in study.views[:2]] == pytest.approx([p.score for p in single], abs=1e-6)
    assert [v.level for v in study.views[:2]] == [p.level for p in single]
    assert study.score == pytest.approx(aggregate([p.score for p in single], study.rule), abs=1e-6)

    async def grpc_study():
        async with AsyncFracScanClient(server.grpc_url) as client:
            return await client.predict_study(sorted((two_studies / "study_a").iterdir()), region="wrist")

    dicom = asyncio.run(grpc_study())
    assert dicom.study_instance_uid == "1.2.826.0.1.3680043.8.498.4242" and dicom.views_used == 3
    assert dicom.region == "wrist" and json.dumps(dicom.to_dict())


def _study_files(tmp_path: Path) -> tuple[Path, Path]:
    """Ten studies of two views each: view rows and study rows (rule max), and their labels."""
    rng = np.random.default_rng(0)
    rows, labels = [], ["study,fracture,region"]
    for i in range(10):
        fracture = i % 2 == 1
        scores = [float(rng.uniform(0.5, 1.0) if fracture and v == 0 else rng.uniform(0.0, 0.6)) for v in range(2)]
        key = f"folder/study_{i}"
        for v, score in enumerate(scores):
            rows.append({"kind": "image", "study": key, "source": f"{key}/v{v}.png", "status": "ok", "score": score})
        rows.append(
            {
                "kind": "study",
                "study": key,
                "source": key,
                "status": "ok",
                "score": max(scores),
                "fracture": max(scores) >= 0.5,
                "rule": "max",
                "region": "wrist",
                "views_used": 2,
                "sources": [f"{key}/v0.png", f"{key}/v1.png"],
            }
        )
        labels.append(f"study_{i},{int(fracture)},")
    predictions, label_file = tmp_path / "studies.jsonl", tmp_path / "study_labels.csv"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    label_file.write_text("\n".join(labels) + "\n")
    return predictions, label_file


def test_calibrate_and_evaluate_by_study(tmp_path):
    from fracscan.evaluation.studies import read_study_cases

    predictions, labels = _study_files(tmp_path)
    output = tmp_path / "thresholds.json"
    IMAGE_POINTS.save(output)
    result = _fracscan(
        "calibrate",
        str(predictions),
        str(labels),
        "--by-study",
        "--sensitivity",
        "0.8",
        "--min-positives",
        "2",
        "--definite-specificity",
        "0.8",
        "-o",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    saved = Thresholds.load(output)
    assert saved.regions == IMAGE_POINTS.regions and saved.study is not None and saved.study.rule == "max"
    cases = read_study_cases(predictions, labels).matched.cases  # matched by the folder's last component
    positives = sorted((c.score for c in cases if c.label), reverse=True)
    assert len(cases) == 10 and saved.study.regions["wrist"].threshold == positives[3]  # ceil(0.8 * 5) = 4th
    assert saved.study.regions["wrist"].definite_threshold is not None

    report = _fracscan(
        "evaluate", str(predictions), str(labels), "--by-study", "--format", "json", "--thresholds", str(output)
    )
    assert report.returncode == 0, report.stderr
    metrics = json.loads(report.stdout)
    assert metrics["unit"] == "study" and metrics["overall"]["n"] == 10 and metrics["overall"]["sensitivity"] >= 0.8
    assert metrics["overall"]["sensitivity_ci"] is not None and metrics["overall"]["auc_ci"] is not None

    # another rule: the view rows are aggregated again; the rows' own decisions no longer apply
    mean = _fracscan(
        "calibrate",
        str(predictions),
        str(labels),
        "--by-study",
        "--rule",
        "mean",
        "--min-positives",
        "2",
        "-o",
        str(output),
    )
    assert mean.returncode == 0, mean.stderr
    assert Thresholds.load(output).study.rule == "mean"
    without = _fracscan("evaluate", str(predictions), str(labels), "--by-study", "--rule", "mean", "--format", "json")
    assert without.returncode == 2 and "pass --thresholds" in without.stderr
    # image-level calibrate skips the study rows of the same file
    image_labels = tmp_path / "image_labels.csv"
    image_labels.write_text("source,fracture\n" + "".join(f"folder/study_{i}/v0.png,{i % 2}\n" for i in range(10)))
    image = _fracscan("evaluate", str(predictions), str(image_labels), "--format", "json", "--thresholds", str(output))
    assert image.returncode == 0, image.stderr
    assert json.loads(image.stdout)["matching"]["predictions_without_label"] == 10  # the v1 views, no study row


def test_synthetic_studies_share_region_and_side_and_show_the_fracture_in_some_views():
    from fracscan.demo.synthetic.studies import make_study, studies

    made = list(studies(12, seed=3))
    assert [s.uid for s in made] == [s.uid for s in studies(12, seed=3)]  # deterministic
    for study in made:
        assert 2 <= len(study.views) <= 3
        assert {v.region for v in study.views} == {study.region} and {v.laterality for v in study.views} == {
            study.laterality
        }
        assert len({v.seed for v in study.views}) == len(study.views)
        assert any(study.visible) == study.fracture
    fractured = make_study(7, "wrist", True, views=3)
    assert any(fractured.visible) and not any(make_study(7, "wrist", False, views=3).visible)
