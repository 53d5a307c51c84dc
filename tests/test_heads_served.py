"""An ensemble with classification heads (Olczak et al. 2017) served on the embedded Triton server.

A width-reduced copy of fracscan/specs/olczak2017.toml (one VGG-16, S = 256 stretched, no LCN, three
heads), random weights except two head biases set before export, so that the laterality head says
"left" and the body-part head "wrist" with p > 0.99 on every image: a real exported ONNX, served by
real Triton, whose answers the QC and region-from-model rules can be checked against.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fracscan import contract as c
from fracscan.demo.synthetic import make_case, png_bytes, write_dicom
from fracscan.spec import builtin_spec_path, load_spec

pytest.importorskip("torch")
pytest.importorskip("onnx")

CONFIDENT = 8.0  # logit bias: softmax p = 1 - 1e-7 for the favoured class (the features' logits are ~0.01)
LATERALITY, BODY_PART = "left", "wrist"  # what the biased heads say
HEAD_OUTPUTS = ["LATERALITY", "LATERALITY_PROBS", "BODY_PART", "BODY_PART_PROBS", "VIEW", "VIEW_PROBS", "QC"]


@pytest.fixture(scope="module")
def heads_spec():
    spec = load_spec(builtin_spec_path("olczak2017"))
    return replace(spec, members=tuple(replace(m, width=0.0625) for m in spec.members))


@pytest.fixture(scope="module")
def heads_repository(tmp_path_factory, heads_spec):
    import torch

    from fracscan.export.members import build_member
    from fracscan.export.onnx_export import export_member
    from fracscan.export.repository import RepositoryOptions, write_repository

    out = tmp_path_factory.mktemp("heads")
    member = heads_spec.members[0]
    torch.manual_seed(0)
    model = build_member(member).eval()
    with torch.no_grad():
        for head, favoured in (("laterality", LATERALITY), ("body_part", BODY_PART)):
            classes = heads_spec.head(head).classes
            bias = torch.full((len(classes),), -CONFIDENT)
            bias[classes.index(favoured)] = CONFIDENT
            model.heads[head].bias.copy_(bias)
    onnx_path = export_member(model, member, heads_spec.preprocess.size, out / "member.onnx")
    options = RepositoryOptions(preprocess_instances=1, study_instances=1)
    return write_repository(heads_spec, out / "repository", "cpu", [onnx_path], options=options, random_weights=True)


@pytest.fixture(scope="module")
def heads_server(tmp_path_factory, heads_repository):
    from fracscan.server import EmbeddedServer

    with EmbeddedServer(heads_repository, log_path=tmp_path_factory.mktemp("triton") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def heads_reference(heads_repository):
    from fracscan.pipeline import ReferenceRunner

    return ReferenceRunner(heads_repository)


def _dicom(seed: int, laterality: str | None = None, body_part: str | None = None, drop_region: bool = False) -> bytes:
    """A synthetic DX DICOM of a wrist; laterality overrides ImageLaterality; drop_region removes every region tag."""
    case = make_case(seed, region="wrist", shape=(420, 300))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dicom(case, Path(tmp) / "x.dcm", body_part=body_part)
        ds = pydicom.dcmread(path)
    if laterality is not None:
        ds.ImageLaterality = laterality
    if drop_region:
        for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
            if keyword in ds:
                delattr(ds, keyword)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png(seed: int, region: str | None = None) -> bytes:
    return png_bytes(make_case(seed, region=region, fracture=bool(seed % 2), shape=(420, 300)))


def infer(server, images: list[bytes], regions: list[str] | None = None, protocol: str = "http"):
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url.removeprefix("http://") if protocol == "http" else server.grpc_url.removeprefix("grpc://")
    client = module.InferenceServerClient(url)
    inputs = [module.InferInput(c.IMAGE, [len(images), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[x] for x in images], dtype=np.object_))
    if regions is not None:
        inputs.append(module.InferInput(c.REGION, [len(images), 1], "BYTES"))
        inputs[1].set_data_from_numpy(np.array([[r.encode()] for r in regions], dtype=np.object_))
    names = [t.name for t in c.ensemble_outputs(1, (("laterality", 2), ("body_part", 6), ("view", 4)))]
    result = client.infer(c.ENSEMBLE_MODEL, inputs, outputs=[module.InferRequestedOutput(n) for n in names])
    return {n: result.as_numpy(n) for n in names}


def _assert_equal(served: dict, row: int, ref, spec) -> None:
    assert float(served[c.SCORE][row, 0]) == pytest.approx(ref.score, abs=1e-5)
    assert bool(served[c.FRACTURE][row, 0]) == ref.fracture
    assert float(served[c.THRESHOLD][row, 0]) == pytest.approx(ref.threshold)
    assert bool(served[c.FALLBACK][row, 0]) == ref.fallback
    assert served[c.REGION_USED][row, 0].decode() == ref.region
    assert served[c.REGION_SOURCE][row, 0].decode() == ref.region_source
    assert served[c.QC][row, 0].decode() == "; ".join(ref.qc)
    assert set(ref.heads) == {h.name for h in spec.heads}
    for head in spec.heads:
        top, probs = c.head_outputs(head.name)
        assert served[top][row, 0].decode() == ref.heads[head.name].label
        assert served[probs][row].shape == (len(head.classes),)
        np.testing.assert_allclose(served[probs][row], ref.heads[head.name].probs, atol=1e-5)


INPUTS = [
    ("png", lambda: _png(1), None),
    ("png, user region", lambda: _png(2, "ankle"), "hand"),
    ("png, unsupported user region", lambda: _png(4), "skull"),
    ("dicom, agreeing laterality", lambda: _dicom(3, laterality="L"), None),
    ("dicom, contradicting laterality", lambda: _dicom(5, laterality="R"), None),
    ("dicom, contradicting body part", lambda: _dicom(6, laterality="L", body_part="ANKLE"), None),
    ("dicom, no region", lambda: _dicom(7, laterality="L", drop_region=True), None),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_heads_equal_the_in_process_reference(heads_server, heads_reference, heads_spec, protocol):
    for _, make, region in INPUTS:
        data = make()
        served = infer(heads_server, [data], None if region is None else [region], protocol)
        _assert_equal(served, 0, heads_reference.predict(data, region), heads_spec)


def test_a_batch_and_concurrent_requests_answer_each_image(heads_server, heads_reference, heads_spec):
    """Several images in one request, and requests the dynamic batcher merges, keep their own answers."""
    images = [make() for _, make, _ in INPUTS]
    served = infer(heads_server, images)
    for row, data in enumerate(images):
        _assert_equal(served, row, heads_reference.predict(data), heads_spec)
    with ThreadPoolExecutor(len(images)) as pool:  # one client per thread
        answers = list(pool.map(lambda data: infer(heads_server, [data]), images))
    for data, answer in zip(images, answers, strict=True):
        _assert_equal(answer, 0, heads_reference.predict(data), heads_spec)


def test_contradicting_image_laterality_is_a_qc_warning_naming_both(heads_server):
    out = infer(heads_server, [_dicom(5, laterality="R"), _dicom(5, laterality="L"), _png(5)])
    qc = [v[0].decode() for v in out[c.QC]]
    assert [v[0].decode() for v in out["LATERALITY"]] == [LATERALITY] * 3
    assert out["LATERALITY_PROBS"][:, 0].min() > 0.99
    assert "ImageLaterality is R" in qc[0] and f"says {LATERALITY}" in qc[0], qc[0]
    assert qc[1:] == ["", ""]  # agreeing DICOM, and a PNG that states nothing


def test_contradicting_body_part_is_a_qc_warning_and_dicom_keeps_the_region(heads_server):
    out = infer(heads_server, [_dicom(6, laterality="L", body_part="ANKLE")])
    qc = out[c.QC][0, 0].decode()
    assert "BodyPartExamined is ANKLE" in qc and f"says {BODY_PART}" in qc, qc
    assert (out[c.REGION_USED][0, 0].decode(), out[c.REGION_SOURCE][0, 0].decode()) == ("ankle", "dicom")


def test_dicom_without_body_part_takes_the_region_from_the_confident_head(heads_server):
    out = infer(heads_server, [_dicom(7, laterality="L", drop_region=True), _png(8), _png(8)], ["", "", "hand"])
    assert [v[0].decode() for v in out[c.REGION_USED]] == [BODY_PART, BODY_PART, "hand"]
    assert [v[0].decode() for v in out[c.REGION_SOURCE]] == ["model", "model", "user"]
    assert not out[c.FALLBACK].any()  # the region's threshold applied, not the fallback


def test_a_raw_kserve_client_sees_the_documented_names(heads_server, heads_spec):
    """Plain JSON over HTTP: the head outputs under the contract's names, and the classes in the config."""
    body = {
        "inputs": [
            {"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [base64.b64encode(_png(9)).decode()]}
        ]
    }
    response = httpx.post(f"{heads_server.http_url}/v2/models/fracscan/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(HEAD_OUTPUTS) <= set(outputs)
    assert outputs["LATERALITY"]["datatype"] == "BYTES" and outputs["LATERALITY"]["data"] == [LATERALITY]
    assert outputs["BODY_PART_PROBS"]["datatype"] == "FP32" and outputs["BODY_PART_PROBS"]["shape"] == [1, 6]
    assert outputs["VIEW"]["data"][0] in heads_spec.head("view").classes
    assert outputs["QC"]["data"] == [""]

    config = httpx.get(f"{heads_server.http_url}/v2/models/fracscan/config", timeout=30).json()
    assert json.loads(config["parameters"]["heads"]["string_value"]) == {
        h.name: list(h.classes) for h in heads_spec.heads
    }
    labels = {o["name"]: o.get("label_filename", "") for o in config["output"]}
    assert labels["LATERALITY_PROBS"] == "laterality_labels.txt"
    assert labels["BODY_PART_PROBS"] == "body_part_labels.txt" and labels["VIEW_PROBS"] == "view_labels.txt"


def test_the_server_loaded_the_label_files(heads_server, heads_repository, heads_spec):
    """Triton's classification extension answers "<p>:<index>:<label>" from the label file it loaded."""
    for model in (c.ENSEMBLE_MODEL, c.THRESHOLD_MODEL):
        for head in heads_spec.heads:
            lines = (heads_repository / model / c.labels_file(head.name)).read_text().splitlines()
            assert lines == list(head.classes)
    client = httpclient.InferenceServerClient(heads_server.http_url.removeprefix("http://"))
    image = httpclient.InferInput(c.IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[_png(10)]], dtype=np.object_))
    wanted = [httpclient.InferRequestedOutput(name, class_count=2) for name in ("LATERALITY_PROBS", "BODY_PART_PROBS")]
    result = client.infer(c.ENSEMBLE_MODEL, [image], outputs=wanted)
    top = [v.decode().split(":") for v in result.as_numpy("LATERALITY_PROBS")[0]]
    assert top[0][1:] == ["0", LATERALITY] and float(top[0][0]) > 0.99
    assert result.as_numpy("BODY_PART_PROBS")[0][0].decode().endswith(f":1:{BODY_PART}")
