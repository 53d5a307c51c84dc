"""`fracscan listen` as a PACS administrator would connect it, driven by dcmtk's storescu / echoscu.

A real `fracscan listen` subprocess, the real embedded server, a real Orthanc as the destination: who
may connect (allow-list, TLS), what is scored (projection radiographs only), the spool on a full disk,
"not analysed" reports, starvation by idle connections, a destination outage, the status file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import EXAMPLES
from pydicom import uid
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_pacs_orthanc import Orthanc, one_of_each, wait_for
from test_pacs_writers import PHI, assert_no_phi, make_study

from fracscan.server import free_port

NODE_AET, SENDER = "FRACSCAN", "STORESCU"
pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (storescu, echoscu) is not installed")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, server) -> Iterator[Orthanc]:
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port()).start()
    yield orthanc
    orthanc.stop()


@dataclass
class Node:
    process: subprocess.Popen
    port: int
    log: Path
    spool: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 60, count: int = 1) -> None:
        wait_for(
            lambda: len(re.findall(pattern, self.text())) >= count,
            timeout,
            f"no {count} x {pattern!r} in the log: {self.text()[-3000:]}",
        )


@contextmanager
def node(tmp_path: Path, url: str, pacs: Orthanc, *options: str, spool: Path | None = None) -> Iterator[Node]:
    """`fracscan listen` on a free port storing to `pacs`; stopped with SIGTERM afterwards."""
    port, log = free_port(), tmp_path / f"node-{time.monotonic_ns()}.log"
    spool = spool or tmp_path / "spool"
    command = [sys.executable, "-m", "fracscan.cli", "listen", "--ae-title", NODE_AET, "--port", str(port)]
    command += ["--url", url, "--store-to", f"ORTHANC@127.0.0.1:{pacs.dicom_port}", "--spool", str(spool)]
    command += ["--timeout", "10", *options]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    running = Node(process, port, log, spool)
    try:
        wait_for(lambda: f"port {port}" in running.text() or process.poll() is not None, 60, "listener did not start")
        assert process.poll() is None, running.text()
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def storescu(port: int, *files: Path, aet: str = SENDER, options: tuple[str, ...] = ()) -> list[str]:
    """Send with dcmtk's storescu (JPEG 2000 as it is); the C-STORE status of each file, in order (e.g. "Success")."""
    command = ["storescu", "-v", "-xv", "-aet", aet, "-aec", NODE_AET, *options, "127.0.0.1", str(port)]
    command += map(str, files)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return re.findall(r"Received Store Response \(([^)]*)\)", done.stdout + done.stderr) or [
        f"no association (exit {done.returncode}): {(done.stdout + done.stderr)[-500:]}"
    ]


def echoscu(port: int, aet: str = SENDER, options: tuple[str, ...] = ()) -> int:
    command = ["echoscu", "-aet", aet, "-aec", NODE_AET, *options, "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, timeout=60).returncode


def study_in(pacs: Orthanc, study_uid: str) -> list[dict]:
    """What Orthanc holds of a study, by its Study Instance UID (the sources were never uploaded)."""
    found = httpx.post(f"{pacs.url}/tools/lookup", content=study_uid, timeout=30).json()
    return [f for f in found if f["Type"] == "Study"]


def associate_from(address: str, port: int, aet: str) -> bool:
    """A pynetdicom requestor bound to `address` (another loopback address): was the association accepted?"""
    requestor = AE(ae_title=aet)
    requestor.add_requested_context(Verification)
    requestor.acse_timeout = requestor.network_timeout = 10
    assoc = requestor.associate("127.0.0.1", port, ae_title=NODE_AET, bind_address=(address, 0))
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def listen_refuses(*options: str) -> str:
    command = [sys.executable, "-m", "fracscan.cli", "listen", "--port", str(free_port()), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_bare_ae_title_and_an_empty_allow_list_are_refused_at_start():
    assert "STORESCU@HOST" in listen_refuses("--allow", "STORESCU")
    assert "--allow AET@HOST" in listen_refuses()


def test_unlisted_ae_or_host_is_rejected_logged_and_nothing_reaches_the_pacs(server, pacs, tmp_path):
    study_uid, paths = make_study(tmp_path / "src", ("wrist_fracture.dcm",), seed="intruder")
    allowed = ("--allow", f"{SENDER}@127.0.0.1", "--allow", "OTHER@127.0.0.2")
    with node(tmp_path, server.http_url, pacs, *allowed) as running:
        assert storescu(running.port, *paths, aet="INTRUDER")[0].startswith("no association")
        assert not associate_from("127.0.0.2", running.port, SENDER)  # a listed AE title, but not from there
        assert not associate_from("127.0.0.3", running.port, SENDER)  # an address no entry names
        assert echoscu(running.port, options=("-aec", "SOMEONE")) != 0  # called AE title not ours
        assert echoscu(running.port) == 0
        running.wait_log("called 'SOMEONE'")
        time.sleep(2)
        text = running.text()
    assert "association rejected: calling 'INTRUDER' called 'FRACSCAN' from 127.0.0.1" in text
    assert "association rejected: calling 'STORESCU' called 'FRACSCAN' from 127.0.0.2" in text
    assert "connection from 127.0.0.3 closed at once: address not on the allow-list" in text
    assert "association accepted: calling 'STORESCU' called 'FRACSCAN' from 127.0.0.1" in text
    assert not list((running.spool / "incoming").glob("*.dcm")) and study_in(pacs, study_uid) == []
    assert_no_phi(text)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA, and a server and a client certificate it signs (openssl)."""
    folder.mkdir()
    run = lambda *a: subprocess.run(["openssl", *a], cwd=folder, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=fracscan-test-ca")  # fmt: skip
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", "ext")  # fmt: skip
    return {name: folder / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_a_listed_peer_over_tls_gets_its_results_and_plain_tcp_is_refused(server, pacs, tmp_path):
    pem = make_certificates(tmp_path / "pki")
    study_uid, paths = make_study(tmp_path / "src", ("wrist_fracture.dcm",), seed="tls")
    tls = ("--tls-cert", str(pem["server.crt"]), "--tls-key", str(pem["server.key"]), "--tls-ca", str(pem["ca.crt"]))
    with node(
        tmp_path, server.http_url, pacs, "--allow", f"{SENDER}@127.0.0.1", *tls, "--tls-require-client-cert"
    ) as running:
        client_tls = ("+tls", str(pem["client.key"]), str(pem["client.crt"]), "+cf", str(pem["ca.crt"]))
        assert storescu(running.port, *paths, options=client_tls) == ["Success"]
        assert storescu(running.port, *paths)[0].startswith("no association")  # no TLS
        assert echoscu(running.port, options=("+tla", "+cf", str(pem["ca.crt"]))) != 0  # TLS, but no client certificate
        wait_for(lambda: len(study_in(pacs, study_uid)) == 1, 90, f"no results: {running.text()[-3000:]}")
        study = study_in(pacs, study_uid)[0]["ID"]
        wait_for(lambda: one_of_each(pacs, study, paths), 60, f"results incomplete: {running.text()[-3000:]}")
        text = running.text()
    assert "association accepted: calling 'STORESCU' called 'FRACSCAN' from 127.0.0.1 over TLS" in text
    assert "TLS handshake failed" in text
    assert_no_phi(text)


def variant(source: Path, folder: Path, name: str, sop_class: str, modality: str, colour: bool = False) -> Path:
    """`source` re-labelled as another kind of instance (another SOP class, modality, or colour pixels)."""
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(source), name])
    ds.Modality = modality
    if colour:
        gray = (ds.pixel_array >> max(int(ds.BitsStored) - 8, 0)).astype(np.uint8)
        ds.PixelData = np.repeat(gray[..., None], 3, axis=2).tobytes()
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    if name == "test_pattern":  # a grayscale bar pattern, as a Secondary Capture of an "other" modality
        bars = (np.arange(int(ds.Columns)) * 4096 // int(ds.Columns)).astype(np.uint16)
        ds.PixelData = np.tile(bars, (int(ds.Rows), 1)).astype(ds.pixel_array.dtype).tobytes()
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


NOT_RADIOGRAPHS = {
    "ct": (uid.CTImageStorage, "CT", False, "SOP Class 'CT Image Storage', Modality CT"),
    "mr": (uid.MRImageStorage, "MR", False, "SOP Class 'MR Image Storage', Modality MR"),
    "us": (uid.UltrasoundImageStorage, "US", False, "SOP Class 'Ultrasound Image Storage', Modality US"),
    "rgb": (uid.SecondaryCaptureImageStorage, "DX", True, "Photometric Interpretation RGB"),
    "test_pattern": (
        uid.SecondaryCaptureImageStorage,
        "OT",
        False,
        "SOP Class 'Secondary Capture Image Storage', Modality OT",
    ),
}


def test_ct_mr_us_colour_and_a_test_pattern_are_acknowledged_not_scored_and_logged_once(server, pacs, tmp_path):
    study_uid, (radiograph,) = make_study(tmp_path / "src", ("wrist_fracture.dcm",), seed="not-radiographs")
    paths = {name: variant(radiograph, tmp_path / "src", name, *spec[:3]) for name, spec in NOT_RADIOGRAPHS.items()}
    with node(tmp_path, server.http_url, pacs, "--allow", f"{SENDER}@127.0.0.1") as running:
        before = inferences(server)
        assert storescu(running.port, *paths.values()) == ["Success"] * len(paths)  # acknowledged
        running.wait_log("not scored", count=len(paths))
        time.sleep(3)  # anything queued would be scored and stored by now
        assert inferences(server) == before  # the server saw none of them
        text = running.text()
    for name, path in paths.items():
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        (line,) = [line for line in text.splitlines() if sop in line]
        assert "acknowledged, not scored" in line and NOT_RADIOGRAPHS[name][3] in line, line
    assert "spooled" not in text and "stored to" not in text
    assert study_in(pacs, study_uid) == [] and not list((running.spool / "incoming").glob("*.dcm"))
    assert_no_phi(text)


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def radiograph(folder: Path, name: str, study_uid: str, size: int | None = None, corrupt: bool = False) -> Path:
    """An example radiograph filed into `study_uid`: tiled up to size x size pixels, or with corrupt pixel data."""
    ds = pydicom.dcmread(EXAMPLES / ("ankle_fracture_j2k.dcm" if corrupt else "wrist_fracture.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study_uid, name])
    ds.PatientName, ds.PatientID = PHI["PatientName"], PHI["PatientID"]
    if size:
        ds.PixelData = np.resize(ds.pixel_array, (size, size)).astype(ds.pixel_array.dtype).tobytes()
        ds.Rows = ds.Columns = size
    if corrupt:  # the JPEG 2000 code stream replaced by noise of the same length: a readable header, no image
        fragments = list(pydicom.encaps.generate_fragments(ds.PixelData))
        noise = np.random.default_rng(7).integers(0, 256, len(fragments[0]), dtype=np.uint8).tobytes()
        ds.PixelData = pydicom.encaps.encapsulate([noise])
    path = folder / f"{name}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def tiny_tmpfs(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_spool_answers_out_of_resources_and_the_next_image_that_fits_succeeds(
    server, pacs, tmp_path, tiny_tmpfs
):
    study_uid = generate_uid(entropy_srcs=["fracscan-test", "tmpfs"])
    too_big = radiograph(tmp_path / "src", "too_big", study_uid, size=1100)  # 2.4 MB of pixels on a 2 MB disk
    fits = radiograph(tmp_path / "src", "fits", study_uid)
    spool = tiny_tmpfs / "spool"
    with node(tmp_path, server.http_url, pacs, "--allow", f"{SENDER}@127.0.0.1", spool=spool) as running:
        assert storescu(running.port, too_big) == ["Refused: OutOfResources"]
        assert [p.name for p in (spool / "incoming").iterdir()] == []  # the partial file went at once
        assert storescu(running.port, fits) == ["Success"]  # no restart
        wait_for(lambda: len(study_in(pacs, study_uid)) == 1, 90, f"no results: {running.text()[-3000:]}")
        study = study_in(pacs, study_uid)[0]["ID"]
        wait_for(lambda: one_of_each(pacs, study, [fits]), 60, f"results incomplete: {running.text()[-3000:]}")
        text = running.text()
    (line,) = [line for line in text.splitlines() if sop_of(too_big) in line]
    assert "0xA700" in line and re.search(r"\d+ bytes free", line), line
    assert (spool.stat().st_mode & 0o777, (spool / "incoming").stat().st_mode & 0o777) == (0o700, 0o700)


def test_a_spool_bound_refuses_beyond_it(server, pacs, tmp_path):
    study_uid = generate_uid(entropy_srcs=["fracscan-test", "spool-bound"])
    first, second = (radiograph(tmp_path / "src", name, study_uid) for name in ("first", "second"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing leaves the spool
    with node(tmp_path, dead, pacs, "--allow", f"{SENDER}@127.0.0.1", "--spool-max-bytes", "400000") as running:
        assert storescu(running.port, first, second) == ["Success", "Refused: OutOfResources"]
        running.wait_log("spool-max-bytes")
        (spooled,) = (running.spool / "incoming").glob("*.dcm")
        assert spooled.stat().st_mode & 0o777 == 0o600


def test_a_corrupt_radiograph_gets_a_not_analysed_sr_in_its_study(server, pacs, tmp_path):
    study_uid = generate_uid(entropy_srcs=["fracscan-test", "corrupt"])
    corrupt = radiograph(tmp_path / "src", "corrupt", study_uid, corrupt=True)
    with node(tmp_path, server.http_url, pacs, "--allow", f"{SENDER}@127.0.0.1") as running:
        assert storescu(
            running.port,
            corrupt,
        ) == ["Success"]
        wait_for(lambda: len(study_in(pacs, study_uid)) == 1, 90, f"no report: {running.text()[-3000:]}")
        running.wait_log("'not analysed' SR stored")
        text = running.text()
    (series,) = httpx.get(f"{pacs.url}/studies/{study_in(pacs, study_uid)[0]['ID']}/series?expand", timeout=30).json()
    (instance,) = series["Instances"]
    report = pacs.dataset(instance)
    assert report.Modality == "SR" and report.StudyInstanceUID == study_uid
    assert report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == sop_of(corrupt)
    (reason,) = [i.TextValue for i in report.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert reason.startswith("not analysed: ") and "score" not in reason.lower()
    saved = tmp_path / "report.dcm"
    report.save_as(saved, enforce_file_format=True)
    check = subprocess.run(["dciodvfy", str(saved)], capture_output=True, text=True, timeout=60)
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr
    failed = running.spool / "failed" / f"{sop_of(corrupt)}.dcm"
    assert failed.stat().st_mode & 0o777 == 0o600 and (running.spool / "failed").stat().st_mode & 0o777 == 0o700
    assert failed.with_suffix(".reason").read_text().startswith("not analysed: ")
    assert_no_phi(text, reason, failed.with_suffix(".reason").read_text())


def test_twelve_idle_connections_from_another_address_do_not_lock_out_the_allowed_peer(server, pacs, tmp_path):
    study_uid = generate_uid(entropy_srcs=["fracscan-test", "starve"])
    image = radiograph(tmp_path / "src", "starve", study_uid)
    allowed = ("--allow", f"{SENDER}@127.0.0.1", "--allow", "OTHER@127.0.0.2", "--idle-timeout", "3")
    with node(tmp_path, server.http_url, pacs, *allowed, "--max-per-address", "4") as running:
        idle = []
        for _ in range(12):  # connect and say nothing (no A-ASSOCIATE request)
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", running.port))
            idle.append(sock)
        time.sleep(0.5)
        assert echoscu(running.port) == 0  # first try, no retry
        assert storescu(running.port, image) == ["Success"]
        closed = 0
        for sock in idle:  # every one is closed: 8 at once (per-address limit), 4 after the idle timeout
            sock.settimeout(10)
            closed += sock.recv(1) == b""
            sock.close()
        assert closed == 12
        running.wait_log("SR, GSPS and SC stored")
        running.wait_log("connection from 127.0.0.2 closed at once")
        text = running.text()
    assert "connection from 127.0.0.2 closed at once: 4 connections from this address already open" in text
    assert len(re.findall("connection from 127.0.0.2 closed at once", text)) == 1  # rate-limited


def inferences(server) -> float:
    """Requests the ensemble answered so far (Triton's own counter: independent of the listener's log)."""
    text = httpx.get(server.metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('nv_inference_request_success{model="fracscan",')
    )


def node_status(spool: Path) -> dict:
    command = [sys.executable, "-m", "fracscan.cli", "listen", "--status", "--spool", str(spool)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_a_destination_outage_costs_one_inference_per_image_and_every_result_arrives_once(server, tmp_path):
    outage_pacs = Orthanc(tmp_path / "orthanc", free_port())
    (tmp_path / "orthanc").mkdir()
    outage_pacs.start()
    study_uid, paths = make_study(tmp_path / "src", seed="outage")
    try:
        options = ("--allow", f"{SENDER}@127.0.0.1", "--retry-max", "4")
        with node(tmp_path, server.http_url, outage_pacs, *options) as running:
            assert outage_pacs.process is not None
            os.kill(outage_pacs.process.pid, signal.SIGKILL)  # the destination goes away
            outage_pacs.process.wait(10)
            before = inferences(server)
            assert storescu(running.port, *paths) == ["Success"] * len(paths)
            running.wait_log("unavailable")
            time.sleep(20)
            assert inferences(server) - before == len(paths)  # scored once each, kept in the spool
            status = node_status(running.spool)
            assert status["queue_length"] == len(paths) and status["destination_down_since"]
            assert "ORTHANC@127.0.0.1" in status["last_destination_error"]["error"]
            outage_pacs.start()  # back, on the same ports with the same storage
            wait_for(lambda: len(study_in(outage_pacs, study_uid)) == 1, 60, f"no results: {running.text()[-3000:]}")
            study = study_in(outage_pacs, study_uid)[0]["ID"]
            wait_for(lambda: one_of_each(outage_pacs, study, paths), 60, f"incomplete: {running.text()[-3000:]}")
            running.wait_log("SR, GSPS and SC stored", count=len(paths))
            assert inferences(server) - before == len(paths)  # nothing was scored again
            wait_for(lambda: node_status(running.spool)["queue_length"] == 0, 15, "the status still shows a queue")
            text = running.text()
        assert text.count("unavailable") == 1 and text.count("available again") == 1  # once per outage
        assert len(re.findall("SR, GSPS and SC stored", text)) == len(paths)
        assert_no_phi(text)
    finally:
        outage_pacs.stop()
