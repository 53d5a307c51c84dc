"""The SR, GSPS and SC as independent tools judge them, on real answers of the embedded server.

The cases: a MONOCHROME1 CR (NEMA WG04 from pydicom-data, and the femur example), MONOCHROME1 and
MONOCHROME2 DX examples, positive with boxes and negative, lossless and lossy (JPEG 2000) sources, an
Olczak answer with heads and a QC warning (model_repository_olczak), and a study-level SR from
`predict --by-study --sr-dir`. The tools: David Clunie's dciodvfy and dcentvfy (dicom3tools), dcmtk's
dcmpschk and dcmp2pgm, and PixelMed's DicomSRValidator. A result may show no dciodvfy Error beyond
those its source already has, and dcmp2pgm must render a source the same with and without its GSPS.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import EXAMPLES
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_pacs_writers import make_study, report_evaluations

from fracscan.client import FracScanClient, Prediction
from fracscan.demo.synthetic import REGIONS_WITH_VIEWS, VIEWS, make_case, write_dicom
from fracscan.pacs import filing, gsps
from fracscan.pacs.dimse import Destination, store_datasets
from fracscan.pacs.results import build_results, write_results
from fracscan.server import OLCZAK_DEMO_REPOSITORY, EmbeddedServer

TOOLS = ("dciodvfy", "dcentvfy", "dcmpschk", "dcmp2pgm", "java")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS) or not Path("/usr/share/java/pixelmed.jar").exists(),
    reason="the validators come with `make test` (dicom3tools, dcmtk, pixelmed-apps)",
)
PIXELMED = Path("/usr/share/java/pixelmed.jar")
VALIDATE_SR = Path(__file__).parent / "tools" / "ValidateSR.java"
JAVA_LIMITS = ("-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0")
# PixelMed 20220618 decides whether TID 1410 applies by counting the Image Region SCOORDs of all the
# measurement groups together, so with exactly one box it checks the image-level TID 1501 group
# against TID 1410 too and reports that group's missing region. The only errors it may report.
PIXELMED_ONE_ROI_QUIRK = re.compile(
    r'^Error: Template 1410 PlanarROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)/'
    r"\[Row (5|7)\] .*: within 1\.8\.1: .*Missing conditional content item$"
)
EXAMPLE_CASES = {  # name -> the example it scores
    "cr_mono1_femur": "femur_fracture_cr_mono1.dcm",
    "dx_mono1_clavicle": "clavicle_fracture_mono1.dcm",
    "dx_mono2_wrist": "wrist_fracture.dcm",
    "dx_mono2_knee_lossy": "knee_normal_j2k_lossy.dcm",
    "dx_mono2_pelvis": "pelvis_normal.dcm",
}
NEMA_CR = "RG3_UNCR.dcm"  # NEMA WG04: CR, MONOCHROME1, 1760 x 1760, Laterality R


@dataclass
class Case:
    source: Path
    prediction: Prediction
    results: dict[str, Path]  # kind -> file


def _run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)


def dciodvfy_errors(path: Path) -> set[str]:
    out = _run("dciodvfy", str(path))
    return {line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}


def pixelmed_reports(paths: list[Path]) -> dict[Path, list[str]]:
    """{SR file: PixelMed's Error lines}, all files validated in one JVM."""
    out = _run("java", *JAVA_LIMITS, "-cp", str(PIXELMED), str(VALIDATE_SR), *map(str, paths), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    reports: dict[Path, list[str]] = {}
    current: Path | None = None
    for line in out.stdout.splitlines():
        if line.startswith("=== "):
            current = Path(line[4:])
            reports[current] = []
        elif line.startswith("Error") and current is not None:
            reports[current].append(line.strip())
    assert set(reports) == set(paths), out.stdout[-2000:]
    return reports


def render(source: Path, state: Path | None, out: Path) -> np.ndarray:
    """dcmp2pgm's rendering of the source (through the presentation state when given), as grey levels."""
    command = ["dcmp2pgm", *(["-p", str(state)] if state else []), str(source), str(out)]
    done = _run(*command)
    assert done.returncode == 0, done.stderr
    return np.asarray(Image.open(out), dtype=np.float64)


def drawn_polylines(source: Path, state: Path) -> list[list[tuple[float, float]]]:
    """The graphic objects dcmp2pgm reads from the presentation state (its verbose listing)."""
    done = _run("dcmp2pgm", "-v", "-p", str(state), str(source), "/dev/null")
    listing = done.stdout + done.stderr
    polylines = []
    for match in re.finditer(r"coordinates: ([-0-9.\\, ]+)", listing):
        points = [p.strip() for p in match.group(1).split(",") if p.strip()]
        polylines.append([tuple(float(v) for v in p.split("\\")) for p in points])
    return polylines


def uncompressed(source: Path, folder: Path) -> Path:
    """The source decompressed and inflated (dcmp2pgm reads no JPEG 2000, dcentvfy no deflate); same UIDs."""
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    if ds.file_meta.TransferSyntaxUID.is_deflated:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{source.stem}.uncompressed.dcm"
    ds.save_as(path)
    return path


def _score_and_write(client: FracScanClient, source: Path, folder: Path) -> Case:
    prediction = client.predict(source)
    paths = write_results(folder, source.read_bytes(), prediction)
    return Case(source, prediction, {p.name.rsplit(".", 2)[1]: p for p in paths})


@pytest.fixture(scope="module")
def cases(server, tmp_path_factory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("validated")
    sources = {name: EXAMPLES / example for name, example in EXAMPLE_CASES.items()}
    nema = pydicom.data.get_testdata_file(NEMA_CR)
    if nema is not None:
        sources["cr_mono1_nema"] = Path(nema)
    with FracScanClient(server.http_url) as client:
        return {name: _score_and_write(client, path, folder / name) for name, path in sources.items()}


@pytest.fixture(scope="module")
def olczak_case(tmp_path_factory) -> Case:
    """An Olczak answer with its heads and a QC warning: a CR whose ImageLaterality contradicts the image."""
    folder = tmp_path_factory.mktemp("olczak")
    combos = [(r, v) for r in REGIONS_WITH_VIEWS for v in VIEWS[r]]
    with (
        EmbeddedServer(OLCZAK_DEMO_REPOSITORY, log_path=folder / "server.log") as srv,
        FracScanClient(srv.http_url) as client,
    ):
        for seed, (region, view) in enumerate(combos * 3, start=15_000_000):
            case = make_case(seed, region=region, fracture=True, shape=(400, 330), view=view)
            path = write_dicom(case, folder / f"{seed}.dcm", photometric="MONOCHROME1", modality="CR")
            ds = pydicom.dcmread(path)
            ds.ImageLaterality = "L" if case.laterality == "R" else "R"
            ds.save_as(path)
            found = _score_and_write(client, path, folder / "results")
            if found.prediction.qc and found.prediction.heads:
                return found
    pytest.fail("no synthetic view drew a QC warning from the Olczak demo")


@pytest.fixture(scope="module")
def study_sr(server, tmp_path_factory) -> tuple[Path, list[Path], list[dict]]:
    """`predict --by-study --sr-dir` over one study of three example DICOMs (and a PNG of the same folder)."""
    folder = tmp_path_factory.mktemp("study")
    _, dicoms = make_study(folder / "in", ("wrist_fracture.dcm", "ankle_fracture_j2k.dcm", "hip_fracture.dcm"))
    shutil.copy(EXAMPLES / "foot_fracture.png", folder / "in" / "foot.png")
    out = folder / "sr"
    command = ["predict", str(folder / "in"), "--by-study", "--url", server.http_url, "--format", "jsonl"]
    done = subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *command, "--sr-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.study-sr.dcm")
    return path, dicoms, [json.loads(line) for line in done.stdout.splitlines()]


def test_the_cases_cover_what_a_pacs_sees(cases, olczak_case):
    photometric = {pydicom.dcmread(c.source, stop_before_pixels=True).PhotometricInterpretation for c in cases.values()}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert any(c.prediction.boxes for c in cases.values()) and any(not c.prediction.fracture for c in cases.values())
    assert olczak_case.prediction.heads and olczak_case.prediction.qc


def test_dciodvfy_finds_no_error_a_source_does_not_already_have(cases, olczak_case, study_sr):
    checked = [(c.source, c.results[k]) for c in [*cases.values(), olczak_case] for k in ("sr", "gsps", "sc")]
    path, dicoms, _ = study_sr
    checked += [(dicoms[0], path)]
    for source, result in checked:
        extra = dciodvfy_errors(result) - dciodvfy_errors(source)
        assert not extra, f"{result.name}: {sorted(extra)}"


def test_dcentvfy_finds_each_source_and_its_results_consistent(cases, olczak_case, tmp_path):
    for case in [*cases.values(), olczak_case]:
        files = [uncompressed(case.source, tmp_path), *case.results.values()]
        done = _run("dcentvfy", *map(str, files))
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{case.source.name}: {errors}"


def test_dcmpschk_passes_every_presentation_state(cases, olczak_case):
    for case in [*cases.values(), olczak_case]:
        done = _run("dcmpschk", str(case.results["gsps"]))
        text = done.stdout + done.stderr
        assert done.returncode == 0 and "Test passed" in text and "E:" not in text, text[-2000:]


def test_pixelmed_finds_the_srs_clean(cases, olczak_case, study_sr):
    paths = [c.results["sr"] for c in [*cases.values(), olczak_case]] + [study_sr[0]]
    for path, errors in pixelmed_reports(paths).items():
        real = [e for e in errors if not PIXELMED_ONE_ROI_QUIRK.match(e)]
        assert not real, f"{path.name}: {real}"


def test_dcmp2pgm_renders_each_source_the_same_through_its_gsps_with_the_boxes_where_the_answer_puts_them(
    cases, olczak_case, tmp_path
):
    shapes = set()
    for name, case in [*cases.items(), ("olczak", olczak_case)]:
        source = uncompressed(case.source, tmp_path)
        plain = render(source, None, tmp_path / f"{name}.plain.pgm")
        through = render(source, case.results["gsps"], tmp_path / f"{name}.gsps.pgm")
        assert np.corrcoef(plain.ravel(), through.ravel())[0, 1] > 0.99, name  # a negative would be -1
        assert np.abs(plain - through).mean() < 2.0, name  # same grey levels: the source's own window
        shapes.add(gsps.lut_shape(pydicom.dcmread(source, stop_before_pixels=True)))
        expected = [
            [(b.x0, b.y0), (b.x1, b.y0), (b.x1, b.y1), (b.x0, b.y1), (b.x0, b.y0)] for b in case.prediction.boxes
        ]
        drawn = drawn_polylines(source, case.results["gsps"])
        assert len(drawn) == len(expected), name
        for got, want in zip(drawn, expected, strict=True):
            assert np.allclose(got, want, atol=1e-3), name
    assert shapes == {"IDENTITY", "INVERSE"}


def test_results_carry_what_the_pacs_files_by(cases, olczak_case):
    for case in [*cases.values(), olczak_case]:
        source = pydicom.dcmread(case.source, stop_before_pixels=True)
        sr, state, capture = (pydicom.dcmread(case.results[k]) for k in ("sr", "gsps", "sc"))
        for result in (sr, state, capture):
            for keyword in ("StudyDescription", "PatientIdentityRemoved", "DeidentificationMethod"):
                assert result.get(keyword) == source.get(keyword), (case.source.name, keyword)
        stated = source.get("Laterality") or source.get("ImageLaterality")
        for result in (state, capture):
            assert (result.get("BodyPartExamined") or "") == (source.get("BodyPartExamined") or "")
            if stated in ("L", "R"):
                assert result.Laterality == stated
            elif source.get("BodyPartExamined") in filing.PAIRED_BODY_PARTS:
                assert result.Laterality == ""  # Type 2: present, empty
            else:
                assert "Laterality" not in result
        lossy = source.get("LossyImageCompression") == "01"
        assert capture.LossyImageCompression == ("01" if lossy else "00"), case.source.name
        if lossy:
            assert capture.LossyImageCompressionMethod  # the history travels with the pixels
    assert any(pydicom.dcmread(c.source).get("LossyImageCompression") == "01" for c in cases.values())


def test_the_sr_carries_the_heads_and_the_qc_warning(olczak_case):
    evaluations = report_evaluations(pydicom.dcmread(olczak_case.results["sr"]))
    heads, qc = olczak_case.prediction.heads, olczak_case.prediction.qc
    assert evaluations["Laterality"] == heads["laterality"].label.capitalize()
    assert evaluations["Target Region"].lower().startswith(heads["body_part"].label)
    assert "Image View" in evaluations
    probabilities = evaluations["Probability"].splitlines()
    for name, head in heads.items():
        line = next(p for p in probabilities if p.startswith(f"{name}:"))
        for label, p in head.probs.items():
            assert f"{label} {p:.3f}" in line
    assert evaluations["Quality Control"].splitlines() == list(qc)


def test_the_study_sr_reports_the_study_and_references_each_view(study_sr):
    path, dicoms, rows = study_sr
    (study_row,) = [r for r in rows if r["kind"] == "study"]
    document = pydicom.dcmread(path)
    evaluations = report_evaluations(document)
    assert evaluations["Fracture of bone"] == ("Present" if study_row["fracture"] else "Absent")
    views = evaluations["Finding"].splitlines()
    assert len(views) == len(dicoms)  # the PNG view is scored but cannot be referenced
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in document.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dicoms}
    groups = hd.sr.Comprehensive3DSR.from_dataset(document).content.get_image_measurement_groups()
    study_group = next(g for g in groups if g.tracking_identifier == "fracscan study finding")
    parameters = [i.value for i in study_group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert f"rule {study_row['rule']}" in parameters
    scores = {m.name.value: m.value for m in study_group.get_measurements()}
    assert scores["246262008"] == study_row["score"]


def test_instance_numbers_are_unique_within_each_result_series(cases):
    case = cases["dx_mono2_wrist"]
    numbers: dict[str, set[int]] = {}
    for series in (1, 2):  # two source series of one study whose images share Instance Number 1
        ds = pydicom.dcmread(case.source)
        ds.SeriesNumber, ds.InstanceNumber = series, 1
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["instance-numbers", str(series)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer)
        data = buffer.getvalue()
        for result in build_results(data, case.prediction):
            numbers.setdefault(str(result.SeriesInstanceUID), set()).add(int(result.InstanceNumber))
    assert len(numbers) == 3 and all(len(n) == 2 for n in numbers.values())
    assert filing.instance_number(pydicom.dcmread(case.source, stop_before_pixels=True)) >= 1


def test_message_ids_increase_on_one_association(cases):
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import (
        Comprehensive3DSRStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        SecondaryCaptureImageStorage,
    )

    seen: list[int] = []

    def on_store(event):
        seen.append(int(event.request.MessageID))
        return 0x0000

    ae = AE(ae_title="RECEIVER")
    for sop_class in (
        Comprehensive3DSRStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        SecondaryCaptureImageStorage,
    ):
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    scp = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = scp.server_address[1]
        datasets = [pydicom.dcmread(p) for c in list(cases.values())[:2] for p in c.results.values()]
        store_datasets(datasets, Destination("RECEIVER", "127.0.0.1", port))
    finally:
        scp.shutdown()
    assert seen == list(range(1, len(datasets) + 1))
