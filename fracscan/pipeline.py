"""The ensemble's steps as plain functions, and the in-process reference runner.

The Triton python models (`fracscan.triton_models`) and `ReferenceRunner` call exactly these
functions, so the served ensemble and the reference compute the same thing by construction;
the tests check it end to end.

A repository directory is self-describing: `fracscan.toml` (the spec), `thresholds.json`
and `member_XX/1/model.onnx` sit beside the Triton model folders.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fracscan import contract
from fracscan.decode import DecodedImage, DecodeError, decode_image
from fracscan.heads import HeadAnswer, average_head_probs, resolve_heads
from fracscan.onnxrt import ort_session
from fracscan.postprocess import Decision, average_maps, average_scores, decide
from fracscan.preprocess import (
    Box,
    EmptyImageError,
    Geometry,
    crop_of,
    normalize_frame,
    preprocess_frame,
    reducible_scale,
)
from fracscan.spec import EnsembleSpec, PreprocessSpec, load_spec
from fracscan.thresholds import Thresholds


class InputError(ValueError):
    """A request input cannot be scored; the message names the step and the cause."""


NO_STATEMENT: tuple[str, str] = ("", "")  # what a PNG (or a DICOM without the tags) states: nothing


@dataclass(frozen=True)
class Prepared:
    pixels: npt.NDArray[np.float32]  # [channels, S, S]: plain (+ LCN)
    geometry: Geometry
    region: str
    region_source: str  # "user", "dicom" or "unknown"
    stated: tuple[str, str] = NO_STATEMENT  # contract.DICOM_LABELS: DICOM's laterality and body part


@dataclass(frozen=True)
class PreparedFrame:
    frame: npt.NDArray[np.float32]  # [1, S, S]: the plain frame in [-1, 1], padding -1
    geometry: Geometry
    region: str
    region_source: str
    stated: tuple[str, str] = NO_STATEMENT


def decode_for_frame(data: bytes, pre: PreprocessSpec) -> tuple[DecodedImage, npt.NDArray[np.float32], Box]:
    """Decode only what the frame needs: (the decoded image, its pixels ready to crop, the crop box).

    A JPEG 2000 is decoded at the coarsest resolution level whose short side is >= S; when the crop
    found there is shorter than S, at the finer level that leaves the crop >= S (never upsampled), and
    the crop is found again there. Other formats are decoded once, at full size.
    """
    decoded = decode_image(data, min_side=pre.size, max_scale=reducible_scale)
    while True:
        img, box = crop_of(decoded.pixels, pre, decoded.scale, decoded.shape)
        short = min(box[2] - box[0], box[3] - box[1])  # original pixels
        if decoded.scale == 1 or short >= pre.size * decoded.scale:
            return decoded, img, box
        needed = math.ceil(pre.size * min(decoded.shape) / short)
        decoded = decode_image(data, min_side=max(needed, min(decoded.pixels.shape) + 1), max_scale=reducible_scale)


def prepare_frame(data: bytes, requested_region: str | None, spec: EnsembleSpec) -> PreparedFrame:
    """Step 1a (the `preprocess` model): decode, resolve the region, crop, resize, pad."""
    try:
        decoded, img, box = decode_for_frame(data, spec.preprocess)
        plain, geometry = preprocess_frame(
            img, spec.preprocess, box=box, scale=decoded.scale, original_shape=decoded.shape
        )
    except (DecodeError, EmptyImageError) as exc:
        raise InputError(f"preprocess: {exc}") from None
    region, source = spec.resolve_region(requested_region, decoded.region_terms)
    return PreparedFrame(plain[None], geometry, region, source, decoded.stated)


def normalize(frames: npt.NDArray[np.float32], spec: EnsembleSpec) -> npt.NDArray[np.float32]:
    """Step 1b (the `normalize` model on the CPU target): frames [B, 1, S, S] -> pixels [B, channels, S, S].

    channels is 2 (plain, LCN) or, with `lcn = false`, 1: the plain frame as it came.
    """
    return np.stack([normalize_frame(frame[0], spec.preprocess) for frame in frames])


def prepare(data: bytes, requested_region: str | None, spec: EnsembleSpec) -> Prepared:
    """Step 1, the reference: both halves -> pixels [channels, S, S] and the geometry."""
    prepared = prepare_frame(data, requested_region, spec)
    pixels = normalize(prepared.frame[None], spec)[0]
    return Prepared(pixels, prepared.geometry, prepared.region, prepared.region_source, prepared.stated)


def combine(
    member_scores: list[float], member_maps: list[npt.NDArray[np.float32]]
) -> tuple[float, npt.NDArray[np.float32] | None]:
    """Step 3: the ensemble score and map."""
    return average_scores(np.asarray(member_scores)), average_maps(member_maps)


class MemberOutputs(NamedTuple):
    scores: npt.NDArray[np.float32]  # [B]
    maps: npt.NDArray[np.float32] | None  # [B, S/8, S/8]
    heads: dict[str, npt.NDArray[np.float32]]  # head -> softmax probabilities [B, K]


def run_member_with_heads(session: Any, pixels: npt.NDArray[np.float32], heads: Sequence[str] = ()) -> MemberOutputs:
    """Step 2 for one member: [B, channels, S, S] -> scores, maps and the named heads' probabilities."""
    outputs = session.run(None, {contract.MEMBER_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})
    names = [o.name for o in session.get_outputs()]
    scores = outputs[names.index(contract.MEMBER_SCORE)].reshape(-1)
    maps = outputs[names.index(contract.MEMBER_MAP)][:, 0] if contract.MEMBER_MAP in names else None
    missing = [h for h in heads if contract.member_head(h) not in names]
    if missing:
        raise ValueError(f"the member has no output for head(s) {missing} (its outputs: {names})")
    probs = {h: outputs[names.index(contract.member_head(h))].reshape(len(scores), -1) for h in heads}
    return MemberOutputs(scores, maps, probs)


def run_member(
    session: Any, pixels: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Step 2 for one member, score and map only: [B, channels, S, S] -> scores [B], maps [B, S/8, S/8] or None."""
    scores, maps, _ = run_member_with_heads(session, pixels)
    return scores, maps


@dataclass(frozen=True)
class EnsembleRepository:
    """A Triton model repository generated by `fracscan export`, as files on disk."""

    path: Path
    spec: EnsembleSpec
    thresholds: Thresholds

    @classmethod
    def open(cls, path: str | Path) -> EnsembleRepository:
        path = Path(path)
        return cls(path, load_spec(path / contract.SPEC_FILE), Thresholds.load(path / contract.THRESHOLDS_FILE))

    def member_onnx(self, index: int) -> Path:
        return self.path / contract.member_model(index) / contract.MODEL_VERSION / contract.ONNX_FILE


@dataclass(frozen=True)
class ReferenceResult:
    score: float
    fracture: bool
    threshold: float
    region: str
    region_source: str
    fallback: bool
    member_scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    latency_s: float
    level: str = "negative"
    definite_threshold: float | None = None
    heads: dict[str, HeadAnswer] = field(default_factory=dict)  # an ensemble with heads: each head's answer
    qc: tuple[str, ...] = ()  # the quality-control warnings (fracscan.heads.resolve_heads)


class ReferenceRunner:
    """Pre-processing -> every member on ONNX Runtime -> averaging -> post-processing, in process.

    The reference the served ensemble must match, and the baseline for benchmarks.
    """

    def __init__(self, repository: str | Path, threads: int | None = None):
        self.repo = EnsembleRepository.open(repository)
        self.sessions = [ort_session(self.repo.member_onnx(i), threads) for i in range(len(self.repo.spec.members))]

    def predict(self, data: bytes, region: str | None = None) -> ReferenceResult:
        start = time.perf_counter()
        spec = self.repo.spec
        prepared = prepare(data, region, spec)
        batch = prepared.pixels[None]
        head_names = [h.name for h in spec.heads]
        scores, maps = [], []
        member_probs: dict[str, list[npt.NDArray[np.float32]]] = {h: [] for h in head_names}
        for session in self.sessions:
            s, m, probs = run_member_with_heads(session, batch, head_names)
            scores.append(float(s[0]))
            if m is not None:
                maps.append(m[0])
            for h in head_names:
                member_probs[h].append(probs[h][0])
        score, prob_map = combine(scores, maps)
        region_used, source = prepared.region, prepared.region_source
        answers: dict[str, HeadAnswer] = {}
        qc: tuple[str, ...] = ()
        if spec.heads:  # before deciding: the body-part head may name the region (REGION_SOURCE "model")
            averaged = {h: average_head_probs(p) for h, p in member_probs.items()}
            outcome = resolve_heads(spec, averaged, region_used, source, prepared.stated)
            answers, region_used, source, qc = outcome.answers, outcome.region, outcome.region_source, outcome.qc
        decision: Decision = decide(score, prob_map, region_used, prepared.geometry, self.repo.thresholds)
        return ReferenceResult(
            score=score,
            fracture=decision.fracture,
            threshold=decision.threshold,
            region=region_used,
            region_source=source,
            fallback=decision.fallback,
            member_scores=np.asarray(scores, dtype=np.float32),
            boxes=decision.boxes,
            latency_s=time.perf_counter() - start,
            level=decision.level,
            definite_threshold=decision.definite_threshold,
            heads=answers,
            qc=qc,
        )
