"""fracscan.client against a real embedded Triton server (no mocks).

One server for the whole module; fail-over and down-server cases use ports nobody listens
on, and the retry tests a tiny HTTP server of our own that answers the KServe infer route.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from fracscan.client import (
    AsyncFracScanClient,
    FracScanClient,
    FracScanConnectionError,
    FracScanServerError,
    InputRejected,
    InvalidInput,
    Prediction,
    PredictionError,
)

# TODO(conftest owner): move these fixtures to tests/conftest.py (session scope).

PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane", "PHI-0042", "19700101"


# --- fixtures ---------------------------------------------------------------------------------


def radiograph(seed: int, shape=(300, 220)) -> np.ndarray:
    """A bright rectangle of 'anatomy' with a brighter 'bone' on a dark, noisy background (uint16)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.normal(300, 80, shape)
    y0, x0 = rng.integers(8, 40, 2)
    img[y0 : h - y0, x0 : w - x0] += 12000
    cx = int(rng.integers(w // 3, 2 * w // 3))
    img[y0 : h - y0, cx - 20 : cx + 20] += 20000
    if seed % 2:
        img[h // 2 - 2 : h // 2 + 2, cx - 20 : cx + 20] -= 18000  # a lucent line
    return img.clip(0, 65535).astype(np.uint16)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def dicom_dataset(
    pixels: np.ndarray | None, body_part: str = "WRIST", sop_class=DigitalXRayImageStorageForPresentation
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.Modality = "DX" if pixels is not None else "SR"
    if body_part:
        ds.BodyPartExamined = body_part
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def text_sr() -> Dataset:
    """A Basic Text SR: a valid DICOM file that is not an image."""
    ds = dicom_dataset(None, body_part="", sop_class=BasicTextSRStorage)
    ds.ValueType, ds.TextValue = "TEXT", "no fracture seen"
    return ds


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    out = {}
    for seed in range(3):
        out[f"png{seed}"] = d / f"image{seed}.png"
        out[f"png{seed}"].write_bytes(png_bytes(radiograph(seed)))
    out["dicom_wrist"] = d / "wrist_no_suffix"  # DICOM without a suffix: recognised by content
    dicom_dataset(radiograph(3), "WRIST").save_as(out["dicom_wrist"], enforce_file_format=True)
    out["dicom_knee"] = d / "knee.dcm"
    dicom_dataset(radiograph(4), "KNEE").save_as(out["dicom_knee"], enforce_file_format=True)
    out["garbage"] = d / "garbage.bin"
    out["garbage"].write_bytes(np.random.default_rng(9).bytes(3000))
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    out["sr"] = d / "report.dcm"
    text_sr().save_as(out["sr"], enforce_file_format=True)
    out["truncated"] = d / "truncated.png"
    full = png_bytes(radiograph(5))
    out["truncated"].write_bytes(full[: len(full) // 2])
    return out


GOOD = ["png0", "png1", "png2", "dicom_wrist", "dicom_knee"]


def dead_url(scheme: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"  # closed again: connections are refused


@contextlib.contextmanager
def unreachable_url(scheme: str):
    """A port whose accept queue is full: connecting hangs (as for a host that drops packets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(listener.getsockname())
        fillers.append(s)
    time.sleep(0.1)
    try:
        yield f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for s in [*fillers, listener]:
            s.close()


def same(a: Prediction, b: Prediction) -> bool:
    strip = lambda p: {k: v for k, v in p.to_dict().items() if k not in ("latency_s", "scored_at")}  # noqa: E731
    da, db = strip(a), strip(b)
    close = abs(da.pop("score") - db.pop("score")) <= 1e-6 and np.allclose(
        da.pop("member_scores"), db.pop("member_scores"), atol=1e-6
    )
    return close and da == db


def assert_matches_reference(p: Prediction, ref) -> None:
    assert abs(p.score - ref.score) <= 1e-5
    np.testing.assert_allclose(p.member_scores, ref.member_scores, atol=1e-5)
    assert p.member_spread == pytest.approx(float(np.std(p.member_scores)))
    assert (p.fracture, p.region, p.region_source, p.fallback) == (
        ref.fracture,
        ref.region,
        ref.region_source,
        ref.fallback,
    )
    assert p.threshold == pytest.approx(ref.threshold)
    boxes = np.asarray([b.to_list() for b in p.boxes], dtype=np.float32).reshape(-1, 5)
    assert boxes.shape == ref.boxes.reshape(-1, 5).shape and np.allclose(boxes, ref.boxes.reshape(-1, 5), atol=1e-3)


# --- predictions ----------------------------------------------------------------------------


def test_every_source_kind_matches_the_reference(server, reference, files):
    pixels = radiograph(7)
    dataset = pydicom.dcmread(files["dicom_wrist"])
    cases = [
        (str(files["png0"]), files["png0"].read_bytes(), None),
        (files["dicom_wrist"], files["dicom_wrist"].read_bytes(), None),  # PathLike, DICOM without suffix
        (files["dicom_knee"], files["dicom_knee"].read_bytes(), "elbow"),  # the user's region wins
        (files["png1"].read_bytes(), files["png1"].read_bytes(), "wrist"),
        (dataset, files["dicom_wrist"].read_bytes(), None),
        (pixels, _npy(pixels), None),
        (pixels.astype(np.float32), _npy(pixels.astype(np.float32)), "nonsense-region"),
    ]
    with FracScanClient(server.http_url) as client:
        for source, data, region in cases:
            p = client.predict(source, region=region)
            assert_matches_reference(p, reference.predict(data, region))
            assert p.model_name == "fracscan" and p.model_version == "1" and p.latency_s > 0
        dicom = client.predict(files["dicom_wrist"])
        user = client.predict(files["dicom_knee"], region="elbow")
        unknown = client.predict(files["png0"])
        array = client.predict(pixels)
    assert (dicom.region, dicom.region_source, dicom.fallback) == ("wrist", "dicom", False)
    assert dicom.source == str(files["dicom_wrist"])
    assert dicom.sop_instance_uid == str(dataset.SOPInstanceUID)
    assert dicom.series_instance_uid == str(dataset.SeriesInstanceUID)
    assert dicom.study_instance_uid == str(dataset.StudyInstanceUID)
    assert (user.region, user.region_source) == ("elbow", "user")
    assert (unknown.region, unknown.region_source, unknown.fallback) == ("unknown", "unknown", True)
    assert unknown.sop_instance_uid is None and array.source == "<array>"


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_http_and_grpc_give_identical_predictions(server, files):
    with FracScanClient(server.http_url) as http, FracScanClient(server.grpc_url) as grpc:
        for name in GOOD:
            a, b = http.predict(files[name]), grpc.predict(files[name])
            assert same(a, b), (a, b)
        a, b = http.predict(files["png2"], region="hand"), grpc.predict(files["png2"], region="hand")
        assert same(a, b)


def test_prediction_is_typed_frozen_and_json_ready(server, files):
    with FracScanClient(server.grpc_url) as client:
        p = client.predict(files["dicom_wrist"])
    assert p.ok is True and isinstance(p.score, float) and isinstance(p.fracture, bool)
    assert isinstance(p.boxes, tuple) and isinstance(p.member_scores, tuple)
    with pytest.raises(AttributeError):
        p.score = 1.0  # type: ignore[misc]
    d = json.loads(json.dumps(p.to_dict()))
    assert d["source"] == str(files["dicom_wrist"]) and d["ok"] is True
    assert all(isinstance(b, list) and len(b) == 5 for b in d["boxes"])
    assert len(d["member_scores"]) == len(p.member_scores)
    e = PredictionError("x.png", "broken", "input")
    row = e.to_dict()
    assert e.ok is False and row.pop("scored_at").endswith("Z") and set(row.pop("acquisition")) >= {"modality", "rows"}
    assert row == {"source": "x.png", "ok": False, "error": "broken", "kind": "input"}


def test_decode_on_client_gives_the_same_answer(server, files):
    with (
        FracScanClient(server.http_url) as server_side,
        FracScanClient(server.grpc_url, decode_on_client=True) as client_side,
    ):
        for name in GOOD:
            a, b = server_side.predict(files[name]), client_side.predict(files[name])
            assert abs(a.score - b.score) <= 1e-5
            assert (a.region, a.region_source, a.fallback, a.sop_instance_uid) == (
                b.region,
                b.region_source,
                b.fallback,
                b.sop_instance_uid,
            )
        assert client_side.predict(files["dicom_wrist"]).region_source == "dicom"
        assert client_side.predict(files["dicom_wrist"], region="knee").region_source == "user"
        with pytest.raises(InvalidInput, match=r"truncated\.png"):
            client_side.predict(files["truncated"])  # decoded on the client: fails before sending


def test_decoded_pixels_travel_as_16_bit_integers_when_exact(files):
    from fracscan.client.sources import compact_pixels, read_source

    payload = read_source(files["dicom_wrist"], decode_on_client=True)
    sent = np.load(io.BytesIO(payload.data))
    assert sent.dtype == np.uint16 and len(payload.data) < sent.size * 2 + 200  # not float32
    assert compact_pixels(np.array([[-3.0, 7.0]], np.float32)).dtype == np.int16
    for inexact in ([[0.5, 1.0]], [[0.0, 70000.0]], [[-40000.0, 1.0]], [[np.nan, 1.0]]):
        assert compact_pixels(np.array(inexact, np.float32)).dtype == np.float32


def test_async_client_http_and_grpc(server, files):
    with FracScanClient(server.http_url) as sync:
        expected = [sync.predict(files[n]) for n in GOOD]

    async def run(url):
        async with AsyncFracScanClient(url) as client:
            await client.wait_until_ready(timeout=10)
            info = await client.server_info()
            assert info["ready"] and info["model_ready"]
            one = await client.predict(files["dicom_wrist"])
            many = [r async for r in client.predict_many((files[n] for n in GOOD), concurrency=3)]
            return one, many

    async def both():
        return await asyncio.gather(run(server.http_url), run(server.grpc_url))

    for one, many in asyncio.run(both()):
        assert same(one, expected[3])
        assert all(same(a, b) for a, b in zip(many, expected, strict=True))


# --- batches with bad inputs ------------------------------------------------------------------------

BAD = {
    3: ("garbage", "input", "unrecognised image format"),
    17: ("empty", "input", "empty"),
    29: ("sr", "input", "not an image"),
    41: ("truncated", "rejected", "preprocess"),
}


def batch_of_50(files) -> list[Path]:
    names = [BAD[i][0] if i in BAD else GOOD[i % len(GOOD)] for i in range(50)]
    return [files[n] for n in names]


def check_batch(results, sources, expected_scores) -> None:
    assert len(results) == len(sources) == 50
    for i, (result, source) in enumerate(zip(results, sources, strict=True)):
        assert result.source == str(source)  # input order
        if i in BAD:
            _, kind, text = BAD[i]
            assert isinstance(result, PredictionError) and not result.ok
            assert result.kind == kind and text in result.error, result
        else:
            assert isinstance(result, Prediction) and result.ok, result
            assert abs(result.score - expected_scores[source]) <= 1e-5


def test_predict_many_returns_every_good_result_and_one_failure_per_bad_input(server, reference, files, caplog):
    sources = batch_of_50(files)
    expected = {files[n]: reference.predict(files[n].read_bytes()).score for n in GOOD}
    caplog.set_level(logging.DEBUG)
    with FracScanClient(server.http_url) as client:
        check_batch(list(client.predict_many(iter(sources), concurrency=6)), sources, expected)

    async def run():
        async with AsyncFracScanClient(server.grpc_url) as client:
            return [r async for r in client.predict_many(sources, concurrency=6)]

    check_batch(asyncio.run(run()), sources, expected)
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, BIRTH_DATE):
        assert secret not in caplog.text


def test_predict_many_reads_sources_lazily(server, files):
    pulled = 0

    def sources():
        nonlocal pulled
        for _ in range(100_000):
            pulled += 1
            yield files["png0"]

    with FracScanClient(server.grpc_url) as client:
        results = client.predict_many(sources(), concurrency=4)
        first = [next(results) for _ in range(3)]
        assert all(r.ok for r in first)
        assert pulled <= 3 + 2 * 4  # bounded look-ahead, not the whole input
        results.close()  # stopping early cancels what has not started


def test_client_side_checks_fail_fast_and_name_the_problem(files, tmp_path):
    no_pixels = dicom_dataset(radiograph(1))
    del no_pixels.PixelData
    cases = [
        (tmp_path / "missing.dcm", "file not found"),
        (tmp_path, "is a directory"),
        (files["empty"], "empty"),
        (files["garbage"], "unrecognised image format"),
        (files["sr"], "Basic Text SR Storage"),
        (b"\x89PNG", "unrecognised image format"),  # too short to be anything
        (np.zeros((4, 4, 4)), "2-D"),
        (np.array([["a"]]), "2-D numeric"),
        (no_pixels, "no pixel data"),
        (42, "unsupported source type"),
    ]
    with StubServer(status=200) as stub, FracScanClient(stub.url, retries=0) as client:
        for source, text in cases:
            with pytest.raises(InvalidInput, match=text) as info:
                client.predict(source)
            assert info.value.kind == "input"
            if isinstance(source, Path):
                assert str(source) in str(info.value)
            assert PATIENT_NAME not in str(info.value) and PATIENT_ID not in str(info.value)
        assert stub.requests == 0  # nothing was sent


# --- connections, retries, fail-over -------------------------------------------------------------------


class StubServer:
    """A tiny HTTP server of our own: answers the KServe infer route with `status`, counts requests."""

    def __init__(self, status: int, tls: ssl.SSLContext | None = None):
        self.status, self.requests, self.last_headers = status, 0, {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.startswith("/v2/models/") and self.path.endswith("/infer"):
                    stub.requests += 1
                    stub.last_headers = dict(self.headers)
                    self.reply(stub.status, {"error": f"stub answers {stub.status}"})
                else:
                    self.reply(404, {"error": "not found"})

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_on_503_but_not_on_400(files):
    image = files["png0"]
    with StubServer(status=503) as stub:
        with FracScanClient(stub.url, retries=2) as client, pytest.raises(FracScanServerError) as info:
            client.predict(image)
        assert stub.requests == 3 and info.value.status == "503" and info.value.retryable
        stub.requests = 0
        asyncio.run(_async_predict_raises(stub.url, image, FracScanServerError, retries=2))
        assert stub.requests == 3

        stub.status, stub.requests = 429, 0  # queue full
        with FracScanClient(stub.url, retries=1) as client, pytest.raises(FracScanServerError):
            client.predict(image)
        assert stub.requests == 2

        stub.status, stub.requests = 400, 0
        with (
            FracScanClient(stub.url, retries=3) as client,
            pytest.raises(InputRejected, match="stub answers 400") as info,
        ):
            client.predict(image)
        assert stub.requests == 1 and info.value.kind == "rejected"
        asyncio.run(_async_predict_raises(stub.url, image, InputRejected, retries=3))
        assert stub.requests == 2

        stub.status, stub.requests = 500, 0
        with FracScanClient(stub.url, retries=3) as client, pytest.raises(FracScanServerError) as info:
            client.predict(image)
        assert stub.requests == 1 and not info.value.retryable


def test_headers_and_https(files, tmp_path):
    """Extra headers reach the server; https verifies the server against ca_file, or not with insecure=True."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    headers = {"X-Fracscan-Test": "pacs-42"}
    with StubServer(status=400, tls=server_tls) as stub:
        for options in ({"ca_file": str(cert)}, {"insecure": True}):
            with FracScanClient(stub.url, headers=headers, **options) as client, pytest.raises(InputRejected):
                client.predict(files["png0"])
            assert stub.last_headers.get("X-Fracscan-Test") == "pacs-42"
            stub.last_headers = {}
            asyncio.run(_async_predict_raises(stub.url, files["png0"], InputRejected, headers=headers, **options))
            assert stub.last_headers.get("X-Fracscan-Test") == "pacs-42"
        assert stub.requests == 4
        with FracScanClient(stub.url, retries=3) as client, pytest.raises(FracScanConnectionError, match="certificate"):
            client.predict(files["png0"])  # not trusted: a clear error, not retried
        asyncio.run(_async_predict_raises(stub.url, files["png0"], FracScanConnectionError, retries=3))
        assert stub.requests == 4
    with pytest.raises(ValueError, match="grpcs"):
        FracScanClient("grpcs://127.0.0.1:1", insecure=True)


async def _async_predict_raises(url, source, error, **options):
    async with AsyncFracScanClient(url, **options) as client:
        with pytest.raises(error):
            await client.predict(source)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_server_not_up_is_a_connection_error_within_the_connect_timeout(scheme, files):
    url = dead_url(scheme)
    started = time.monotonic()
    with FracScanClient(url, connect_timeout=2.0) as client, pytest.raises(FracScanConnectionError) as info:
        client.predict(files["png0"])  # refused: 1 try + 3 retries with backoff, all inside the connect timeout
    assert time.monotonic() - started < 2.0
    assert isinstance(info.value, ConnectionError) and url in str(info.value)

    started = time.monotonic()
    asyncio.run(_async_predict_raises(url, files["png0"], FracScanConnectionError, connect_timeout=2.0))
    assert time.monotonic() - started < 2.0

    with unreachable_url(scheme) as hanging:  # nobody completes the handshake: the connect timeout fires
        started = time.monotonic()
        with (
            FracScanClient(hanging, connect_timeout=1.0, timeout=30.0, retries=0) as client,
            pytest.raises(FracScanConnectionError),
        ):
            client.predict(files["png0"])
        assert 0.8 < time.monotonic() - started < 3.0
        if scheme == "http":
            started = time.monotonic()
            asyncio.run(
                _async_predict_raises(
                    hanging, files["png0"], FracScanConnectionError, connect_timeout=1.0, timeout=30.0, retries=0
                )
            )
            assert 0.8 < time.monotonic() - started < 3.0


def test_failover_when_one_url_is_down(server, files):
    with FracScanClient([dead_url("http"), server.http_url], retries=0) as client:
        results = [client.predict(files[GOOD[i % len(GOOD)]]) for i in range(8)]
        results += list(client.predict_many([files[n] for n in GOOD * 3], concurrency=4))
        assert all(r.ok for r in results)
    with FracScanClient(f"{server.grpc_url},{dead_url('grpc')}", retries=0) as client:  # comma-separated
        assert all(r.ok for r in client.predict_many([files[n] for n in GOOD * 3], concurrency=4))
        assert [e["live"] for e in client.server_info()["endpoints"]] == [True, False]

    async def run():
        async with AsyncFracScanClient([dead_url("grpc"), server.grpc_url, dead_url("grpc")], retries=0) as client:
            return [r async for r in client.predict_many([files[n] for n in GOOD * 2], concurrency=4)]

    assert all(r.ok for r in asyncio.run(run()))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wait_until_ready_and_server_info(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with FracScanClient(url) as client:
        client.wait_until_ready(timeout=10)
        info = client.server_info()
    assert info["live"] and info["ready"] and info["model_ready"] and info["server_version"]
    assert info["url"] == url and info["protocol"] == protocol
    states = {m["name"]: (m["version"], m["state"]) for m in info["models"]}
    assert states["fracscan"] == ("1", "READY") and states["preprocess"] == ("1", "READY")

    with FracScanClient(dead_url(protocol)) as client:
        started = time.monotonic()
        with pytest.raises(FracScanConnectionError, match="not ready after 1 s"):
            client.wait_until_ready(timeout=1)
        assert time.monotonic() - started < 3
        with pytest.raises(FracScanConnectionError, match="no server reachable"):
            client.server_info()
    with (
        FracScanClient(url, model="no_such_model") as client,
        pytest.raises(FracScanConnectionError, match="no_such_model"),
    ):
        client.wait_until_ready(timeout=0.5)
