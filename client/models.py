"""What the SDK returns: `Prediction`, `Box`, `HeadResult` and `PredictionError` (exceptions: `errors`).

Messages name the input (a path, "<bytes>", "<array>" or "<dataset>") and the problem, never
patient identifiers: the SDK reads UIDs from DICOM headers but no PatientName, PatientID or
birth date goes into a result, a message or a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from fracscan.acquisition import Acquisition
from fracscan.client.errors import ErrorKind, FracScanError
from fracscan.contract import MODEL_IDENTITY
from fracscan.contract import Level as Level  # the SDK re-exports both
from fracscan.contract import RegionSource as RegionSource
from fracscan.provenance import ModelIdentity

# --- results -------------------------------------------------------------------------------


def utc_timestamp() -> str:
    """Now, as a result row's `scored_at`: UTC, ISO 8601, to the second ("2026-12-07T23:10:00Z")."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Box:
    """A box around a suspected fracture, in pixels of the original image."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float

    def to_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1, self.confidence]


@dataclass(frozen=True)
class HeadResult:
    """A classification head's answer (Olczak et al. 2017: laterality, body part, view)."""

    label: str  # the top class
    probs: dict[str, float]  # every class's probability, in the spec's class order

    @property
    def confidence(self) -> float:
        """The top class's probability."""
        return self.probs[self.label]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probs": dict(self.probs)}


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer for one radiograph."""

    source: str  # the path, or "<bytes>", "<array>", "<dataset>"
    score: float  # ensemble mean of the member probabilities
    fracture: bool  # score >= threshold
    threshold: float  # the operating point that was applied
    region: str  # the region whose threshold was applied, or "unknown"
    region_source: RegionSource  # where the region came from
    fallback: bool  # the global fallback threshold was applied (region unknown or unsupported)
    boxes: tuple[Box, ...]
    member_scores: tuple[float, ...]
    member_spread: float  # standard deviation of the member scores: "members disagree" signal
    model_name: str
    model_version: str
    latency_s: float  # request round trip, retries included (reading the source excluded)
    sop_instance_uid: str | None = None  # the UIDs are set for DICOM inputs only
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    level: Level = "negative"  # negative / suspicious / definite; the boxes inherit it
    definite_threshold: float | None = None  # the high-specificity point applied, None when the region has none
    # Ensembles with classification heads only (empty otherwise): each head's answer, and the quality-control
    # warnings (DICOM states one thing, a confident head another).
    heads: dict[str, HeadResult] = field(default_factory=dict)
    qc: tuple[str, ...] = ()
    # For `fracscan monitor`: when the answer came, and the input's non-identifying acquisition facts.
    scored_at: str = field(default_factory=utc_timestamp)
    acquisition: Acquisition = field(default_factory=Acquisition)
    # Who answered, from this answer's MODEL_IDENTITY (None only for a server that does not send it).
    model_identity: ModelIdentity | None = None

    ok: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain types, boxes as [x0, y0, x1, y1, confidence] lists, the model identity as
        `model_spec`, `model_members`, `model_thresholds`, `model_flags` (a list); `heads` and `qc` only
        when the ensemble has heads."""
        out: dict[str, Any] = {
            "source": self.source,
            "ok": True,
            "score": self.score,
            "fracture": self.fracture,
            "level": self.level,
            "threshold": self.threshold,
            "definite_threshold": self.definite_threshold,
            "region": self.region,
            "region_source": self.region_source,
            "fallback": self.fallback,
            "boxes": [b.to_list() for b in self.boxes],
            "member_scores": list(self.member_scores),
            "member_spread": self.member_spread,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "latency_s": self.latency_s,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "scored_at": self.scored_at,
            "acquisition": self.acquisition.to_dict(),
            **identity_fields(self.model_identity),
        }
        if self.heads:
            out["heads"] = {name: head.to_dict() for name, head in self.heads.items()}
            out["qc"] = list(self.qc)
        return out


IDENTITY_FIELDS = ("model_spec", "model_members", "model_thresholds", "model_flags")


def identity_fields(identity: ModelIdentity | None) -> dict[str, Any]:
    """The model identity as result rows carry it (every value None when there is none)."""
    if identity is None:
        return dict.fromkeys(IDENTITY_FIELDS)
    values = (identity.spec, identity.members, identity.thresholds, list(identity.flags))
    return dict(zip(IDENTITY_FIELDS, values, strict=True))


def identity_from_result(result: Any) -> ModelIdentity | None:
    """The MODEL_IDENTITY of a tritonclient InferResult (None when the answer has none); ValueError if malformed."""
    tensor = result.as_numpy(MODEL_IDENTITY)
    if tensor is None or not tensor.size:
        return None
    value = tensor.reshape(-1)[0]
    return ModelIdentity.from_json(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))


@dataclass(frozen=True)
class PredictionError:
    """The failed result for one input of `predict_many` (the batch goes on)."""

    source: str
    error: str  # what went wrong, without the source (that is `source`)
    kind: ErrorKind
    scored_at: str = field(default_factory=utc_timestamp)  # when it failed
    acquisition: Acquisition = field(default_factory=Acquisition)  # known when the input was read before it failed
    answer: Prediction | None = None  # kind "output": the answer whose results could not be written or stored

    ok: ClassVar[bool] = False

    @classmethod
    def from_exception(cls, source: str, exc: FracScanError) -> PredictionError:
        return cls(source, exc.reason, exc.kind)

    @classmethod
    def not_delivered(cls, answer: Prediction, reason: str) -> PredictionError:
        """A scored input whose results (SR, GSPS, SC, STOW-RS, overlay) could not be written or stored."""
        error = f"scored (score {answer.score:.3f}) but {reason}"
        return cls(answer.source, error, "output", answer.scored_at, answer.acquisition, answer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": False,
            "error": self.error,
            "kind": self.kind,
            "scored_at": self.scored_at,
            "acquisition": self.acquisition.to_dict(),
        }
