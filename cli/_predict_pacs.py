"""`fracscan predict` and the PACS: `--sr-dir` (SR, GSPS, SC files; a study SR with `--by-study`) and
`--dicomweb/--study/--store`.

`dicomweb_sources` lists a study's images as `dicomweb:<study>/<series>/<instance>` labels (so
`--resume` works on them as on paths); `PacsScorer` stands in for the client in `predict`'s scoring
step: it answers `predict_many` as the client does (fetching DICOMweb labels just in time) and,
after each scored DICOM input, writes its results to `--sr-dir` and/or sends them with STOW-RS; a
result not written or not stored is an error row for its input. Console lines name paths and UIDs
only, never a patient attribute.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pydicom

from fracscan.cli.console import fail, note, warn
from fracscan.client import FracScanClient, FracScanError, Prediction, PredictionError, StudyPrediction
from fracscan.decode import SNIFF_BYTES, sniff_kind

if TYPE_CHECKING:
    from fracscan.pacs.dicomweb import DicomWeb

PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs")


def check_options(paths: list[str] | None, dicomweb: str | None, studies: list[str] | None, store: bool) -> None:
    """The PACS options that only make sense together (usage errors, exit 2)."""
    if dicomweb and paths:
        fail("give either paths or --dicomweb URL --study UID, not both")
    if dicomweb and not studies:
        fail("--dicomweb needs at least one --study UID")
    if (studies or store) and not dicomweb:
        fail("--study and --store need --dicomweb URL")
    if not dicomweb and not paths:
        fail("nothing to score: give paths (files, folders, globs) or --dicomweb URL --study UID")


def dicomweb_sources(url: str, studies: list[str]) -> list[str]:
    """The image instances of the studies (QIDO-RS), as labels; what is not an image is noted and left out."""
    dicomweb, _ = pacs_modules()
    web = dicomweb.DicomWeb(url)
    labels: list[str] = []
    for study in studies:
        try:
            refs = web.instances(study, skipped=_note_skipped)
        except dicomweb.DicomWebError as exc:
            fail(str(exc))
        if not refs:
            warn(f"study {study}: no images at {url}")
        labels.extend(ref.label for ref in refs)
    return labels


class ResultsNotWritten(FracScanError):
    """The SR, GSPS and SC of an answer could not be built or written (the message is free of patient attributes)."""

    kind = "output"


class PacsScorer:
    """The client as `predict` uses it, plus the PACS outputs after each scored input.

    Each result names the model of its own answer. A result that cannot be written (--sr-dir) or stored
    (--store) makes that input an error (`PredictionError.not_delivered`, the answer kept): exit 1.
    """

    def __init__(self, client: FracScanClient, sr_dir: Path | None, web: DicomWeb | None, store: bool):
        self.client, self.sr_dir, self.web, self.store = client, sr_dir, web, store

    @classmethod
    def wrap(
        cls, client: FracScanClient, sr_dir: Path | None, dicomweb: str | None, store: bool
    ) -> FracScanClient | PacsScorer:
        """The client itself when no PACS option is given (nothing changes), else a PacsScorer over it."""
        if sr_dir is None and dicomweb is None:
            return client
        web, _ = pacs_modules()
        return cls(client, sr_dir, web.DicomWeb(dicomweb) if dicomweb else None, store)

    def predict_many(
        self, sources: Iterable[str], region: str | None = None, concurrency: int = 8
    ) -> Iterator[Prediction | PredictionError]:
        if self.web is not None:
            web, _ = pacs_modules()
            refs = (web.InstanceRef.parse(label) for label in sources if label.startswith(web.LABEL_PREFIX))
            yield from web.predict_instances(
                self.client, self.web, refs, region=region, concurrency=concurrency, after=self._after
            )
            return
        for result in self.client.predict_many(sources, region=region, concurrency=concurrency):
            if isinstance(result, Prediction) and self.sr_dir is not None:
                try:
                    self._write_file_results(result)
                except ResultsNotWritten as exc:
                    yield PredictionError.not_delivered(result, exc.reason)
                    continue
            yield result

    def _after(self, data: bytes, prediction: Prediction) -> None:
        """For a DICOMweb instance: the files (--sr-dir), then STOW-RS (--store); either failing fails the input."""
        if self.sr_dir is not None:
            self._write(data, prediction)
        if self.store and self.web is not None:
            _, results = pacs_modules()
            try:
                datasets = results.build_results(data, prediction)
            except Exception as exc:
                raise ResultsNotWritten(f"no SR, GSPS or SC built: {_scrubbed(exc, data)}") from None
            self.web.store(datasets)

    def _write_file_results(self, prediction: Prediction) -> None:
        try:
            data = Path(prediction.source).read_bytes()
        except OSError as exc:
            raise ResultsNotWritten(f"no SR written: cannot read the source again: {exc.strerror or exc}") from None
        if sniff_kind(data[:SNIFF_BYTES]) != "dicom":
            note(f"--sr-dir: {prediction.source} is not DICOM; no SR, GSPS or SC for it")
            return
        self._write(data, prediction)

    def _write(self, data: bytes, prediction: Prediction) -> None:
        assert self.sr_dir is not None
        try:
            _, results = pacs_modules()
            results.write_results(self.sr_dir, data, prediction)
        except Exception as exc:
            raise ResultsNotWritten(f"no SR, GSPS or SC written to {self.sr_dir}: {_scrubbed(exc, data)}") from None


def study_sr_writer(sr_dir: Path) -> Callable[[StudyPrediction], None]:
    """`--by-study --sr-dir`: after each study answer, its study SR (a note when no view is DICOM)."""
    _, results = pacs_modules()

    def write(study: StudyPrediction) -> None:
        label = study.study_instance_uid or "of " + ", ".join(study.sources[:1])
        try:
            path = results.write_study_result(sr_dir, study)
        except Exception as exc:  # the answer stands without its SR; a library message may quote the header
            warn(f"no study SR for study {label}: {type(exc).__name__}")
            return
        if path is None:
            note(f"--sr-dir: study {label} has no DICOM view; no study SR for it")

    return write


def pacs_modules() -> tuple[ModuleType, ModuleType]:
    """The DICOMweb and result-writer modules, imported on first use: their libraries are the `pacs` extra."""
    try:
        from fracscan.pacs import dicomweb, results
    except ImportError as exc:
        fail(f"--sr-dir and --dicomweb need the PACS extra ({exc.name} is missing): pip install 'fracscan[pacs]'")
    return dicomweb, results


def _note_skipped(label: str, reason: str) -> None:
    note(f"skipped {label}: {reason}")


def _scrubbed(exc: Exception, data: bytes) -> str:
    """An error message as a library wrote it, with any patient attribute of the source masked."""
    message = f"{type(exc).__name__}: {exc}"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return message
    for attribute in PATIENT_ATTRIBUTES:
        value = str(ds.get(attribute, "") or "").strip()
        if value:
            message = message.replace(value, "***")
    return message
