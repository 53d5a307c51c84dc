"""DICOMweb in and out: WADO-RS retrieves a study's images, STOW-RS sends the results back.

    from fracscan.client import FracScanClient
    from fracscan.pacs.dicomweb import DicomWeb, predict_study

    with FracScanClient(url) as client:
        for result in predict_study(client, DicomWeb("http://pacs/dicom-web"), study_uid, store=True):
            print(result.source, result.ok)        # source: "dicomweb:<study>/<series>/<instance>"

A thin shell over dicomweb-client and the SDK: the instances of a study are listed with QIDO-RS
(image SOP classes only), fetched one by one just before their request is sent (memory stays
flat), scored with `predict_many`, and with `store=True` each answer's SR, GSPS and SC are stored
with STOW-RS into the same study. fracscan's own results in the study are skipped.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID

from fracscan.client.errors import FracScanError
from fracscan.client.models import Prediction, PredictionError
from fracscan.client.sync import FracScanClient
from fracscan.pacs.results import MANUFACTURER, build_results, skip_reason
from fracscan.scorable import RADIOGRAPH_CLASSES, SECONDARY_CAPTURE, not_a_radiograph

LABEL_PREFIX = "dicomweb:"
SOP_CLASS_TAG, STUDY_TAG, SERIES_TAG, SOP_TAG = "00080016", "0020000D", "0020000E", "00080018"
MANUFACTURER_TAG, MODALITY_TAG = "00080070", "00080060"

Skipped = Callable[[str, str], None]  # (label, reason)


class DicomWebError(FracScanError):
    """The DICOMweb server could not be searched, read or written (not the scoring server: kind "server")."""

    kind = "server"


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study on the DICOMweb server."""

    study: str
    series: str
    sop: str

    @property
    def label(self) -> str:
        """How results name it (the `source` of its Prediction)."""
        return f"{LABEL_PREFIX}{self.study}/{self.series}/{self.sop}"

    @classmethod
    def parse(cls, label: str) -> InstanceRef:
        study, series, sop = label.removeprefix(LABEL_PREFIX).split("/")
        return cls(study, series, sop)


class DicomWeb:
    """One DICOMweb server (QIDO-RS, WADO-RS, STOW-RS at the same root, as Orthanc and most PACS serve them)."""

    def __init__(self, url: str, timeout: float = 30.0, client: DICOMwebClient | None = None):
        self.url = url
        self.web = client or DICOMwebClient(url, timeout=timeout)

    def instances(self, study_uid: str, skipped: Skipped | None = None) -> list[InstanceRef]:
        """The study's instances of a radiograph SOP class (QIDO-RS); the others are reported to `skipped`.

        The rest of the rule (`fracscan.scorable`: modality, grayscale) is applied to each header retrieved."""
        try:
            found = self.web.search_for_instances(study_instance_uid=study_uid, get_remaining=True)
        except Exception as exc:
            raise DicomWebError(f"cannot search study {study_uid} at {self.url}: {_reason(exc)}") from None
        refs = []
        for item in found:
            ref = InstanceRef(_value(item, STUDY_TAG) or study_uid, _value(item, SERIES_TAG), _value(item, SOP_TAG))
            sop_class = _value(item, SOP_CLASS_TAG)
            if sop_class not in RADIOGRAPH_CLASSES:
                header = Dataset()
                header.SOPClassUID, header.Modality = UID(sop_class), _value(item, MODALITY_TAG)
                reason: str | None = not_a_radiograph(header)
            else:
                reason = self._own_result(ref) if sop_class == SECONDARY_CAPTURE else None
            if reason is None:
                refs.append(ref)
            elif skipped:
                skipped(ref.label, reason)
        return sorted(refs, key=lambda r: (r.series, r.sop))

    def _own_result(self, ref: InstanceRef) -> str | None:
        """A Secondary Capture may be our own burned-in copy: its metadata (WADO-RS, no pixels) says."""
        try:
            metadata = self.web.retrieve_instance_metadata(ref.study, ref.series, ref.sop)
        except Exception as exc:
            raise DicomWebError(f"cannot read the metadata of {ref.label}: {_reason(exc)}") from None
        return "a fracscan result" if _value(metadata, MANUFACTURER_TAG) == MANUFACTURER else None

    def retrieve(self, ref: InstanceRef) -> bytes:
        """One instance as DICOM Part-10 bytes (WADO-RS)."""
        try:
            dataset = self.web.retrieve_instance(ref.study, ref.series, ref.sop)
        except Exception as exc:
            raise DicomWebError(f"cannot retrieve {ref.label}: {_reason(exc)}") from None
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()

    def store(self, datasets: list[Dataset]) -> None:
        """Send results with STOW-RS; DicomWebError unless the server took every one."""
        if not datasets:
            return
        try:
            response = self.web.store_instances(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
        except Exception as exc:
            raise DicomWebError(f"STOW-RS to {self.url} failed: {_reason(exc)}") from None
        refused = response.get("FailedSOPSequence") if response is not None else None
        if refused:
            raise DicomWebError(f"STOW-RS to {self.url} refused {len(refused)} of {len(datasets)} result(s)")


def predict_study(
    client: FracScanClient,
    web: DicomWeb,
    study_uid: str,
    *,
    store: bool = False,
    region: str | None = None,
    concurrency: int = 4,
    skipped: Skipped | None = None,
) -> Iterator[Prediction | PredictionError]:
    """Score every image of one study; with `store`, STOW-RS each answer's SR, GSPS and SC into the study."""
    refs = web.instances(study_uid, skipped)
    after = (lambda data, prediction: web.store(build_results(data, prediction))) if store else None
    yield from predict_instances(client, web, refs, region=region, concurrency=concurrency, after=after)


def predict_instances(
    client: FracScanClient,
    web: DicomWeb,
    refs: Iterable[InstanceRef],
    *,
    region: str | None = None,
    concurrency: int = 4,
    after: Callable[[bytes, Prediction], None] | None = None,
) -> Iterator[Prediction | PredictionError]:
    """Score instances fetched just in time; each result is named by its instance (`InstanceRef.label`).

    One result per instance, in order: an instance that cannot be retrieved, or turns out to be one
    of fracscan's own results, is a PredictionError. `after(data, prediction)` runs for every scored
    instance (e.g. store its results); when it fails, that result becomes a PredictionError saying so
    (kind "output", the answer kept in it).
    """
    fetched: deque[tuple[InstanceRef, bytes, PredictionError | None]] = deque()

    def payloads() -> Iterator[bytes]:
        for ref in refs:
            problem = None
            try:
                data = web.retrieve(ref)
                reason = skip_reason(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
                if reason:
                    problem = PredictionError(ref.label, f"not scored: {reason}", "input")
            except DicomWebError as exc:
                data, problem = b"", PredictionError(ref.label, exc.reason, exc.kind)
            fetched.append((ref, data, problem))
            yield b"" if problem else data  # empty bytes fail on the client at once: one result per input

    for result in client.predict_many(payloads(), region=region, concurrency=concurrency):
        ref, data, problem = fetched.popleft()  # predict_many answers in input order
        if problem is not None:
            yield problem
            continue
        if isinstance(result, PredictionError):  # same as `not result.ok`, and mypy narrows it
            yield replace(result, source=ref.label)
            continue
        prediction = replace(result, source=ref.label)
        if after is not None:
            try:
                after(data, prediction)
            except Exception as exc:  # results not built or not stored: an error for this instance
                yield PredictionError.not_delivered(
                    prediction, exc.reason if isinstance(exc, FracScanError) else f"{type(exc).__name__}: {exc}"
                )
                continue
        yield prediction


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"HTTP {status}" if status else f"{type(exc).__name__}: {exc}"


__all__ = ["DicomWeb", "DicomWebError", "InstanceRef", "predict_instances", "predict_study"]
