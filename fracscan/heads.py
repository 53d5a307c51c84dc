"""Classification heads (Olczak et al. 2017): averaging, top classes, the region they name, quality control.

The paper's secondary outputs (laterality, body part, exam view) are most useful as quality control:
when DICOM states one thing and a confident head another, the answer says so (`QC`), naming both.
The body-part head also names the region of a radiograph that neither the user nor DICOM does
(REGION_SOURCE "model"), so the region's threshold applies instead of the fallback. One home for
these rules: the `threshold` model and the in-process reference both call `resolve_heads`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fracscan.contract import UNKNOWN_REGION
from fracscan.spec import EnsembleSpec, HeadSpec

MODEL_SOURCE = "model"


@dataclass(frozen=True)
class HeadAnswer:
    label: str  # the top class
    probs: npt.NDArray[np.float32]  # [K], in the spec's class order

    @property
    def confidence(self) -> float:
        return float(self.probs.max())


@dataclass(frozen=True)
class HeadsOutcome:
    answers: dict[str, HeadAnswer]
    region: str
    region_source: str
    qc: tuple[str, ...]  # empty when nothing contradicts DICOM


def average_head_probs(member_probs: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float32]:
    """The members' mean probabilities (unweighted, like the scores)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64).reshape(-1) for p in member_probs])
    mean: npt.NDArray[np.float32] = stacked.mean(axis=0).astype(np.float32)
    return mean


def answer(head: HeadSpec, probs: npt.ArrayLike) -> HeadAnswer:
    values = np.asarray(probs, dtype=np.float32).reshape(-1)
    if values.size != len(head.classes):
        raise ValueError(f"head {head.name!r}: {values.size} probabilities for {len(head.classes)} classes")
    return HeadAnswer(head.classes[int(np.argmax(values))], values)


def _stated(value: str) -> tuple[str, str]:
    keyword, _, stated = value.partition("=")
    return keyword, stated.strip().upper()


def _laterality_conflict(head: HeadSpec, found: HeadAnswer, stated: str) -> str | None:
    keyword, value = _stated(stated)
    if value not in ("L", "R") or found.confidence < head.check_confidence:
        return None  # no laterality, or "B" (both) / "U" (unpaired): nothing to contradict
    if found.label[0].upper() == value:
        return None
    return (
        f"{head.name}: DICOM {keyword} is {value}, the {head.name} head says {found.label} (p = {found.confidence:.2f})"
    )


def _body_part_conflict(spec: EnsembleSpec, head: HeadSpec, found: HeadAnswer, stated: str) -> str | None:
    keyword, value = _stated(stated)
    dicom_region, _ = spec.resolve_region(value) if value else (UNKNOWN_REGION, "")
    model_region = head.region_of(found.label)
    if dicom_region == UNKNOWN_REGION or model_region is None or found.confidence < head.check_confidence:
        return None
    if dicom_region == model_region:
        return None
    return (
        f"{head.name}: DICOM {keyword} is {value}, the {head.name} head says {found.label} (p = {found.confidence:.2f})"
    )


def resolve_heads(
    spec: EnsembleSpec,
    probs: Mapping[str, npt.ArrayLike],
    region: str,
    region_source: str,
    stated: Sequence[str] = ("", ""),
) -> HeadsOutcome:
    """Top classes, the region (from the body-part head when nobody named one), and the QC warnings.

    `probs` holds each head's averaged probabilities; `stated` is what DICOM says (contract.DICOM_LABELS:
    laterality, body part). The region comes from the body-part head only when its top class is at
    least `check_confidence` sure: a guess below that keeps the fallback threshold.
    """
    answers = {h.name: answer(h, probs[h.name]) for h in spec.heads}
    laterality, body_part = (*stated, "", "")[:2]
    warnings = []
    for head in spec.heads:
        found = answers[head.name]
        conflict = None
        if head.check == "laterality":
            conflict = _laterality_conflict(head, found, laterality)
        elif head.check == "body_part":
            conflict = _body_part_conflict(spec, head, found, body_part)
        if conflict:
            warnings.append(conflict)
    region_head = spec.region_head
    if region_source == "unknown" and region_head is not None:
        found = answers[region_head.name]
        model_region = region_head.region_of(found.label)
        if model_region is not None and found.confidence >= region_head.check_confidence:
            region, region_source = model_region, MODEL_SOURCE
    return HeadsOutcome(answers, region, region_source, tuple(warnings))
