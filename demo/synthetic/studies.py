"""Synthetic studies: two or three views of one case, the fracture visible in some of them. DEMO ONLY.

A study has one region and one laterality; its views differ by seed (pose, exposure, noise, border).
In a fractured study each view shows the fracture with probability `VISIBLE` and at least one view
does, so a single view can miss what the study shows: the point of a study-level answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import streams
from .cases import SyntheticCase, make_case
from .phantoms import LANDSCAPE, REGIONS
from .scenes import choose

VISIBLE = 0.6  # chance that a view of a fractured study shows the fracture
SEED_LIMIT = 1 << 53


@dataclass(frozen=True)
class SyntheticStudy:
    uid: str  # a synthetic StudyInstanceUID-like key
    region: str
    laterality: str
    fracture: bool  # the study label: some view shows a fracture
    views: tuple[SyntheticCase, ...]

    @property
    def visible(self) -> tuple[bool, ...]:
        """Per view: does it show the fracture (the image-level label)."""
        return tuple(v.fracture for v in self.views)


def _small_shape(seed: int, region: str) -> tuple[int, int]:
    """The demo's small radiographs (the frame is 128 pixels anyway), drawn from the view's seed."""
    h, w = np.random.default_rng(seed).integers((360, 280), (440, 360))
    return (int(w), int(h)) if region in LANDSCAPE else (int(h), int(w))


def make_study(
    seed: int,
    region: str | None = None,
    fracture: bool | None = None,
    views: int | None = None,
    small: bool = True,
) -> SyntheticStudy:
    """One study, a pure function of its arguments; `views` defaults to 2 or 3 drawn from the seed."""
    seed = streams.check_seed(seed)
    rng = np.random.default_rng([seed, 0x57D1E5])
    region = region or REGIONS[int(rng.integers(len(REGIONS)))]
    fracture = bool(rng.random() < 0.5) if fracture is None else bool(fracture)
    count = int(views or rng.integers(2, 4))
    if count < 1:
        raise ValueError(f"a study needs at least one view, got {count}")
    shown = rng.random(count) < VISIBLE if fracture else np.zeros(count, dtype=bool)
    if fracture and not shown.any():
        shown[int(rng.integers(count))] = True
    seeds: list[int] = []
    laterality = None
    while len(seeds) < count:  # views of one study share the side: keep the seeds whose scene has it
        candidate = int(rng.integers(0, SEED_LIMIT))
        side = choose(candidate, region, None, (400, 320))[2]
        if laterality is None or side == laterality:
            laterality = side
            seeds.append(candidate)
    cases = tuple(
        make_case(s, region, bool(f), _small_shape(s, region) if small else None)
        for s, f in zip(seeds, shown, strict=True)
    )
    return SyntheticStudy(f"synthetic-study-{seed}", region, str(laterality), fracture, cases)


def studies(
    n: int, seed: int, fracture_rate: float = 0.5, regions: tuple[str, ...] = REGIONS
) -> Iterator[SyntheticStudy]:
    """`n` studies, regions in turn, fractured with probability `fracture_rate`; deterministic for `seed`."""
    rng = np.random.default_rng([streams.check_seed(seed), 0x57D1E5])
    for i in range(int(n)):
        yield make_study(
            int(rng.integers(0, SEED_LIMIT)), regions[i % len(regions)], bool(rng.random() < fracture_rate)
        )
