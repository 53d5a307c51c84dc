"""Every answer names the model that made it, and no answer comes from the wrong one.

Subprocesses and real embedded servers: the shared demo server of the test run, and a small clinical repository
(two of the demo's member files under another spec) that is served, recalibrated and redeployed on
the same ports, then re-exported with random weights.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import EXAMPLES, ROOT
from pydicom.uid import generate_uid

from fracscan import provenance
from fracscan.client import ExpectedModel, FracScanClient, ModelIdentity, WrongModel
from fracscan.export.repository import install_thresholds
from fracscan.postprocess import OperatingPoint, Thresholds
from fracscan.server import DEMO_REPOSITORY, OLCZAK_DEMO_REPOSITORY, EmbeddedServer

FRACSCAN = [sys.executable, "-m", "fracscan.cli"]
WRIST = EXAMPLES / "wrist_fracture.dcm"
DEMO_HEAD = (ROOT / "demo" / "demo.toml").read_text().split("[[members]]")[0]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*FRACSCAN, *args], capture_output=True, text=True, timeout=timeout, env=env)


def rows(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def identity_of(row: dict) -> tuple:
    return row["model_spec"], row["model_members"], row["model_thresholds"], tuple(row["model_flags"])


# --- the identity itself -------------------------------------------------------------------


def test_identity_text_round_trips_and_flags_keep_one_order():
    identity = ModelIdentity("wrist-v3", "0123456789abcdef", "fedcba9876543210", ("uncalibrated", "demo"))
    assert identity.flags == ("demo", "uncalibrated")
    assert identity.compact() == "wrist-v3@0123456789abcdef/fedcba9876543210+demo+uncalibrated"
    assert ModelIdentity.from_json(identity.to_text()) == identity
    assert identity.banners() == ("DEMO", "UNCALIBRATED")
    with pytest.raises(ValueError, match="unknown model identity flag"):
        ModelIdentity("x", "", "", ("clinical",))
    with pytest.raises(ValueError, match="not a model identity"):
        ModelIdentity.from_json("[1, 2]")


def test_expected_model_parses_spec_and_members_prefix():
    identity = ModelIdentity("demo", "569471531d30e22b", "208f1c29f6689360", ("demo",))
    assert ExpectedModel.parse("demo").matches(identity)
    assert ExpectedModel.parse("demo:5694").matches(identity)
    assert not ExpectedModel.parse("demo:5695").matches(identity)
    assert not ExpectedModel.parse("olczak_demo").matches(identity)
    assert not ExpectedModel.parse("demo").matches(None)
    for bad in ("", ":abcd", "demo:xyz"):
        with pytest.raises(ValueError, match="SPEC:MEMBERS_HASH"):
            ExpectedModel.parse(bad)


def test_thresholds_hash_follows_content_not_layout(tmp_path):
    raw = json.loads((DEMO_REPOSITORY / "thresholds.json").read_text())
    reordered = json.loads(json.dumps(raw, sort_keys=True, indent=7))
    assert provenance.thresholds_hash(reordered) == provenance.thresholds_hash(raw)
    raw["regions"]["wrist"]["threshold"] += 1e-9
    assert provenance.thresholds_hash(raw) != provenance.thresholds_hash(reordered)
    assert len(provenance.thresholds_hash(raw)) == 16


# --- the server says who answered ---------------------------------------------------------------


def test_demo_rows_carry_the_identity_of_their_answer(server):
    result = run("predict", str(WRIST), "--url", server.http_url, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    (row,) = rows(result)
    record = json.loads((DEMO_REPOSITORY / "provenance.json").read_text())
    assert row["model_spec"] == "demo" and row["model_members"] == record["members_hash"]
    assert row["model_thresholds"] == record["thresholds_hash"] and row["model_flags"] == ["demo"]
    table = run("predict", str(WRIST), "--url", server.http_url, "--format", "table")
    assert f"demo@{record['members_hash']}/{record['thresholds_hash']}+demo" in table.stdout.replace("\n", "")
    table_csv = run("predict", str(WRIST), "--url", server.http_url, "--format", "csv")
    (line,) = csv.DictReader(io.StringIO(table_csv.stdout))
    assert (line["model_spec"], line["model_flags"]) == ("demo", "demo")


def test_another_repository_than_the_served_one_is_refused(server):
    """The Olczak repository asked of a server that serves the Jones demo: exit 2, naming both."""
    result = run("predict", str(WRIST), "--url", server.http_url, "--repository", str(OLCZAK_DEMO_REPOSITORY))
    assert result.returncode == 2, result.stderr
    assert "serves demo@" in result.stderr and "olczak_demo" in result.stderr
    assert (
        "--url" in result.stderr and "stop the server" in result.stderr and "--embedded without --url" in result.stderr
    )
    assert result.stdout == ""
    wrong = run("predict", str(WRIST), "--url", server.http_url, "--expect-model", "olczak_demo")
    assert wrong.returncode == 2 and "not the expected model olczak_demo" in wrong.stderr
    right = run("predict", str(WRIST), "--url", server.http_url, "--expect-model", "demo:5694")
    assert right.returncode == 0, right.stderr
    with FracScanClient(server.http_url, expect_model="olczak_demo") as client, pytest.raises(WrongModel):
        client.predict(WRIST)


def test_embedded_without_url_serves_the_repository_asked_for_on_free_ports():
    """Never whatever listens on :8000: its own server on free ports, answering with the Olczak model."""
    result = run("predict", str(WRIST), "--embedded", "--repository", str(OLCZAK_DEMO_REPOSITORY), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert "(free ports)" in result.stderr
    (row,) = rows(result)
    assert row["model_spec"] == "olczak_demo" and row["model_flags"] == ["demo"]
    assert row["model_members"] == provenance.identity(OLCZAK_DEMO_REPOSITORY).members


# --- one repository: uncalibrated, recalibrated, redeployed, random weights ----------------------


def clinic_repository(tmp_path: Path) -> Path:
    """Two of the demo's member files under a spec that is not the demo, exported (uncalibrated)."""
    head = DEMO_HEAD.replace('name = "demo"', 'name = "clinic"').replace("demo = true", "")
    members = ""
    for i, (channel, name) in enumerate((("plain", "a"), ("lcn", "b"))):
        onnx = DEMO_REPOSITORY / f"member_{i:02d}" / "1" / "model.onnx"
        members += f'[[members]]\nname = "{name}"\narch = "drn_d_22"\nwidth = 0.125\ninput = "{channel}"\n'
        members += f'map = true\nonnx = "{onnx}"\n\n'
    (tmp_path / "clinic.toml").write_text(head + members)
    out = tmp_path / "repo"
    result = run("export", "--spec", str(tmp_path / "clinic.toml"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def sr_uids(folder: Path) -> dict[str, str]:
    return {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(folder.iterdir())}


def test_rows_overlays_and_result_uids_follow_the_model_across_redeploys(server, tmp_path):
    repo = clinic_repository(tmp_path)
    clinic = EmbeddedServer(repo, log_path=tmp_path / "clinic.log")
    clinic.start()
    try:
        with FracScanClient(clinic.http_url) as client:
            before = client.predict(WRIST)
            assert before.model_identity.spec == "clinic" and before.model_identity.flags == ("uncalibrated",)

            # fail-over URLs that serve different models are refused before the first request
            both = FracScanClient([clinic.http_url, server.http_url], expect_model="clinic")
            with both, pytest.raises(WrongModel, match="serve different models"):
                both.predict(WRIST)

            # the uncalibrated overlay draws UNCALIBRATED (text chunk and a red band across the bottom)
            overlays = tmp_path / "overlays"
            drawn = run("predict", str(WRIST), "--url", clinic.http_url, "--overlay-dir", str(overlays))
            assert drawn.returncode == 0, drawn.stderr
            (png,) = overlays.glob("*.png")
            from PIL import Image

            with Image.open(png) as image:
                assert image.text["fracscan:banner"] == "UNCALIBRATED"
                assert image.text["fracscan:model"] == before.model_identity.compact()
                bottom = np.asarray(image.convert("RGB"))[-3]
            red = np.all(np.abs(bottom.astype(int) - (200, 0, 0)) < 8, axis=1).mean()
            assert red > 0.5, "no banner across the bottom"

            first_sr, rerun_sr, region_sr = (tmp_path / n for n in ("sr1", "sr2", "sr_region"))
            for folder, extra in ((first_sr, ()), (rerun_sr, ()), (region_sr, ("--region", "femur"))):
                done = run("predict", str(WRIST), "--url", clinic.http_url, "--sr-dir", str(folder), *extra)
                assert done.returncode == 0, done.stderr

            # recalibrated and redeployed on the same ports: the same client's next answer names the new thresholds
            clinic.stop()
            point = OperatingPoint(0.05, 0.5)
            calibrated = Thresholds({"wrist": point}, point, {"calibrated": True, "date": "2026-12-01T00:00:00+00:00"})
            install_thresholds(repo, calibrated)
            clinic.start()
            after = client.predict(WRIST)
            assert after.model_identity.spec == "clinic" and after.model_identity.flags == ()
            assert after.model_identity.members == before.model_identity.members
            assert after.model_identity.thresholds != before.model_identity.thresholds
            assert after.model_identity.thresholds == provenance.identity(repo).thresholds
            recalibrated_sr = tmp_path / "sr3"
            done = run("predict", str(WRIST), "--url", clinic.http_url, "--sr-dir", str(recalibrated_sr))
            assert done.returncode == 0, done.stderr
            assert provenance.read(repo).calibrated_at == "2026-12-01T00:00:00+00:00"

        first = sr_uids(first_sr)
        assert len(first) == 3 and len(set(first.values())) == 3
        assert sr_uids(rerun_sr) == first  # a plain rerun keeps every UID
        assert not set(sr_uids(region_sr).values()) & set(first.values())  # --region femur: new UIDs
        assert not set(sr_uids(recalibrated_sr).values()) & set(first.values())  # recalibrated: new UIDs
        sc = pydicom.dcmread(next(recalibrated_sr.glob("*.sc.dcm")))
        assert "UNCALIBRATED" not in sc.SeriesDescription
        assert "UNCALIBRATED" in pydicom.dcmread(next(first_sr.glob("*.sc.dcm"))).SeriesDescription

        # random weights: re-exported with untrained members, served again on the same ports
        pytest.importorskip("torch")
        clinic.stop()
        result = run("export", "--spec", str(tmp_path / "clinic.toml"), "-o", str(repo), "--random-init")
        assert result.returncode == 0, result.stderr
        clinic.start()
        answer = run("predict", str(WRIST), "--url", clinic.http_url, "--format", "jsonl")
        (row,) = rows(answer)
        assert row["model_spec"] == "clinic" and "random_weights" in row["model_flags"]
        assert row["model_members"] != before.model_identity.members
    finally:
        clinic.stop()


# --- failures are not silent ----------------------------------------------------------------------


@pytest.fixture
def tiny_folder(tmp_path):
    """A 64 KiB tmpfs: room for an SR, not for a Secondary Capture or an overlay of a radiograph."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_result_folder_fails_the_input_with_its_reason(server, tiny_folder, tmp_path):
    source = tmp_path / "wrist.dcm"
    shutil.copy(WRIST, source)
    for option in ("--sr-dir", "--overlay-dir"):
        target = tiny_folder / option.strip("-")
        result = run("predict", str(source), "--url", server.http_url, option, str(target), "--format", "jsonl")
        assert result.returncode == 1, (option, result.stderr)
        (row,) = rows(result)
        assert row["status"] == "error" and row["model_spec"] == "demo"  # the answer is kept beside the error
        assert row["error"].startswith("scored (score ") and "No space left on device" in row["error"]
        assert f"failed: {source}" in result.stderr and "No space left on device" in result.stderr


def test_a_pacs_stopped_mid_run_fails_the_inputs_it_did_not_store(server, tmp_path):
    """predict --dicomweb --store; Orthanc is killed (by PID) after the first row: the later inputs are errors
    with their reasons (not retrieved, or scored but not stored), and the run exits 1.

    (dicomweb-client retries a refused connection with exponential backoff, ~30 s a request: hence few instances.)
    """
    from test_pacs_orthanc import Orthanc
    from test_pacs_writers import make_study

    from fracscan.server import free_port

    names = ("wrist_fracture.dcm", "hand_normal_mono1.dcm", "knee_normal_j2k_lossy.dcm") * 2
    study_uid, paths = make_study(tmp_path / "study", tuple(names[:3]), seed="stopped")
    patient = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for i, name in enumerate(names[3:]):  # six instances of one study: the run outlasts the kill
        ds = pydicom.dcmread(EXAMPLES / name)
        for attribute in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID"):
            setattr(ds, attribute, patient.get(attribute))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=["fracscan-test", "stopped", str(i)]
        )
        ds.save_as(tmp_path / "study" / f"extra_{i}.dcm")
        paths.append(tmp_path / "study" / f"extra_{i}.dcm")
    (tmp_path / "pacs").mkdir()
    pacs = Orthanc(tmp_path / "pacs", free_port()).start()
    try:
        pacs.upload(paths)
        command = [*FRACSCAN, "predict", "--dicomweb", pacs.dicomweb, "--study", study_uid, "--store"]
        command += ["--url", server.http_url, "--format", "jsonl", "--concurrency", "1"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = json.loads(proc.stdout.readline())
        os.kill(pacs.process.pid, signal.SIGKILL)
        pacs.process.wait(10)
        rest, stderr = proc.communicate(timeout=300)
    finally:
        pacs.stop()
    assert first["status"] == "ok", first
    later = [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 1, stderr
    failed = [row for row in later if row["status"] == "error"]
    assert len(later) == 5 and len(failed) >= 2 and all(row["error"] for row in failed), later
    assert any("STOW-RS" in row["error"] or "cannot retrieve" in row["error"] for row in failed)
    for row in failed:
        assert f"failed: {row['source']}" in stderr
