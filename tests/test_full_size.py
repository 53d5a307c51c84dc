"""The full-size ensemble served: jones2020 at S = 1024 on the cpu target, served == reference on real-size radiographs.

The members are random-init at 1/16 of the paper's width (what matters here is the geometry: the S = 1024
frame, the 128 x 128 maps, boxes mapped back to original pixels of a 3000 x 2500 detector or a NEMA CR),
exported with the product's exporter; the thresholds make every radiograph positive with a map threshold
taken from the reference's own averaged maps, so the comparison includes boxes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import pydicom.data  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from fracscan import contract as c  # noqa: E402
from fracscan.decode import decode_image  # noqa: E402
from fracscan.demo.synthetic import TRANSFER_SYNTAXES, make_case, write_dicom  # noqa: E402
from fracscan.export.members import build_member  # noqa: E402
from fracscan.export.onnx_export import export_member  # noqa: E402
from fracscan.export.repository import install_thresholds, write_repository  # noqa: E402
from fracscan.pipeline import ReferenceRunner, combine, prepare, run_member  # noqa: E402
from fracscan.server import EmbeddedServer  # noqa: E402
from fracscan.spec import builtin_spec_path, load_spec  # noqa: E402
from fracscan.thresholds import OperatingPoint, Thresholds  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]

WIDTH = 1 / 16
DX_SHAPE = (3000, 2500)  # a large detector's full field, 12 bits stored
MAP_QUANTILE = 0.99  # the map threshold leaves ~1 % of each radiograph's averaged map above it


def _radiographs(folder: Path) -> dict[str, bytes]:
    dx = write_dicom(
        make_case(7, region="wrist", fracture=True, shape=DX_SHAPE),
        folder / "dx.dcm",
        transfer_syntax=TRANSFER_SYNTAXES["explicit_vr_little_endian"],
    )
    out = {"dx_3000x2500": dx.read_bytes()}
    nema = pydicom.data.get_testdata_file("RG1_UNCR.dcm")  # NEMA WG04 CR, 1955 x 1841, MONOCHROME1
    if nema is not None:
        out["nema_rg1"] = Path(nema).read_bytes()
    return out


def _map_threshold(runner: ReferenceRunner, images: dict[str, bytes]) -> float:
    """The highest threshold that leaves MAP_QUANTILE of every radiograph's averaged map above it."""
    levels = []
    for data in images.values():
        pixels = prepare(data, None, runner.repo.spec).pixels[None]
        scores, maps = [], []
        for session in runner.sessions:
            s, m = run_member(session, pixels)
            scores.append(float(s[0]))
            if m is not None:
                maps.append(m[0])
        prob_map = combine(scores, maps)[1]
        assert prob_map is not None and prob_map.shape == (128, 128)
        levels.append(float(np.quantile(prob_map, MAP_QUANTILE)))
    return min(levels)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """(repository, reference runner, radiographs) for jones2020 at S = 1024, random members at 1/16 width."""
    work = tmp_path_factory.mktemp("full_size")
    spec = load_spec(builtin_spec_path("jones2020"))
    spec = replace(spec, members=tuple(replace(m, width=m.width * WIDTH) for m in spec.members))
    torch.manual_seed(2020)
    files = []
    for i, member in enumerate(spec.members):
        files.append(export_member(build_member(member).eval(), member, spec.preprocess.size, work / f"m{i}.onnx"))
    repo = write_repository(spec, work / "repo", "cpu", files, random_weights=True)
    images = _radiographs(work)
    level = _map_threshold(ReferenceRunner(repo), images)
    point = OperatingPoint(threshold=0.0, map_threshold=level)  # every radiograph positive: boxes are made
    install_thresholds(repo, Thresholds({}, point, {"calibrated": False, "spec": spec.name}))
    return repo, ReferenceRunner(repo), images


def _infer(client: httpclient.InferenceServerClient, model: str, data: bytes, outputs: list[str]) -> dict:
    request = httpclient.InferInput(c.IMAGE, [1, 1], "BYTES")
    request.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer(model, [request], outputs=[httpclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_full_size_ensemble_served_equals_reference(full_size, tmp_path):
    repo, reference, images = full_size
    assert set(images) == {"dx_3000x2500", "nema_rg1"}, "the NEMA CR comes with the pydicom-data package"
    with EmbeddedServer(repo, log_path=tmp_path / "server.log") as server:
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=300.0)
        for name, data in images.items():
            ref = reference.predict(data)
            served = _infer(client, c.ENSEMBLE_MODEL, data, [c.SCORE, c.MEMBER_SCORES, c.FRACTURE, c.BOXES])
            assert abs(float(served[c.SCORE][0, 0]) - ref.score) < 1e-5, name
            np.testing.assert_allclose(served[c.MEMBER_SCORES][0], ref.member_scores, atol=1e-5)
            assert bool(served[c.FRACTURE][0, 0]) and ref.fracture
            boxes = served[c.BOXES][0]
            boxes = boxes[boxes[:, 4] >= 0]
            assert len(ref.boxes) > 0, f"{name}: no boxes, the comparison would be empty"
            assert boxes.shape == ref.boxes.shape and np.allclose(boxes, ref.boxes, atol=1e-3), name

            prepared = prepare(data, None, reference.repo.spec)
            geometry = prepared.geometry
            height, width = decode_image(data).pixels.shape
            assert 0 <= geometry.x0 < geometry.x1 <= width and 0 <= geometry.y0 < geometry.y1 <= height
            assert max(geometry.resized_h, geometry.resized_w) == 1024
            assert (ref.boxes[:, [0, 2]] <= geometry.x1 + 1e-3).all() and (
                ref.boxes[:, [1, 3]] <= geometry.y1 + 1e-3
            ).all()
            framed = _infer(client, c.PREPROCESS_MODEL, data, [c.FRAME, c.GEOMETRY])
            np.testing.assert_array_equal(framed[c.GEOMETRY][0], geometry.to_array())
            np.testing.assert_array_equal(framed[c.FRAME][0, 0], prepared.pixels[0])
