"""Really scored DICOMs carrying patient, study and institution attributes, through the embedded server, by
`fracscan predict` and by the DICOM node's `--results-log`: the rows carry the acquisition facts and the time,
and neither the rows nor anything `fracscan monitor` writes holds an identifying value, a path or a UID.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts

from fracscan.demo.history import add_scored, history
from fracscan.server import free_port

ROOT = Path(__file__).resolve().parent.parent
IDENTIFYING = {
    "PatientName": "QUIXOTE^ALONSO",
    "PatientID": "PID-48151623",
    "PatientBirthDate": "19420314",
    "AccessionNumber": "ACC-77129",
    "StudyDate": "20260113",
    "StudyID": "STUDY-5521",
    "InstitutionName": "Hospital of La Mancha",
    "InstitutionAddress": "Calle Toboso 7, Argamasilla",
    "StationName": "XRAY-ROOM-3",
    "ReferringPhysicianName": "SANSON^CARRASCO",
}
NAMES = ("wrist_fracture.dcm", "hand_normal_mono1.dcm", "hip_fracture.dcm")


def make_inputs(folder: Path) -> tuple[list[Path], set[str]]:
    """The examples with identifying attributes, a new detector's header and a changed contrast."""
    folder.mkdir(parents=True)
    paths, uids = [], set()
    study = generate_uid()
    for name in NAMES:
        ds = pydicom.dcmread(ROOT / "examples" / name)
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        ds.Manufacturer, ds.ManufacturerModelName = "Acme Imaging", "NovaDR 2"
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        pixels = ds.pixel_array.astype(np.float64)
        ds.PixelData = (
            np.clip(pixels * 1.6 - pixels.mean() * 0.6, 0, 2**ds.BitsStored - 1).astype(ds.pixel_array.dtype).tobytes()
        )
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        uids |= {ds.StudyInstanceUID, ds.SOPInstanceUID, str(ds.SeriesInstanceUID)}
        path = folder / name
        ds.save_as(path)
        paths.append(path)
    return paths, uids


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def assert_clean(text: str, *also: str) -> None:
    for keyword, value in IDENTIFYING.items():
        assert value not in text, f"{keyword} leaked"
        for part in value.split("^"):
            assert part not in text, f"part of {keyword} leaked"
    for value in also:
        assert value not in text


def listener_rows(paths: list[Path], url: str, tmp_path: Path) -> list[dict]:
    from fracscan.pacs.access import AllowList
    from fracscan.pacs.listener import Listener, ListenerConfig

    port, log = free_port(), tmp_path / "node.jsonl"
    allow = AllowList.parse(["MODALITY@127.0.0.1"])
    config = ListenerConfig("FRACSCAN", port, url, tmp_path / "spool", host="127.0.0.1", allow=allow, results_log=log)
    node = Listener(config)
    node.start()
    worker = threading.Thread(target=node.serve, daemon=True)
    worker.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.requested_contexts = StoragePresentationContexts[:120]
        assoc = ae.associate("127.0.0.1", port, ae_title="FRACSCAN")
        assert assoc.is_established
        for path in paths:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        assoc.release()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < len(paths)):
            time.sleep(0.3)
    finally:
        node.stop()
        worker.join(60)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_scored_dicoms_carry_acquisition_facts_and_no_identifier_reaches_any_output(server, tmp_path):
    paths, uids = make_inputs(tmp_path / "in")
    rows_path, csv_path = tmp_path / "rows.jsonl", tmp_path / "rows.csv"
    predicted = run("predict", *paths, "--url", server.http_url, "--format", "jsonl", "--output", rows_path)
    assert predicted.returncode == 0, predicted.stderr
    assert run("predict", *paths, "--url", server.http_url, "--format", "csv", "--output", csv_path).returncode == 0
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    node = listener_rows(paths, server.http_url, tmp_path)
    assert len(rows) == len(node) == len(paths)
    for row in rows + node:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["scored_at"])
        acq = row["acquisition"]
        assert acq["manufacturer"] == "Acme Imaging" and acq["model_name"] == "NovaDR 2" and acq["modality"]
        assert acq["rows"] > 0 and acq["columns"] > 0 and acq["photometric"].startswith("MONOCHROME")
        assert acq["transfer_syntax"].startswith("1.2.840.10008.")
    assert {r["acquisition"]["body_part"] for r in rows} == {"WRIST", "HAND", "HIP"}
    assert sorted(r["score"] for r in rows) == sorted(r["score"] for r in node)  # the same answers both ways
    flat = list(csv.DictReader(csv_path.open()))
    assert {r["acq_manufacturer"] for r in flat} == {"Acme Imaging"} and all(r["scored_at"] for r in flat)
    for text in (rows_path.read_text(), (tmp_path / "node.jsonl").read_text(), csv_path.read_text()):
        assert_clean(text)  # rows keep the UIDs (verdicts match on them) but no identifying attribute

    history_path = tmp_path / "history.jsonl"
    real = rows * 20 + node * 20  # enough images of the new detector to be judged
    combined = add_scored(history(6, 200, seed=4), real, 6)
    for row in combined:  # one model series: the demo history's made-up identity is not the served model's
        for key in ("model_spec", "model_members", "model_thresholds", "model_flags"):
            row.pop(key, None)
    history_path.write_text("".join(json.dumps(r) + "\n" for r in combined))
    plots, prom = tmp_path / "plots", tmp_path / "monitor.prom"
    table = run("monitor", history_path, "--plot", plots, "--prometheus", prom)
    report = run("monitor", history_path, "--format", "json")
    assert table.returncode == report.returncode == 3, table.stderr
    alarms = json.loads(report.stdout)["alarms"]
    assert any(
        a["window"] == "2026-W07" and a["figure"] == "new_acquisition" and "Acme Imaging" in a["message"]
        for a in alarms
    )
    outputs = [table.stdout, table.stderr, report.stdout, report.stderr, prom.read_text()]
    outputs += [p.read_bytes().decode("latin-1") for p in sorted(plots.glob("*.png"))]
    assert len(outputs) > 6 and "fracscan_monitor_positive_rate{" in prom.read_text()
    sources = {r["source"] for r in history(6, 200, seed=4)}
    for text in outputs:
        assert_clean(text, str(tmp_path / "in"), *uids, *sources, *(p.name for p in paths))
