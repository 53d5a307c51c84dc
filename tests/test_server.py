"""The served ensemble on a real embedded Triton server: parity, batching, bad requests."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pydicom
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import example_files, synthetic_png
from tritonclient.utils import InferenceServerException

OUTPUTS = [
    "SCORE",
    "FRACTURE",
    "THRESHOLD",
    "REGION_USED",
    "REGION_SOURCE",
    "FALLBACK",
    "MEMBER_SCORES",
    "BOXES",
    "LEVEL",
]


def _clients(server):
    return {
        "http": (httpclient, httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))),
        "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))),
    }


def infer(server, protocol: str, images: list[bytes], regions: list[str] | None = None):
    module, client = _clients(server)[protocol]
    inputs = [module.InferInput("IMAGE", [len(images), 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[x] for x in images], dtype=np.object_))
    if regions is not None:
        inputs.append(module.InferInput("REGION", [len(images), 1], "BYTES"))
        inputs[1].set_data_from_numpy(np.array([[r.encode()] for r in regions], dtype=np.object_))
    result = client.infer("fracscan", inputs, outputs=[module.InferRequestedOutput(n) for n in OUTPUTS])
    return {n: result.as_numpy(n) for n in OUTPUTS}


def inputs_for_parity() -> list[tuple[bytes, str | None]]:
    files = [(p.read_bytes(), None) for p in example_files()[:6]]
    return [*files, (synthetic_png(1), "wrist"), (synthetic_png(2), None), (synthetic_png(3), "skull")]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_ensemble_equals_in_process_reference(server, reference, protocol):
    for data, region in inputs_for_parity():
        served = infer(server, protocol, [data], None if region is None else [region])
        ref = reference.predict(data, region)
        assert abs(float(served["SCORE"][0, 0]) - ref.score) < 1e-5
        assert np.allclose(served["MEMBER_SCORES"][0], ref.member_scores, atol=1e-5)
        assert bool(served["FRACTURE"][0, 0]) == ref.fracture
        assert float(served["THRESHOLD"][0, 0]) == pytest.approx(ref.threshold)
        assert served["REGION_USED"][0, 0].decode() == ref.region
        assert served["REGION_SOURCE"][0, 0].decode() == ref.region_source
        boxes = served["BOXES"][0]
        boxes = boxes[boxes[:, 4] >= 0]
        assert boxes.shape == ref.boxes.shape and np.allclose(boxes, ref.boxes, atol=1e-3)


def test_region_from_request_and_fallback(server):
    out = infer(server, "http", [synthetic_png(4)] * 3, ["wrist", "skull", ""])
    assert [r[0].decode() for r in out["REGION_USED"]] == ["wrist", "unknown", "unknown"]
    assert [r[0].decode() for r in out["REGION_SOURCE"]] == ["user", "user", "unknown"]
    assert out["FALLBACK"][:, 0].tolist() == [False, True, True]


def test_batch_of_two_in_one_request(server, reference):
    a, b = synthetic_png(5), synthetic_png(6)
    out = infer(server, "grpc", [a, b])
    assert out["SCORE"].shape == (2, 1) and out["MEMBER_SCORES"].shape[0] == 2 and out["BOXES"].shape[0] == 2
    assert np.allclose(out["SCORE"][:, 0], [reference.predict(a).score, reference.predict(b).score], atol=1e-5)


def test_sixteen_concurrent_requests(server, reference):
    images = [synthetic_png(10 + i) for i in range(16)]

    def one(data):  # tritonclient's HTTP client is not thread-safe: one per thread
        return infer(server, "http", [data])["SCORE"][0, 0]

    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(one, images))
    expected = [reference.predict(x).score for x in images]
    assert np.allclose(scores, expected, atol=1e-5)


def _non_image_dicom() -> bytes:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", ["undecodable", "non-image DICOM", "truncated PNG", "empty", "black"])
def test_bad_image_is_invalid_arg_and_server_stays_healthy(server, protocol, case):
    buf = io.BytesIO()
    np.save(buf, np.zeros((64, 64), np.uint16))
    data, message = {
        "undecodable": (b"\x00garbage" * 50, "preprocess: unrecognised image format"),
        "non-image DICOM": (_non_image_dicom(), "preprocess: DICOM is not an image"),
        "truncated PNG": (synthetic_png(0)[:100], "preprocess: unreadable PNG image"),
        "empty": (b"", "preprocess: empty input"),
        "black": (buf.getvalue(), "preprocess: the image is entirely black"),
    }[case]
    with pytest.raises(InferenceServerException) as info:
        infer(server, protocol, [data])
    assert message in info.value.message()
    assert str(info.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200


def test_wrong_datatype_and_shape_are_rejected(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    wrong_type = httpclient.InferInput("IMAGE", [1, 1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 1), np.float32))
    wrong_shape = httpclient.InferInput("IMAGE", [1, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    too_big = httpclient.InferInput("IMAGE", [9, 1], "BYTES")
    too_big.set_data_from_numpy(np.array([[synthetic_png(0)]] * 9, dtype=np.object_))
    for bad, expected in ((wrong_type, "data-type"), (wrong_shape, "shape"), (too_big, "batch")):
        with pytest.raises(InferenceServerException) as info:
            client.infer("fracscan", [bad])
        assert str(info.value.status()) == "400" and expected in info.value.message().lower()
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200


def test_plain_json_request_as_documented(server, reference):
    """The curl example of docs/contract.md: base64 image bytes in a plain KServe v2 JSON body."""
    data = synthetic_png(7)
    body = {
        "inputs": [
            {"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]},
            {"name": "REGION", "shape": [1, 1], "datatype": "BYTES", "data": ["wrist"]},
        ]
    }
    response = httpx.post(f"{server.http_url}/v2/models/fracscan/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["SCORE"][0] == pytest.approx(reference.predict(data, "wrist").score, abs=1e-5)
    assert outputs["REGION_USED"] == ["wrist"]


def test_reference_with_two_ort_threads_does_not_spin_and_agrees(repository, reference):
    """`--ort-threads 2` must not spin-wait (ten sessions would fight for the cores) or change answers."""
    from fracscan.pipeline import ReferenceRunner

    two = ReferenceRunner(repository, threads=2)
    for session in two.sessions:
        options = session.get_session_options()
        assert options.intra_op_num_threads == 2
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    data = example_files()[0].read_bytes()
    assert two.predict(data).score == pytest.approx(reference.predict(data).score, abs=1e-5)


def test_stop_removes_the_shared_memory_a_killed_server_leaves(repository):
    """Triton frees its python-backend /dev/shm regions (64 MiB each) only on a clean exit."""
    import os
    import signal

    from fracscan.server import SHM_DIR, EmbeddedServer

    server = EmbeddedServer(repository).start()
    try:
        os.killpg(os.getpgid(server.process.pid), signal.SIGKILL)  # server, stubs and watchdog: a crash
        server.process.wait(30)
        assert list(SHM_DIR.glob(f"{server.shm_prefix}*"))  # the crash left them behind
    finally:
        server.stop()
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


def test_backend_cache_is_shared_by_every_process(tmp_path):
    """The copied backends are found again by the next process (a per-process name copied them each start)."""
    code = (
        "from pathlib import Path; from fracscan.server import prepare_backends; "
        f"print(prepare_backends(Path({str(tmp_path)!r})))"
    )
    paths = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    ]
    assert paths[0] == paths[1]
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(paths[0])]


def test_restricted_api_flags_leave_out_what_is_allowed():
    from fracscan.server import restricted_api_args

    assert restricted_api_args((), "k") == [
        "--http-restricted-api=shared-memory,logging,trace:fracscan-admin-key=k",
        "--grpc-restricted-protocol=shared-memory,logging,trace:fracscan-admin-key=k",
    ]
    assert restricted_api_args(("logging",), "k")[0] == "--http-restricted-api=shared-memory,trace:fracscan-admin-key=k"
    assert restricted_api_args(("shared-memory", "logging", "trace"), "k") == []
    with pytest.raises(ValueError, match="cannot allow model-control"):
        restricted_api_args(("model-control",), "k")


def test_stale_regions_of_dead_owners_are_removed_others_kept(tmp_path):
    from fracscan.server import remove_stale_regions

    dead = tmp_path / "fracscan_4194304999_8000_dead"  # above any pid_max: no such process
    alive = tmp_path / f"fracscan_{os.getpid()}_8000_alive"
    other = tmp_path / "someone_else_4194304999"
    for region in (dead, alive, other):
        region.write_bytes(b"x")
    assert remove_stale_regions(tmp_path) == [dead.name]
    assert not dead.exists() and alive.exists() and other.exists()
