"""A synthetic case: `make_case` (one radiograph and its ground truth), `dataset` and `exam_dataset` (many)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from . import streams
from .fractures import place_fracture
from .phantoms import LAYOUTS, REGIONS
from .primitives import FloatArray
from .render import expose, finish, render_layers
from .scenes import Scene, choose, draw_scene
from .views import VIEWS, check_view, pick_region

DEMO_NOTICE = "SYNTHETIC DEMO IMAGE - NOT A PATIENT - NOT FOR CLINICAL USE"


@dataclass(frozen=True, eq=False)  # eq=False: numpy pixels make field-wise == ambiguous
class SyntheticCase:
    """One synthetic radiograph and its ground truth.

    pixels: 2-D uint16, MONOCHROME2 sense (larger = brighter = more attenuation),
        values in ``[0, 2**bits_stored - 1]``.
    box: (x0, y0, x1, y1) of the fracture line, half-open (``pixels[y0:y1, x0:x1]``),
        in the coordinates of ``pixels``; None when there is no fracture.
    field: (x0, y0, x1, y1) half-open, the area inside the collimation border.
    marker: (x0, y0, x1, y1) half-open, the burned-in laterality marker.
    view: the exam view drawn ("frontal" / "lateral" / "oblique", see `views`); None: no view asked for.
    """

    pixels: NDArray[np.uint16]
    region: str
    fracture: bool
    box: tuple[int, int, int, int] | None
    bits_stored: int
    seed: int
    laterality: Literal["R", "L"]
    field: tuple[int, int, int, int] = (0, 0, 0, 0)
    marker: tuple[int, int, int, int] = (0, 0, 0, 0)
    fracture_kind: str | None = None  # "undisplaced" | "displaced" | "angulated" | None
    view: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1


def build(
    seed: int,
    region: str | None,
    fracture: bool | None,
    shape: tuple[int, int] | None,
    view: str | None = None,
) -> tuple[SyntheticCase, Scene, dict[str, FloatArray]]:
    seed = streams.check_seed(seed)
    if view is not None and region is None:
        region = pick_region(seed)
    reg, frac, lat, H, W, bits = choose(seed, region, fracture, shape)
    check_view(reg, view)
    sc = draw_scene(seed, reg, lat, H, W, bits, view)
    fr, box = (None, None)
    if frac:
        fr, box = place_fracture(sc, seed)
    layers = render_layers(seed, sc, fr)
    pixels = finish(seed, sc, expose(seed, sc, layers))
    pixels.setflags(write=False)
    case = SyntheticCase(
        pixels=pixels,
        region=reg,
        fracture=frac,
        box=box,
        bits_stored=bits,
        seed=seed,
        laterality=lat,  # type: ignore[arg-type]
        field=sc.field,
        marker=sc.marker["box"],
        fracture_kind=None if fr is None else fr.kind,
        view=view,
    )
    return case, sc, layers


def make_case(
    seed: int,
    region: str | None = None,
    fracture: bool | None = None,
    shape: tuple[int, int] | None = None,
    view: str | None = None,
) -> SyntheticCase:
    """One synthetic radiograph, a pure function of its arguments.

    region / fracture / shape default to values drawn from the seed; ``shape`` is
    (rows, cols). Same seed and region with fracture True / False give the same picture
    except for the fracture. ``view`` (one of ``VIEWS[region]``) turns the limb into that exam
    view; None draws the layout as it is (for wrist / hand / ankle the same as "frontal"). A
    view without a region draws one of the regions that have views.
    """
    return build(seed, region, fracture, shape, view)[0]


def dataset(
    n: int,
    seed: int,
    fracture_rate: float = 0.5,
    regions: Iterable[str] = REGIONS,
    shape: tuple[int, int] | None = None,
) -> Iterator[SyntheticCase]:
    """``n`` cases, deterministic for ``seed``; each case's ``seed`` reproduces it with make_case."""
    seed = streams.check_seed(seed)
    regs = tuple(regions)
    if not regs:
        raise ValueError("regions is empty")
    for r in regs:
        if r not in LAYOUTS:
            raise ValueError(f"unknown region {r!r}; expected one of {', '.join(REGIONS)}")
    if not 0.0 <= fracture_rate <= 1.0:
        raise ValueError(f"fracture_rate must be in [0, 1], got {fracture_rate}")
    rng = np.random.default_rng([seed, 0xDA7A5E7])
    for _ in range(int(n)):
        hi, lo = rng.integers(0, 1 << 21), rng.integers(0, 1 << 32)
        case_seed = int(hi) << 32 | int(lo)  # < 2**53
        region = regs[int(rng.integers(len(regs)))]
        frac = bool(rng.random() < fracture_rate)
        yield make_case(case_seed, region, frac, shape)


def exam_dataset(
    n: int,
    seed: int,
    regions: Iterable[str] = ("ankle", "hand", "wrist"),
    shape: tuple[int, int] | None = (384, 320),
    fracture_rate: float = 0.5,
) -> Iterator[SyntheticCase]:
    """``n`` cases with region, view and fracture drawn uniformly from ``seed`` (laterality from each case's seed).

    Deterministic; ``make_case(c.seed, c.region, c.fracture, shape, c.view)`` reproduces a case. The
    labels of the Olczak et al. (2017) task: fracture, laterality, body part and exam view.
    """
    seed = streams.check_seed(seed)
    regs = tuple(regions)
    if not regs:
        raise ValueError("regions is empty")
    for r in regs:
        if r not in VIEWS:
            raise ValueError(f"region {r!r} has no exam views; expected some of {', '.join(VIEWS)}")
    if not 0.0 <= fracture_rate <= 1.0:
        raise ValueError(f"fracture_rate must be in [0, 1], got {fracture_rate}")
    rng = np.random.default_rng([seed, 0xE7A4])
    for _ in range(int(n)):
        hi, lo = rng.integers(0, 1 << 21), rng.integers(0, 1 << 32)
        case_seed = int(hi) << 32 | int(lo)  # < 2**53
        region = regs[int(rng.integers(len(regs)))]
        view = VIEWS[region][int(rng.integers(len(VIEWS[region])))]
        frac = bool(rng.random() < fracture_rate)
        yield make_case(case_seed, region, frac, shape, view)
