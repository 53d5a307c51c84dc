"""The scene of a seed: region, shape, bit depth, laterality, frame, layout (in its exam view), border, marker.

Everything drawn for a seed except the fracture, so that the fractured and the normal case of
one seed share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from . import streams
from .phantoms import LANDSCAPE, LAYOUTS, REGIONS
from .primitives import Frame, Jitter, Prim, scale_prim
from .views import view_layout


class Border(TypedDict):
    """The collimation border outside the field: its kind ("black", "noisy", "bright") and look."""

    kind: str
    level: float
    noise: float
    penumbra: float


class Marker(TypedDict):
    """The burned-in laterality marker: its box (x0, y0, x1, y1), grey level and letter."""

    box: tuple[int, int, int, int]
    level: float
    text: str


@dataclass
class Scene:
    """Everything drawn for a seed except the fracture (shared by fractured / normal)."""

    region: str
    laterality: str
    H: int
    W: int
    frame: Frame
    bones: list[Prim]
    soft: list[Prim]
    ref_px: float
    bits: int
    field: tuple[int, int, int, int]
    border: Border
    marker: Marker
    s: float
    scale: float
    view: str | None = None  # the exam view drawn (None: the layout as it is, no view)


def choose(
    seed: int, region: str | None, fracture: bool | None, shape: tuple[int, int] | None
) -> tuple[str, bool, str, int, int, int]:
    rng = streams.rng(seed, streams.CHOICE)
    r_idx = int(rng.integers(len(REGIONS)))
    f_draw = bool(rng.random() < 0.5)
    lat = "R" if rng.random() < 0.5 else "L"
    flip_orient = rng.random() < 0.15
    H = int(rng.integers(740, 1001))
    W = int(np.clip(round(H * rng.uniform(0.7, 0.86)), 600, H - 60))
    bits = int(rng.choice([12, 12, 12, 12, 14, 14, 16]))
    reg = REGIONS[r_idx] if region is None else region
    if reg not in LAYOUTS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    frac = f_draw if fracture is None else bool(fracture)
    if shape is None:
        landscape = (reg in LANDSCAPE) != flip_orient
        if landscape:
            H, W = W, H
    else:
        if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 96:
            raise ValueError(f"shape must be (rows, cols) with both >= 96, got {shape!r}")
        H, W = int(shape[0]), int(shape[1])
    return reg, frac, lat, H, W, bits


def draw_scene(seed: int, region: str, lat: str, H: int, W: int, bits: int, view: str | None = None) -> Scene:
    rf = streams.rng(seed, streams.FRAME)
    natural_landscape = region in LANDSCAPE
    actual_landscape = W > H
    base_rot = 0.0
    Wc, Hc = W, H
    if natural_landscape != actual_landscape and W != H:
        Wc, Hc = H, W
        base_rot = 90.0 if rf.random() < 0.5 else -90.0
    else:
        rf.random()
    s = float(min(Wc, Hc))
    rot = base_rot + rf.uniform(-18, 18)
    scale = rf.uniform(0.9, 1.08)
    shift = np.array([rf.uniform(-0.05, 0.05) * W, rf.uniform(-0.05, 0.05) * H])
    mirror = -1.0 if lat == "L" else 1.0
    a = math.radians(rot)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    M = scale * R @ np.diag([mirror, 1.0])
    frame = Frame(H, W, M, np.array([Wc / 2, Hc / 2]), np.array([W / 2, H / 2]) + shift)

    lay = LAYOUTS[region](Wc / s, Hc / s, Jitter(streams.rng(seed, streams.LAYOUT)))
    lay = view_layout(seed, region, view, lay, Hc / s)
    bones = [scale_prim(b, s) for b in lay.bones]
    soft = [scale_prim(b, s) for b in lay.soft]

    # collimation border
    sides = []
    no_border = rf.random() < 0.12
    for dim in (W, H, W, H):  # left, top, right, bottom
        wd = 0 if (no_border or rf.random() < 0.3) else int(rf.uniform(0.015, 0.12) * dim)
        sides.append(wd)
    kind = str(rf.choice(["black", "noisy", "bright"], p=[0.45, 0.35, 0.2]))
    border: Border = {
        "kind": kind,
        "level": {"black": rf.uniform(0.0, 0.012), "noisy": rf.uniform(0.03, 0.15), "bright": rf.uniform(0.85, 1.0)}[
            kind
        ],
        "noise": rf.uniform(0.008, 0.03),
        "penumbra": rf.uniform(0.6, 3.0),
    }
    fld = (sides[0], sides[1], W - sides[2], H - sides[3])

    # laterality marker: a corner, inside the border when it is wide enough and not bright
    mh = round(rf.uniform(0.035, 0.06) * H)
    corner = int(rf.integers(4))
    aspect = 0.8
    mw = round(mh * aspect)
    pad = max(3, int(0.01 * min(H, W)))
    left = corner in (0, 3)
    top = corner in (0, 1)
    horiz_border = sides[1] if top else sides[3]
    vert_border = sides[0] if left else sides[2]
    in_border = kind != "bright" and (horiz_border >= mh + 2 * pad or vert_border >= mw + 2 * pad)
    if in_border and horiz_border >= mh + 2 * pad:
        my = (horiz_border - mh) // 2 if top else H - horiz_border + (horiz_border - mh) // 2
        mx = fld[0] + pad if left else fld[2] - pad - mw
    elif in_border:
        mx = (vert_border - mw) // 2 if left else W - vert_border + (vert_border - mw) // 2
        my = fld[1] + pad if top else fld[3] - pad - mh
    else:
        mx = fld[0] + pad if left else fld[2] - pad - mw
        my = fld[1] + pad if top else fld[3] - pad - mh
    mx = int(np.clip(mx, 0, W - mw))
    my = int(np.clip(my, 0, H - mh))
    marker: Marker = {"box": (mx, my, mx + mw, my + mh), "level": rf.uniform(0.88, 1.0), "text": lat}
    return Scene(region, lat, H, W, frame, bones, soft, lay.ref_radius * s, bits, fld, border, marker, s, scale, view)
