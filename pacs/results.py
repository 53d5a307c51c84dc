"""Results back to the PACS: a TID 1500 SR, a GSPS and a Secondary Capture per scored DICOM image.

    from fracscan.pacs.results import build_results

    datasets = build_results(dicom_bytes, prediction)   # [SR, GSPS, SC]

One writer a module, one interface: `build(ScoredImage) -> pydicom.Dataset` (`sr`, `gsps`, `sc`); a
study answer (`predict --by-study`) gets one study SR (`study_sr`, `write_study_result`).
Each result names the model that made the answer (`prediction.model_identity`, the answer's own).
The results join the source's study, one series per kind, with UIDs derived from what decides their
content (`uids`), so a repeated run replaces rather than duplicates and a changed answer never reuses
a UID. Patient and study attributes are copied for filing; none of them is ever logged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fracscan.client.models import Prediction
from fracscan.client.study import StudyPrediction, ViewPrediction
from fracscan.decode import sniff_kind
from fracscan.pacs import gsps, sc, sr, study_sr
from fracscan.pacs.context import MANUFACTURER, Algorithm, ScoredImage
from fracscan.scorable import not_a_radiograph

ResultWriter = Callable[[ScoredImage], Dataset]
WRITERS: dict[str, ResultWriter] = {sr.KIND: sr.build, gsps.KIND: gsps.build, sc.KIND: sc.build}


def build_results(data: bytes, prediction: Prediction) -> list[Dataset]:
    """The result datasets (SR, GSPS, SC) for one scored DICOM image given as Part-10 bytes."""
    scored = ScoredImage.make(data, prediction)
    return [write(scored) for write in WRITERS.values()]


def write_results(directory: Path, data: bytes, prediction: Prediction) -> list[Path]:
    """Build the results and save them as `<source SOP Instance UID>.<kind>.dcm` (a rerun overwrites)."""
    scored = ScoredImage.make(data, prediction)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, write in WRITERS.items():
        path = directory / f"{scored.sop_instance_uid}.{kind}.dcm"
        write(scored).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study_result(directory: Path, study: StudyPrediction) -> Path | None:
    """The study SR of a `--by-study` answer as `<Study Instance UID>.study-sr.dcm`; None when no view is DICOM."""
    views = [_view_dataset(view) for view in study.views]
    if not any(ds is not None for ds in views):
        return None
    document = study_sr.build(study, views)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{document.StudyInstanceUID}.{study_sr.KIND}.dcm"
    document.save_as(path, enforce_file_format=True)
    return path


def _view_dataset(view: object) -> Dataset | None:
    """The header of a scored view given as a DICOM file (None for other views)."""
    if not isinstance(view, ViewPrediction):
        return None
    try:
        with open(view.source, "rb") as f:
            if sniff_kind(f.read(132)) != "dicom":
                return None
        return pydicom.dcmread(view.source, stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        return None


def skip_reason(dataset: Dataset) -> str | None:
    """Why an instance is not scored (one of our own results, or not a projection radiograph:
    `fracscan.scorable`), or None to score it. Reads the header only."""
    if str(dataset.get("Manufacturer", "")) == MANUFACTURER:
        return "a fracscan result"
    return not_a_radiograph(dataset)


__all__ = [
    "MANUFACTURER",
    "WRITERS",
    "Algorithm",
    "ResultWriter",
    "ScoredImage",
    "build_results",
    "skip_reason",
    "write_results",
    "write_study_result",
]
