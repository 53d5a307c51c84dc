"""The two-level answer (negative / suspicious / definite) and answers to any subset of outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ROOT, example_files, synthetic_png

from fracscan import contract as c
from fracscan.postprocess import level_for
from fracscan.thresholds import OperatingPoint, Thresholds


@pytest.mark.parametrize(
    "score, point, expected",
    [
        (0.2, OperatingPoint(0.3), ("negative", None)),
        (0.3, OperatingPoint(0.3), ("suspicious", None)),
        (0.5, OperatingPoint(0.3, definite_threshold=0.6), ("suspicious", 0.6)),
        (0.6, OperatingPoint(0.3, definite_threshold=0.6), ("definite", 0.6)),
        # a definite point calibrated below the suspicious one is raised to it: never less strict
        (0.25, OperatingPoint(0.3, definite_threshold=0.2), ("negative", 0.3)),
        (0.3, OperatingPoint(0.3, definite_threshold=0.2), ("definite", 0.3)),
    ],
)
def test_level_rule(score, point, expected):
    assert level_for(score, point) == expected


def test_demo_thresholds_make_some_test_radiographs_definite(repository):
    thresholds = Thresholds.load(repository / c.THRESHOLDS_FILE)
    assert all(p.definite_threshold is not None for p in thresholds.regions.values())
    rows = [json.loads(line) for line in (ROOT / "demo" / "test_predictions.jsonl").read_text().splitlines()]
    levels = [level_for(r["score"], thresholds.for_region(r["region"])[0])[0] for r in rows]
    assert 0 < levels.count("definite") < levels.count("definite") + levels.count("suspicious")


def _client(server, protocol):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def _infer(server, protocol, data: bytes, outputs: tuple[str, ...]):
    module, client = _client(server, protocol)
    image = module.InferInput(c.IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer(c.ENSEMBLE_MODEL, [image], outputs=[module.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_single_output_can_be_requested_alone(server, protocol):
    data = example_files()[0].read_bytes()
    full = _infer(server, protocol, data, c.ENSEMBLE_OUTPUT_NAMES)
    for name in c.ENSEMBLE_OUTPUT_NAMES:
        alone = _infer(server, protocol, data, (name,))[name]
        assert alone.shape == full[name].shape and (alone == full[name]).all(), name


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_level_matches_the_reference_and_its_thresholds(server, reference, protocol):
    seen = set()
    for data in [p.read_bytes() for p in example_files()] + [synthetic_png(1)]:
        served = _infer(server, protocol, data, c.ENSEMBLE_OUTPUT_NAMES)
        ref = reference.predict(data)
        level = served[c.LEVEL][0, 0].decode()
        definite = float(served[c.DEFINITE_THRESHOLD][0, 0])
        score, threshold = float(served[c.SCORE][0, 0]), float(served[c.THRESHOLD][0, 0])
        assert level == ref.level and level in c.LEVELS
        assert (level != "negative") == bool(served[c.FRACTURE][0, 0])
        if level == "definite":
            assert score >= definite >= threshold
        assert definite == pytest.approx(
            c.NO_DEFINITE_THRESHOLD if ref.definite_threshold is None else ref.definite_threshold
        )
        seen.add(level)
    assert {"negative", "definite"} <= seen  # the examples show the levels, not only one of them


def test_overlays_draw_definite_solid_and_suspicious_dashed():
    from PIL import Image

    from fracscan.client.models import Box
    from fracscan.client.overlay import COLOURS, draw_findings

    box = Box(20.0, 20.0, 280.0, 280.0, 0.9)
    drawn = {}
    for level in ("definite", "suspicious"):
        image = Image.new("RGB", (300, 300))
        draw_findings(image, [box], level)
        top_edge = np.asarray(image)[20, 25:275]  # the box's top edge, away from the confidence label
        drawn[level] = int((top_edge == COLOURS[level]).all(axis=1).sum())
    assert drawn["definite"] == 250  # solid: every pixel of the edge
    assert 0.3 * 250 < drawn["suspicious"] < 0.7 * 250  # dashed: about half of it


def test_cli_writes_the_level_in_every_format(server, tmp_path):
    import csv
    import subprocess
    import sys

    out = tmp_path / "out.csv"
    examples = [str(p) for p in example_files()]
    cmd = [sys.executable, "-m", "fracscan.cli", "predict", *examples, "--url", server.http_url, "--format", "csv"]
    subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True, timeout=300)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(examples) and {r["level"] for r in rows} <= set(c.LEVELS)
    assert all((r["level"] != "negative") == (r["fracture"] == "1") for r in rows)
