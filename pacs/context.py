"""What every result writer is given: the scored image, the prediction, and who answered.

`ScoredImage` is the one small interface behind the SR, GSPS and SC writers: each writer is a
`build(scored) -> Dataset` function over it. It carries the Part-10 bytes (the SC needs the pixels,
decoded by the same `fracscan.decode` the server uses), the parsed dataset (UIDs, patient and study
attributes for filing), the `Prediction`, and the `Algorithm` (spec name, members' hash, notices).
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
from fracscan.provenance import Provenance

MANUFACTURER = "fracscan"  # also how the listener and DICOMweb route recognise their own results
NOT_CLINICAL = "NOT FOR CLINICAL USE"


@dataclass(frozen=True)
class Algorithm:
    """The answering ensemble as the results name it: spec name, version (members' hash), notices."""

    name: str
    version: str
    notices: tuple[str, ...] = ()
    demo: bool = False
    random_weights: bool = False

    @classmethod
    def from_provenance(cls, provenance: Provenance | None, prediction: Prediction) -> Algorithm:
        """From the server's provenance record; a server without one is named by its model and version."""
        fallback = f"{prediction.model_name}:{prediction.model_version}"
        if provenance is None:
            return cls(name=prediction.model_name, version=fallback)
        return cls(
            name=provenance.spec or prediction.model_name,
            version=provenance.members_hash or fallback,
            notices=provenance.notices(),
            demo=provenance.demo,
            random_weights=provenance.random_weights,
        )

    @property
    def clinical(self) -> bool:
        return not (self.demo or self.random_weights)

    @property
    def banner(self) -> str:
        """ "" for a clinical ensemble, else e.g. "DEMO - NOT FOR CLINICAL USE" (series descriptions, SC)."""
        if self.clinical:
            return ""
        labels = [label for label, on in (("DEMO", self.demo), ("RANDOM WEIGHTS", self.random_weights)) if on]
        return f"{' + '.join(labels)} - {NOT_CLINICAL}"

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
    def make(cls, data: bytes, prediction: Prediction, provenance: Provenance | None) -> ScoredImage:
        return cls(data, prediction, Algorithm.from_provenance(provenance, prediction))

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
        return lines + list(self.algorithm.notices)
