"""Study answers: `StudyPrediction` and `ViewPrediction`, and the request / response of `fracscan_study`.

One request carries every view of one study; the server's study model scores each view with the
ensemble and decides the study (see `fracscan.study`). A view the client cannot read, or the server
cannot score, is a `PredictionError` among the views and the study is decided on the others.

With an ensemble that has classification heads, the study answers each head too (the views' weighted
vote, `fracscan.study.study_heads`) with QC warnings where the views disagree, and each view its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np

from fracscan import contract as c
from fracscan.client.errors import FracScanError, InvalidInput
from fracscan.client.heads import HeadClasses
from fracscan.client.models import Box, HeadResult, Level, PredictionError, identity_fields, identity_from_result
from fracscan.client.sources import Payload, Source, read_source, source_label
from fracscan.provenance import ModelIdentity


@dataclass(frozen=True)
class ViewPrediction:
    """One view's answer inside a study: its ensemble score, level, region and boxes."""

    source: str
    score: float
    threshold: float  # the view's image-level threshold
    level: Level
    region: str
    boxes: tuple[Box, ...]
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    heads: dict[str, HeadResult] = field(default_factory=dict)  # ensembles with heads only
    qc: tuple[str, ...] = ()  # the view's own QC (DICOM contradicting a confident head)

    ok: ClassVar[bool] = True

    @property
    def fracture(self) -> bool:
        """Positive at the view's own (image-level) threshold."""
        return bool(self.level != "negative")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": True,
            "score": self.score,
            "fracture": self.fracture,
            "level": self.level,
            "threshold": self.threshold,
            "region": self.region,
            "boxes": [b.to_list() for b in self.boxes],
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            **_heads_dict(self.heads, self.qc),
        }


def _heads_dict(heads: dict[str, HeadResult], qc: tuple[str, ...]) -> dict[str, Any]:
    return {"heads": {name: h.to_dict() for name, h in heads.items()}, "qc": list(qc)} if heads else {}


@dataclass(frozen=True)
class StudyPrediction:
    """The answer for one study: the study decision and, in request order, each view's result or error."""

    study_instance_uid: str | None  # the views' common StudyInstanceUID (DICOM), else None
    sources: tuple[str, ...]
    views: tuple[ViewPrediction | PredictionError, ...]
    score: float  # the views' scores aggregated by `rule`
    fracture: bool
    threshold: float
    level: Level
    definite_threshold: float | None
    region: str
    fallback: bool
    views_used: int  # views that were scored (the failed ones are left out)
    rule: str  # max / mean / noisy_or
    calibrated: bool  # study thresholds applied; false: the image-level thresholds with the default rule
    disagreeing: tuple[int, ...]  # indices of scored views whose region differs from `region`
    model_name: str
    model_version: str
    latency_s: float
    # Ensembles with heads only: each head's study answer (probs: the classes' shares of the views' votes)
    # and the QC warnings where views disagree on a head that describes the study (laterality, body part).
    heads: dict[str, HeadResult] = field(default_factory=dict)
    qc: tuple[str, ...] = ()
    model_identity: ModelIdentity | None = None  # who answered (the study model's MODEL_IDENTITY)

    ok: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "sources": list(self.sources),
            "ok": True,
            "score": self.score,
            "fracture": self.fracture,
            "level": self.level,
            "threshold": self.threshold,
            "definite_threshold": self.definite_threshold,
            "region": self.region,
            "fallback": self.fallback,
            "views_used": self.views_used,
            "rule": self.rule,
            "calibrated": self.calibrated,
            "disagreeing_views": list(self.disagreeing),
            "views": [v.to_dict() for v in self.views],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "latency_s": self.latency_s,
            **_heads_dict(self.heads, self.qc),
            **identity_fields(self.model_identity),
        }


def read_views(views: Sequence[Source], decode_on_client: bool) -> list[Payload | PredictionError]:
    """Read every view; one that cannot be read is its error (the others go on). InvalidInput when none can."""
    if not views:
        raise ValueError("predict_study needs at least one view")
    read: list[Payload | PredictionError] = []
    for view in views:
        try:
            read.append(read_source(view, decode_on_client))
        except FracScanError as exc:
            read.append(PredictionError.from_exception(source_label(view), exc))
    if not any(isinstance(v, Payload) for v in read):
        first = next(v for v in read if isinstance(v, PredictionError))
        raise InvalidInput(f"no view of the study could be read ({first.source}: {first.error})")
    return read


@dataclass(frozen=True)
class StudyRequest:
    """The views that were read (their payloads) and the region to send for all of them."""

    payloads: tuple[Payload, ...]
    region: str | None
    read_errors: tuple[tuple[int, PredictionError], ...]  # (index among the study's views, error)
    total: int  # views the caller gave
    heads: HeadClasses = field(default_factory=dict)  # the ensemble's heads, whose study outputs are asked for

    @classmethod
    def make(
        cls, views: Sequence[Payload | PredictionError], region: str | None, heads: HeadClasses | None = None
    ) -> StudyRequest:
        region = (region or "").strip() or None
        payloads = tuple(v for v in views if isinstance(v, Payload))
        if region is None:  # decoded on the client: send the first view's DICOM term for the study
            region = next((p.dicom_region for p in payloads if p.dicom_region), None)
        errors = tuple((i, v) for i, v in enumerate(views) if isinstance(v, PredictionError))
        return cls(payloads, region, errors, len(views), dict(heads or {}))

    @property
    def label(self) -> str:
        return f"study of {self.total} views"

    def tensors(self, protocol: str) -> tuple[list[Any], list[Any]]:
        """(inputs, requested outputs) for tritonclient.http or tritonclient.grpc."""
        module = importlib.import_module(f"tritonclient.{protocol}")
        images = np.empty(len(self.payloads), dtype=np.object_)
        for i, payload in enumerate(self.payloads):
            images[i] = payload.data  # object, not np.bytes_: fixed-width bytes drop trailing NULs
        inputs = [module.InferInput(c.IMAGE, [len(self.payloads)], "BYTES")]
        inputs[0].set_data_from_numpy(images)
        if self.region:
            inputs.append(module.InferInput(c.REGION, [1], "BYTES"))
            inputs[1].set_data_from_numpy(np.array([self.region.encode()], dtype=np.object_))
        dims = tuple((h, len(k)) for h, k in self.heads.items())
        names = [t.name for t in c.study_outputs(dims)]
        return inputs, [module.InferRequestedOutput(name) for name in names]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _head_result(name: str, classes: tuple[str, ...], label: str, probs: Any) -> HeadResult:
    values = np.asarray(probs, dtype=np.float64).reshape(-1)
    if values.size != len(classes) or label not in classes:
        raise ValueError(f"head {name!r}: {label!r} with {values.size} values for the classes {', '.join(classes)}")
    return HeadResult(label, {k: float(v) for k, v in zip(classes, values, strict=True)})


ViewHeads = dict[str, HeadResult]


def parse_study_heads(
    result: Any, heads: HeadClasses, views: int
) -> tuple[ViewHeads, tuple[str, ...], list[ViewHeads], list[tuple[str, ...]]]:
    """(study heads, study QC, each view's heads, each view's QC) of a `fracscan_study` answer; empty without heads.

    A failed view (VIEW_<HEAD> "") gets no heads; a head or class the contract does not allow is a ValueError.
    """
    if not heads:
        return {}, (), [{} for _ in range(views)], [() for _ in range(views)]
    study: ViewHeads = {}
    per_view: list[ViewHeads] = [{} for _ in range(views)]
    for name, classes in heads.items():
        top, probs = c.study_head_outputs(name)
        study[name] = _head_result(name, classes, _text(result.as_numpy(top).reshape(-1)[0]), result.as_numpy(probs))
        top, probs = c.view_head_outputs(name)
        labels = [_text(v) for v in result.as_numpy(top).reshape(-1)]
        rows = result.as_numpy(probs).reshape(len(labels), -1)
        if len(labels) != views:
            raise ValueError(f"{top}: {len(labels)} answers for {views} views")
        for i, label in enumerate(labels):
            if label:
                per_view[i][name] = _head_result(name, classes, label, rows[i])
    qc = _split_qc(result.as_numpy(c.STUDY_QC).reshape(-1)[0])
    view_qc = [_split_qc(v) for v in result.as_numpy(c.VIEW_QC).reshape(-1)]
    return study, qc, per_view, view_qc


def _split_qc(value: Any) -> tuple[str, ...]:
    return tuple(w for w in _text(value).split(c.QC_SEPARATOR) if w.strip())


def parse_study_result(result: Any, request: StudyRequest, model: str, latency_s: float) -> StudyPrediction:
    """A tritonclient InferResult (http or grpc) of `fracscan_study` -> StudyPrediction."""

    def values(name: str) -> Any:
        return result.as_numpy(name).reshape(-1)

    scores, levels = values(c.VIEW_SCORES), [_text(v) for v in values(c.VIEW_LEVELS)]
    thresholds = values(c.VIEW_THRESHOLDS)
    regions, errors = [_text(v) for v in values(c.VIEW_REGIONS)], [_text(v) for v in values(c.VIEW_ERRORS)]
    boxes = result.as_numpy(c.VIEW_BOXES).reshape(-1, c.VIEW_BOX_COLUMNS)
    if not len(scores) == len(request.payloads) == len(errors):
        raise ValueError(f"{len(scores)} view answers for {len(request.payloads)} views")
    study_heads, study_qc, view_heads, view_qc = parse_study_heads(result, request.heads, len(request.payloads))
    sent: list[ViewPrediction | PredictionError] = []
    for i, payload in enumerate(request.payloads):
        if errors[i]:
            sent.append(PredictionError(payload.label, errors[i], "rejected"))
            continue
        own = tuple(Box(*(float(v) for v in row[1:])) for row in boxes if int(row[0]) == i)
        uids = payload.uids
        sent.append(
            ViewPrediction(
                payload.label,
                float(scores[i]),
                float(thresholds[i]),
                cast(Level, levels[i]),  # the server answers one of contract.LEVELS
                regions[i],
                own,
                uids.get("sop"),
                uids.get("series"),
                view_heads[i],
                view_qc[i],
            )
        )
    views: list[ViewPrediction | PredictionError] = []
    failed = dict(request.read_errors)
    it = iter(sent)
    for index in range(request.total):
        views.append(failed[index] if index in failed else next(it))
    region = _text(values(c.REGION_USED)[0])
    studies = {p.uids.get("study") for p in request.payloads}
    response = result.get_response()
    if isinstance(response, dict):  # http: the JSON header of the response
        name, version = response.get("model_name", model), response.get("model_version", "")
    else:  # grpc: a ModelInferResponse protobuf
        name, version = response.model_name or model, response.model_version
    definite = float(values(c.STUDY_DEFINITE_THRESHOLD)[0])
    return StudyPrediction(
        study_instance_uid=studies.pop() if len(studies) == 1 else None,
        sources=tuple(v.source for v in views),
        views=tuple(views),
        score=float(values(c.STUDY_SCORE)[0]),
        fracture=bool(values(c.STUDY_FRACTURE)[0]),
        threshold=float(values(c.STUDY_THRESHOLD)[0]),
        level=cast(Level, _text(values(c.STUDY_LEVEL)[0])),
        definite_threshold=None if definite < 0 else definite,
        region=region,
        fallback=bool(values(c.STUDY_FALLBACK)[0]),
        views_used=int(values(c.STUDY_VIEWS_USED)[0]),
        rule=_text(values(c.STUDY_RULE)[0]),
        calibrated=bool(values(c.STUDY_CALIBRATED)[0]),
        disagreeing=tuple(i for i, v in enumerate(views) if isinstance(v, ViewPrediction) and v.region != region),
        model_name=name,
        model_version=str(version),
        latency_s=latency_s,
        heads=study_heads,
        qc=study_qc,
        model_identity=identity_from_result(result),
    )
