"""The two-level answer (negative / suspicious / definite) and answers to any subset of outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ROOT, example_files, synthetic_png

from fracscan import contract as c
from fracscan.postprocess import OperatingPoint, Thresholds, level_for


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
        assert definite == pytest.approx(c.NO_DEFINITE_THRESHOLD if ref.definite_threshold is None else ref.definite_threshold)
        seen.add(level)
    assert {"negative", "definite"} <= seen  # the examples show the levels, not only one of them
