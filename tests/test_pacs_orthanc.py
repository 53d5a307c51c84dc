"""Both routes into a real PACS: Orthanc C-STOREs a study to `fracscan listen`, and `predict --dicomweb --store`.

Orthanc (Debian `orthanc` + `orthanc-dicomweb`, installed by `make system-deps`) runs on free ports
with its storage in a temporary folder; its DicomModalities entry points at the listener. Each test
files its own study, so the counts it checks are its own.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_pacs_writers import EXAMPLE_DICOMS, assert_no_phi, check_sr_against_answer, make_study

from fracscan.server import free_port

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
LISTENER_AET = "FRACSCAN"
KINDS = {"SR": "sr", "PR": "gsps", "OT": "sc"}  # Orthanc's series Modality -> result kind


def dicomweb_plugin() -> Path:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    pytest.fail("Orthanc's DICOMweb plug-in is not installed: run `make system-deps` (Debian orthanc-dicomweb)")


class Orthanc:
    """One Orthanc on free ports, storage in `root`, with the listener as the modality `fracscan`."""

    def __init__(self, root: Path, listener_port: int):
        self.root, self.listener_port = root, listener_port
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log = root / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        config = {
            "Name": "fracscan-test",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {"fracscan": [LISTENER_AET, "127.0.0.1", self.listener_port]},
            "StableAge": 1,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(["Orthanc", str(self.root / "orthanc.json")], stdout=log, stderr=log)
        wait_for(lambda: self._up(), 30, "Orthanc did not start; see " + str(self.log))
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"Orthanc exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def upload(self, paths: list[Path]) -> str:
        """Store the files; returns the Orthanc id of their (one) study."""
        studies = {
            httpx.post(f"{self.url}/instances", content=p.read_bytes(), timeout=30).json()["ParentStudy"] for p in paths
        }
        (study,) = studies
        return study

    def store_to_listener(self, study: str) -> dict:
        """Orthanc's REST "store to modality": Orthanc itself C-STOREs the study to `fracscan listen`."""
        body = {"Resources": [study], "Synchronous": True}
        response = httpx.post(f"{self.url}/modalities/fracscan/store", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    def results(self, study: str) -> dict[str, Counter]:
        """For each scored source SOP Instance UID: how many SR / GSPS / SC of ours the study holds."""
        found: dict[str, Counter] = {}
        for series in httpx.get(f"{self.url}/studies/{study}/series?expand", timeout=30).json():
            kind = KINDS.get(series["MainDicomTags"].get("Modality", ""))
            if kind is None:
                continue
            for instance in series["Instances"]:
                ds = self.dataset(instance)
                found.setdefault(source_of(ds), Counter())[kind] += 1
        return found

    def dataset(self, instance: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(httpx.get(f"{self.url}/instances/{instance}/file", timeout=30).content))

    def sr_for(self, study: str, source_sop_uid: str) -> pydicom.Dataset:
        for series in httpx.get(f"{self.url}/studies/{study}/series?expand", timeout=30).json():
            if series["MainDicomTags"].get("Modality") == "SR":
                for instance in series["Instances"]:
                    ds = self.dataset(instance)
                    if source_of(ds) == source_sop_uid:
                        return ds
        raise AssertionError(f"no SR for {source_sop_uid}")


def source_of(result: pydicom.Dataset) -> str:
    """The source image a result of ours references (SR evidence, GSPS referenced image, SC source image)."""
    if "CurrentRequestedProcedureEvidenceSequence" in result:
        return (
            result.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
    if "ReferencedSeriesSequence" in result:
        return result.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    return result.SourceImageSequence[0].ReferencedSOPInstanceUID


def wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.3)


@pytest.fixture(scope="module")
def listener_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, listener_port, server) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"), listener_port).start()
    yield pacs
    pacs.stop()


@contextmanager
def listening(port: int, url: str, pacs: Orthanc, spool: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`fracscan listen` as a subprocess, appending its log to `log`; stopped (SIGTERM) afterwards."""
    command = [sys.executable, "-m", "fracscan.cli", "listen", "--ae-title", LISTENER_AET, "--port", str(port)]
    command += ["--host", "127.0.0.1", "--url", url, "--store-to", f"ORTHANC@127.0.0.1:{pacs.dicom_port}"]
    command += ["--spool", str(spool), "--timeout", "10"]
    command += ["--allow", "ORTHANC@127.0.0.1", "--allow", "ECHOSCU@127.0.0.1"]  # Orthanc calls as its DicomAet
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        wait_for(lambda: f"port {port}" in log.read_text() or process.poll() is not None, 60, "listener did not start")
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def filed_study(
    tmp_path: Path, pacs: Orthanc, seed: str, names: tuple[str, ...] = EXAMPLE_DICOMS
) -> tuple[str, str, list[Path]]:
    study_uid, paths = make_study(tmp_path / seed, names, seed=seed)
    return study_uid, pacs.upload(paths), paths


def one_of_each(pacs: Orthanc, study: str, paths: list[Path]) -> bool:
    results = pacs.results(study)
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    return set(results) == expected and all(c == Counter(sr=1, gsps=1, sc=1) for c in results.values())


def test_orthanc_stores_a_study_to_the_listener_and_gets_sr_gsps_sc_back(server, orthanc, listener_port, tmp_path):
    _, study, paths = filed_study(tmp_path, orthanc, "dimse")
    log = tmp_path / "listener.log"
    with listening(listener_port, server.http_url, orthanc, tmp_path / "spool", log):
        echo = AE(ae_title="ECHOSCU")
        echo.add_requested_context(Verification)
        assoc = echo.associate("127.0.0.1", listener_port, ae_title=LISTENER_AET)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000  # Verification
        assoc.release()
        reply = orthanc.store_to_listener(study)
        assert reply["InstancesCount"] == len(paths) and reply["FailedInstancesCount"] == 0
        wait_for(lambda: one_of_each(orthanc, study, paths), 90, f"results did not arrive: {log.read_text()[-3000:]}")
    from fracscan.client import FracScanClient

    with FracScanClient(server.http_url) as client:
        for path in paths:
            answer = client.predict(path).to_dict()
            sop = answer["sop_instance_uid"]
            check_sr_against_answer(orthanc.sr_for(study, sop), answer, sop)
    assert_no_phi(log.read_text(errors="replace"), server.log_path.read_text(errors="replace"))


def test_a_listener_killed_after_acknowledging_loses_nothing(server, orthanc, listener_port, tmp_path):
    _, study, paths = filed_study(tmp_path, orthanc, "killed")
    spool, log = tmp_path / "spool", tmp_path / "listener.log"
    dead_server = f"http://127.0.0.1:{free_port()}"  # acknowledged and spooled, but nothing can be scored yet
    with listening(listener_port, dead_server, orthanc, spool, log) as first:
        orthanc.store_to_listener(study)  # synchronous: every instance was acknowledged
        assert len(list((spool / "incoming").glob("*.dcm"))) == len(paths)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert orthanc.results(study) == {}  # nothing was stored before the kill ...
    assert len(list((spool / "incoming").glob("*.dcm"))) == len(paths)  # ... and nothing was lost
    with listening(listener_port, server.http_url, orthanc, spool, log):
        wait_for(
            lambda: one_of_each(orthanc, study, paths), 90, f"the spool was not finished: {log.read_text()[-3000:]}"
        )
        wait_for(lambda: not list((spool / "incoming").glob("*.dcm")), 30, "the spool was not emptied")
        stored_before = log.read_text().count("stored to")
        orthanc.store_to_listener(study)  # again, results included: the images are redone, the results skipped
        wait_for(
            lambda: log.read_text().count("stored to") >= stored_before + len(paths), 90, "the repeat was not done"
        )
        wait_for(lambda: not list((spool / "incoming").glob("*.dcm")), 30, "the spool was not emptied")
    assert one_of_each(orthanc, study, paths)  # deterministic UIDs: the repeat replaced, nothing doubled
    text = log.read_text(errors="replace")
    assert "spool holds 3 instance(s) from before" in text
    assert "not scored: a fracscan result" in text


def test_predict_dicomweb_store_puts_the_results_into_the_study(server, orthanc, tmp_path):
    study_uid, study, paths = filed_study(tmp_path, orthanc, "web", ("wrist_fracture.dcm", "hand_normal_mono1.dcm"))
    command = [sys.executable, "-m", "fracscan.cli", "predict", "--dicomweb", orthanc.dicomweb, "--study", study_uid]
    command += ["--store", "--url", server.http_url, "--format", "jsonl"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(rows) == len(paths) and all(r["source"].startswith(f"dicomweb:{study_uid}/") for r in rows)
    assert one_of_each(orthanc, study, paths)
    for row in rows:
        sop = row["source"].rsplit("/", 1)[1]
        check_sr_against_answer(orthanc.sr_for(study, sop), row, sop)
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "a fracscan result" in again.stderr and "not an image" in again.stderr  # its own results are not scored
    assert [json.loads(line)["score"] for line in again.stdout.splitlines()] == [r["score"] for r in rows]
    assert one_of_each(orthanc, study, paths)
    assert_no_phi(first.stdout, first.stderr, again.stdout, again.stderr)
