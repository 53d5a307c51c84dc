"""The SR, GSPS and SC writers and `fracscan predict --sr-dir`, against the real embedded server.

The SR is read back with highdicom and checked field by field against the JSONL answer of the same
run; dcmtk's `dsrdump` must parse it; no patient attribute may appear in anything the command prints.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import EXAMPLES
from pydicom.uid import generate_uid

from fracscan.client import FracScanClient, overlay
from fracscan.pacs import sc
from fracscan.pacs.context import ScoredImage
from fracscan.pacs.results import build_results, skip_reason, write_results
from fracscan.provenance import ModelIdentity

PHI = {
    "PatientName": "QUIXOTE^ALONSO",
    "PatientID": "PID-48151623",
    "PatientBirthDate": "19420314",
    "AccessionNumber": "ACC-77129",
}
EXAMPLE_DICOMS = ("wrist_fracture.dcm", "ankle_fracture_j2k.dcm", "hand_normal_mono1.dcm")


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def make_study(folder: Path, names: tuple[str, ...] = EXAMPLE_DICOMS, seed: str = "study") -> tuple[str, list[Path]]:
    """Example DICOMs re-filed into one study of one patient carrying real-looking identifiers (PHI)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=["fracscan-test", seed])
    paths = []
    for number, name in enumerate(names, start=1):
        ds = pydicom.dcmread(EXAMPLES / name)
        for attribute, value in PHI.items():
            setattr(ds, attribute, value)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["fracscan-test", seed, name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        path = folder / f"{Path(name).stem}.dcm"
        ds.save_as(path)
        paths.append(path)
    return study_uid, paths


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for attribute, value in PHI.items():
            assert value not in text, f"{attribute} leaked into the output"
        assert "QUIXOTE" not in text and "48151623" not in text


def report_evaluations(sr: pydicom.Dataset) -> dict[str, str]:
    """TID 1500 row 12: {concept meaning: coded value meaning, or the text} of the Qualitative Evaluations."""
    (container,) = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    out: dict[str, str] = {}
    for item in container.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        value = item.ConceptCodeSequence[0].CodeMeaning if item.ValueType == "CODE" else item.TextValue
        out[name] = f"{out[name]}\n{value}" if name in out else value
    return out


def check_sr_against_answer(sr_path_or_dataset, answer: dict, source_sop_uid: str) -> hd.sr.Comprehensive3DSR:
    """Field by field: finding, score, threshold, level, each box's corners and confidence, the references."""
    sr = (
        hd.sr.srread(sr_path_or_dataset)
        if isinstance(sr_path_or_dataset, Path)
        else hd.sr.Comprehensive3DSR.from_dataset(sr_path_or_dataset)
    )
    (image_group,) = sr.content.get_image_measurement_groups()
    values = {(m.name.value, m.name.scheme_designator): m.value for m in image_group.get_measurements()}
    assert values[("246262008", "SCT")] == answer["score"]  # Score: the FD Floating Point Value, exact
    assert values[("122411", "DCM")] == answer["threshold"]  # Threshold Value
    evaluations = report_evaluations(sr)
    assert evaluations["Fracture of bone"] == ("Present" if answer["fracture"] else "Absent")
    if answer["fracture"] and "level" in answer:
        assert (
            evaluations["Certainty of Finding"] == {"suspicious": "Suspected", "definite": "Definite"}[answer["level"]]
        )
    boxes = sr.content.get_planar_roi_measurement_groups()
    assert len(boxes) == len(answer["boxes"])
    for group, (x0, y0, x1, y1, confidence) in zip(boxes, answer["boxes"], strict=True):
        corners = np.asarray(group.roi.value)
        expected = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], dtype=np.float32)  # SCOORD is FL
        assert np.array_equal(corners.astype(np.float32), expected)
        assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_sop_uid
        (confidence_value,) = [m.value for m in group.get_measurements()]
        assert confidence_value == confidence
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_sop_uid
    return sr


def test_predict_sr_dir_writes_sr_gsps_sc_that_match_the_jsonl_answer(server, tmp_path):
    study_uid, dicoms = make_study(tmp_path / "in")
    png = tmp_path / "in" / "foot.png"
    shutil.copy(EXAMPLES / "foot_fracture.png", png)
    out = tmp_path / "results"
    result = run(
        "predict", *map(str, dicoms), str(png), "--url", server.http_url, "--format", "jsonl", "--sr-dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert f"{png} is not DICOM" in result.stderr
    answers = {row["source"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert len(answers) == 4
    assert any(answers[str(p)]["boxes"] for p in dicoms), "the examples include fractures with boxes"
    assert len(list(out.iterdir())) == 3 * len(dicoms)
    for path in dicoms:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        answer = answers[str(path)]
        sr_path = out / f"{source.SOPInstanceUID}.sr.dcm"
        sr = check_sr_against_answer(sr_path, answer, source.SOPInstanceUID)
        gsps, capture = (pydicom.dcmread(out / f"{source.SOPInstanceUID}.{kind}.dcm") for kind in ("gsps", "sc"))
        for result_ds in (sr, gsps, capture):
            assert result_ds.StudyInstanceUID == study_uid
            assert result_ds.PatientID == PHI["PatientID"]  # filed with the patient ...
            assert "DEMO" in result_ds.SeriesDescription  # ... and flagged as the demo
        assert (
            len({sr.SeriesInstanceUID, gsps.SeriesInstanceUID, capture.SeriesInstanceUID, source.SeriesInstanceUID})
            == 4
        )
        assert capture.BurnedInAnnotation == "YES" and capture.PhotometricInterpretation == "RGB"
        assert (
            gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID
        )
        dump = subprocess.run(["dsrdump", "-Ee", str(sr_path)], capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
        assert "Fracture of bone" in dump.stdout and "DEMO ensemble" in dump.stdout
    assert_no_phi(result.stdout, result.stderr, server.log_path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def scored(server, tmp_path_factory) -> tuple[bytes, object]:
    """A real answer for a fractured example (with boxes), and its source bytes."""
    _, (path, *_) = make_study(tmp_path_factory.mktemp("scored"), ("wrist_fracture.dcm",), seed="scored")
    with FracScanClient(server.http_url) as client:
        prediction = client.predict(path)
    assert prediction.fracture and prediction.boxes
    return path.read_bytes(), prediction


DEMO = ModelIdentity("demo", "1" * 16, "a" * 16, ("demo",))
CLINICAL = ModelIdentity("wrist-v3", "3" * 16, "b" * 16)


def answered_by(prediction, identity: ModelIdentity, **changes):
    return dataclasses.replace(prediction, model_identity=identity, **changes)


def results_of(data: bytes, prediction, identity: ModelIdentity, **changes):
    return build_results(data, answered_by(prediction, identity, **changes))


def test_result_uids_are_deterministic_per_source_and_weights(scored):
    data, prediction = scored
    first, again = results_of(data, prediction, DEMO), results_of(data, prediction, DEMO)
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert [d.SeriesInstanceUID for d in first] == [d.SeriesInstanceUID for d in again]
    other_weights = results_of(data, prediction, CLINICAL)
    assert not {d.SOPInstanceUID for d in first} & {d.SOPInstanceUID for d in other_weights}
    source_uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    assert all(d.SOPInstanceUID != source_uid for d in first)


def test_clinical_weights_carry_no_demo_flag_and_name_the_algorithm(scored, tmp_path):
    data, prediction = scored
    paths = write_results(tmp_path, data, answered_by(prediction, CLINICAL))
    sr = hd.sr.srread(paths[0])
    assert "DEMO" not in sr.SeriesDescription and "RANDOM" not in sr.SeriesDescription
    (group,) = sr.content.get_image_measurement_groups()
    items = group[0].ContentSequence  # the Measurement Group container's children
    (name,) = items.find(hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"))
    assert name.value == "wrist-v3"
    (version,) = items.find(hd.sr.CodedConcept("111003", "DCM", "Algorithm Version"))
    assert version.value == CLINICAL.members
    parameters = [item.value for item in items.find(hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters"))]
    assert f"threshold {prediction.threshold!r}" in parameters and not any("DEMO" in p for p in parameters)
    assert "model wrist-v3@" + "3" * 16 + "/" + "b" * 16 in parameters
    random = ModelIdentity("sizing", "4" * 16, "c" * 16, ("random_weights", "uncalibrated"))
    description = results_of(data, prediction, random)[0].SeriesDescription
    assert "RANDOM WEIGHTS" in description and "UNCALIBRATED" in description


def test_gsps_puts_suspicious_and_definite_on_separate_coloured_layers(scored):
    data, prediction = scored
    layers = {}
    for level in ("suspicious", "definite"):
        gsps = results_of(data, prediction, DEMO, level=level)[1]
        names = {
            layer.GraphicLayer: tuple(layer.GraphicLayerRecommendedDisplayCIELabValue)
            for layer in gsps.GraphicLayerSequence
        }
        boxes = [a for a in gsps.GraphicAnnotationSequence if "GraphicObjectSequence" in a]
        assert len(boxes) == 1 and len(boxes[0].GraphicObjectSequence) == len(prediction.boxes)
        layers[level] = (boxes[0].GraphicLayer, names[boxes[0].GraphicLayer])
    assert layers["suspicious"][0] != layers["definite"][0]
    assert layers["suspicious"][1] != layers["definite"][1]
    gsps = results_of(data, prediction, DEMO, level="negative", fracture=False, boxes=())[1]
    assert all("GraphicObjectSequence" not in a for a in gsps.GraphicAnnotationSequence)


def test_sc_draws_definite_solid_and_suspicious_dashed_with_a_demo_banner(scored):
    data, prediction = scored
    box = prediction.boxes[0]
    edge_rows = {}
    for level in ("definite", "suspicious"):
        image = np.asarray(sc.render(ScoredImage.make(data, answered_by(prediction, DEMO, level=level))))
        colour = np.array(overlay.COLOURS[level])
        y = min(round(box.y1), image.shape[0] - 4)
        band = image[y - 3 : y + 4, int(box.x0) + 3 : int(box.x1) - 3]  # the bottom edge, corners left out
        edge_rows[level] = np.all(np.abs(band.astype(int) - colour) < 8, axis=2).any(axis=0)
        banner = image[-4]
        assert np.mean(np.all(np.abs(banner.astype(int) - np.array(sc.BANNER_COLOUR)) < 8, axis=1)) > 0.5
    assert edge_rows["definite"].mean() > 0.95  # solid
    assert 0.3 < edge_rows["suspicious"].mean() < 0.8  # dashed
    clinical = np.asarray(sc.render(ScoredImage.make(data, answered_by(prediction, CLINICAL))))
    assert not np.all(np.abs(clinical[-4].astype(int) - np.array(sc.BANNER_COLOUR)) < 8, axis=1).mean() > 0.5


def test_non_images_and_own_results_are_not_scored(scored):
    data, prediction = scored
    sr, gsps, capture = results_of(data, prediction, DEMO)
    assert skip_reason(sr) == skip_reason(gsps) == skip_reason(capture) == "a fracscan result"
    sr.Manufacturer = "another vendor"
    assert skip_reason(sr).startswith("not an image: SOP Class 'Comprehensive 3D SR Storage', Modality SR")
    assert skip_reason(pydicom.dcmread(io.BytesIO(data))) is None
