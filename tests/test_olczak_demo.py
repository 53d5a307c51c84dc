"""The committed Olczak et al. 2017 DEMO repository (model_repository_olczak/) on the embedded Triton server.

Held-out synthetic exam views (seeds no build split used) go through the served ensemble without a
region: the answers must equal the in-process reference, heads included, and the trained heads must
read what the images show (body part and laterality accuracy >= 0.9), and so must the fracture output
(scikit-learn's AUC of the served scores >= 0.85). A DICOM whose
ImageLaterality contradicts a confident laterality head gets the QC warning naming both.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from fracscan import contract as c
from fracscan import provenance
from fracscan.client import FracScanClient
from fracscan.demo.synthetic import REGIONS_WITH_VIEWS, VIEWS, make_case, png_bytes, write_dicom
from fracscan.server import OLCZAK_DEMO_REPOSITORY

HELD_OUT = 14_000_000  # the build used 11M (train), 12M (tune) and 13M (test)
LATERALITY = {"L": "left", "R": "right"}


@pytest.fixture(scope="module")
def olczak_server(tmp_path_factory):
    from fracscan.server import EmbeddedServer

    with EmbeddedServer(OLCZAK_DEMO_REPOSITORY, log_path=tmp_path_factory.mktemp("olczak") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    from fracscan.pipeline import ReferenceRunner

    return ReferenceRunner(OLCZAK_DEMO_REPOSITORY)


def held_out_cases():
    combos = [(r, v, f) for r in REGIONS_WITH_VIEWS for v in VIEWS[r] for f in (False, True)]
    return [
        make_case(HELD_OUT + i, region=r, fracture=f, shape=(400, 330), view=v)
        for i, (r, v, f) in enumerate(combos * 2)
    ]


def test_the_olczak_demo_says_it_is_a_demo():
    record = provenance.read(OLCZAK_DEMO_REPOSITORY)
    assert record.demo and not record.random_weights and record.calibrated


def test_served_heads_equal_the_reference_and_read_the_images(olczak_server, reference):
    cases = held_out_cases()
    correct = {"laterality": 0, "body_part": 0}
    scores = []
    with FracScanClient(olczak_server.http_url) as client:
        for case in cases:
            data = png_bytes(case)
            served, ref = client.predict(data), reference.predict(data)
            assert served.score == pytest.approx(ref.score, abs=1e-5)
            scores.append(served.score)
            assert (served.region, served.region_source) == (ref.region, ref.region_source)
            assert served.qc == ref.qc == ()  # a PNG states nothing that could be contradicted
            for head, found in ref.heads.items():
                assert served.heads[head].label == found.label
                assert list(served.heads[head].probs.values()) == pytest.approx(found.probs.tolist(), abs=1e-5)
            correct["laterality"] += served.heads["laterality"].label == LATERALITY[case.laterality]
            correct["body_part"] += served.heads["body_part"].label == case.region
    accuracy = {head: n / len(cases) for head, n in correct.items()}
    assert accuracy["body_part"] >= 0.9 and accuracy["laterality"] >= 0.9, accuracy
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([c.fracture for c in cases], scores) >= 0.85


def _dicom(case, image_laterality: str, folder) -> bytes:
    ds = pydicom.dcmread(write_dicom(case, folder / f"{case.seed}.dcm"))
    ds.ImageLaterality = image_laterality
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_a_contradicting_image_laterality_gets_the_qc_warning(olczak_server, reference, tmp_path):
    confident = next(
        (case, found)
        for case in held_out_cases()
        if (found := reference.predict(png_bytes(case)).heads["laterality"]).confidence >= 0.9
        and found.label == LATERALITY[case.laterality]
    )
    case, found = confident
    stated = case.laterality
    wrong = "L" if stated == "R" else "R"
    with FracScanClient(olczak_server.http_url) as client:
        agreeing = client.predict(_dicom(case, stated, tmp_path))
        contradicted = client.predict(_dicom(case, wrong, tmp_path))
    assert not [w for w in agreeing.qc if w.startswith("laterality")]
    (warning,) = [w for w in contradicted.qc if w.startswith("laterality")]
    assert f"DICOM ImageLaterality is {wrong}" in warning
    assert f"the laterality head says {found.label}" in warning
    assert contradicted.region_source == "dicom"  # BodyPartExamined still names the region


def test_a_raw_kserve_client_sees_the_head_outputs(olczak_server):
    import tritonclient.http as httpclient

    case = held_out_cases()[0]
    image = httpclient.InferInput(c.IMAGE, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[png_bytes(case)]], dtype=np.object_))
    names = [name for head in ("laterality", "body_part", "view") for name in c.head_outputs(head)] + [c.QC]
    client = httpclient.InferenceServerClient(olczak_server.http_url.removeprefix("http://"))
    try:
        result = client.infer(c.ENSEMBLE_MODEL, [image], outputs=[httpclient.InferRequestedOutput(n) for n in names])
        config = client.get_model_config(c.ENSEMBLE_MODEL)
    finally:
        client.close()
    assert result.as_numpy("BODY_PART")[0, 0].decode() in ("ankle", "wrist", "hand")
    assert result.as_numpy("VIEW_PROBS").shape == (1, 3)
    assert result.as_numpy("LATERALITY_PROBS").sum() == pytest.approx(1.0, abs=1e-5)
    labels = {o["name"]: o.get("label_filename") for o in config["output"]}
    assert labels["LATERALITY_PROBS"] == c.labels_file("laterality")
