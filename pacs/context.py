"""What every result writer is given: the scored image, the prediction, and who answered.

`ScoredImage` is the one small interface behind the SR, GSPS and SC writers: each writer is a
`build(scored) -> Dataset` function over it. It carries the Part-10 bytes (the SC needs the pixels,
decoded by the same `fracscan.decode` the server uses), the parsed dataset (UIDs, patient and study
attributes for filing), the `Prediction`, and the `Algorithm` (the answer's own model identity: spec
name, members' hash, thresholds hash, flags), and the keys its UIDs derive from (`uids`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from fracscan.client.models import Prediction
from fracscan.decode import decode_image
from fracscan.pacs import uids
from fracscan.provenance import ModelIdentity

MANUFACTURER = "fracscan"  # also how the listener and DICOMweb route recognise their own results
NOT_CLINICAL = "NOT FOR CLINICAL USE"


@dataclass(frozen=True)
class Algorithm:
    """The answering ensemble as the results name it: from the answer's own model identity.

    name: the spec; version: the members' hash; thresholds: the thresholds hash; flags: demo /
    random_weights / uncalibrated (each drawn as a banner and listed as a notice).
    """

    name: str
    version: str
    thresholds: str = ""
    flags: tuple[str, ...] = ()

    @classmethod
    def of(cls, prediction: Prediction) -> Algorithm:
        """From the prediction's MODEL_IDENTITY; an answer without one is named by its model and version."""
        identity = prediction.model_identity
        if identity is None:
            return cls(name=prediction.model_name, version=f"{prediction.model_name}:{prediction.model_version}")
        return cls(identity.spec, identity.members, identity.thresholds, identity.flags)

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.name, self.version, self.thresholds, self.flags)

    @property
    def notices(self) -> tuple[str, ...]:
        return self.identity.notices()

    @property
    def banner(self) -> str:
        """ "" for a calibrated clinical ensemble, else e.g. "DEMO + UNCALIBRATED - NOT FOR CLINICAL USE"."""
        labels = self.identity.banners()
        return f"{' + '.join(labels)} - {NOT_CLINICAL}" if labels else ""

    def series_description(self, what: str) -> str:
        """A Series Description (LO, at most 64 characters) that says what the series is and flags a demo."""
        text = f"fracscan {what}" + (f" [{self.banner}]" if self.banner else "")
        return text[:64]


@dataclass(frozen=True)
class ScoredImage:
    """One scored DICOM image and its answer: the input of every result writer."""

    data: bytes  # the source as DICOM Part-10 bytes
    prediction: Prediction
    algorithm: Algorithm

    @classmethod
    def make(cls, data: bytes, prediction: Prediction) -> ScoredImage:
        return cls(data, prediction, Algorithm.of(prediction))

    @property
    def result_key(self) -> str:
        """What decides this result's content (`uids.result_key`): its UIDs follow it."""
        p = self.prediction
        return uids.result_key(
            self.sop_instance_uid,
            self.algorithm.version,
            self.algorithm.thresholds,
            p.region,
            p.threshold,
            getattr(p, "definite_threshold", None),
        )

    @property
    def series_key(self) -> str:
        """The model whose results a series holds (members and thresholds: a recalibration starts new series)."""
        return uids.series_key(self.algorithm.version, self.algorithm.thresholds)

    @cached_property
    def dataset(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))

    @cached_property
    def pixels(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Decoded as the server decodes them: 2-D float32, larger = brighter."""
        return decode_image(self.data).pixels

    @property
    def level(self) -> str:
        """negative / suspicious / definite (a prediction without the two-level answer: suspicious when positive)."""
        return getattr(self.prediction, "level", None) or ("suspicious" if self.prediction.fracture else "negative")

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    def decision_text(self) -> str:
        """One line a reader sees first: the decision, the score against the operating point, the region."""
        p = self.prediction
        verdict = {"definite": "FRACTURE (definite)", "suspicious": "FRACTURE suspected"}.get(self.level, "no fracture")
        return f"{verdict}  score {p.score:.3f} / threshold {p.threshold:.3f}  region {p.region}"

    def parameters(self) -> list[str]:
        """Algorithm parameters as text: the operating point, the region and where it came from, the notices."""
        p = self.prediction
        lines = [f"threshold {p.threshold!r}", f"region {p.region} (from {p.region_source})"]
        definite: Any = getattr(p, "definite_threshold", None)
        if definite is not None:
            lines.append(f"definite threshold {definite!r}")
        if p.fallback:
            lines.append("fallback threshold: no calibrated operating point for the region")
        lines.append(f"model {self.algorithm.identity.compact()}")  # spec@members/thresholds+flags
        return lines + list(self.algorithm.notices)
