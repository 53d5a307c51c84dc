"""Results back to the PACS: a TID 1500 SR, a GSPS and a Secondary Capture per scored DICOM image.

    from fracscan.pacs.results import build_results

    datasets = build_results(dicom_bytes, prediction)   # [SR, GSPS, SC]

One writer a module, one interface: `build(ScoredImage) -> pydicom.Dataset` (`sr`, `gsps`, `sc`).
Each result names the model that made the answer (`prediction.model_identity`, the answer's own).
The results join the source's study, one series per kind, with UIDs derived from what decides their
content (`uids`), so a repeated run replaces rather than duplicates and a changed answer never reuses
a UID. Patient and study attributes are copied for filing; none of them is ever logged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from fracscan.client.models import Prediction
from fracscan.decode import DecodeError, check_dicom_image
from fracscan.pacs import gsps, sc, sr
from fracscan.pacs.context import MANUFACTURER, Algorithm, ScoredImage

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


def skip_reason(dataset: Dataset) -> str | None:
    """Why an instance is not scored (not an image, or one of our own results), or None to score it."""
    try:
        check_dicom_image(dataset, has_pixels=False)
    except DecodeError as exc:
        return str(exc)
    if str(dataset.get("Manufacturer", "")) == MANUFACTURER:
        return "a fracscan result"
    return None


__all__ = [
    "MANUFACTURER",
    "WRITERS",
    "Algorithm",
    "ResultWriter",
    "ScoredImage",
    "build_results",
    "skip_reason",
    "write_results",
]
