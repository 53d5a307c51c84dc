"""Seeded, deterministic SYNTHETIC radiographs: DEMO ONLY, NOT ANATOMY, NOT FOR CLINICAL USE.

What this module is for
-----------------------
* training the small DEMO ensemble (``fracscan/specs/demo.toml``),
* the ``examples/`` folder (:func:`write_examples`),
* DICOM / PNG test files in every transfer syntax the installed encoders can write
  (:func:`write_dicom`, :func:`write_png`, :func:`write_non_image_dicom`).

The pictures are *plausible*, not anatomical: long bones are tubes (bright cortex, darker
medulla, flared trabecular ends), hand / wrist / foot are sets of small bones, pelvis,
ribs and spine have their own simple shapes. Around them a soft-tissue envelope (mid
gray), outside it air (dark). A simple physical model turns bone and soft-tissue path
lengths into an attenuation, adds quantum (Poisson-like) and electronic noise and a
random exposure (gain / gamma / tone curve / heel effect); the whole layout is randomly
rotated, scaled, shifted and mirrored (laterality). A collimation border (black,
noisy-dark or uniformly bright, random width per side) and a burned-in bright "R" / "L"
marker are added last.

A fractured case has a thin lucent (dark) line crossing one bone, sometimes with a
displaced or angulated fragment. ``SyntheticCase.box`` is the tight box around the
fracture line *in the final pixel coordinates* (computed on the final pixel grid, after
every transform), half-open: ``pixels[y0:y1, x0:x1]`` is the box.

Determinism: everything is drawn from independent numpy ``Generator`` streams seeded by
``(seed, stream)``. ``make_case(s, region=r, fracture=True)`` and
``make_case(s, region=r, fracture=False)`` share layout, exposure, noise, border and
marker: they differ only by the fracture (useful for honest tests).

Only numpy, scipy, pillow and pydicom are needed to make the images; writing some
compressed DICOM transfer syntaxes needs optional encoders (see :data:`TRANSFER_SYNTAXES`
and :func:`can_write`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.uid import UID, ExplicitVRLittleEndian
from scipy import ndimage

__all__ = [
    "REGIONS",
    "BODY_PART",
    "TRANSFER_SYNTAXES",
    "LOSSLESS",
    "SyntheticCase",
    "make_case",
    "dataset",
    "write_png",
    "write_dicom",
    "write_non_image_dicom",
    "write_examples",
    "can_write",
    "writable_transfer_syntaxes",
    "dicom_pixels",
]

REGIONS: tuple[str, ...] = (
    "ankle",
    "clavicle",
    "elbow",
    "femur",
    "foot",
    "forearm",
    "hand",
    "hip",
    "humerus",
    "knee",
    "pelvis",
    "ribs",
    "shoulder",
    "spine",
    "tibia_fibula",
    "wrist",
)

# canonical region -> DICOM BodyPartExamined (upper case, a term the demo spec maps back)
BODY_PART: dict[str, str] = {
    "ankle": "ANKLE",
    "clavicle": "CLAVICLE",
    "elbow": "ELBOW",
    "femur": "FEMUR",
    "foot": "FOOT",
    "forearm": "FOREARM",
    "hand": "HAND",
    "hip": "HIP",
    "humerus": "HUMERUS",
    "knee": "KNEE",
    "pelvis": "PELVIS",
    "ribs": "RIB",
    "shoulder": "SHOULDER",
    "spine": "SPINE",
    "tibia_fibula": "LEG",
    "wrist": "WRIST",
}

_BODY_PART_REGION = {v: k for k, v in BODY_PART.items()}
# Midline regions: DICOM ImageLaterality "U" (unpaired); the burned-in marker still says R/L.
_UNPAIRED = frozenset({"pelvis", "spine"})
# Regions whose natural detector orientation is landscape.
_LANDSCAPE = frozenset({"pelvis", "clavicle", "shoulder"})
# Approximate field of view (long side, mm) per region, for ImagerPixelSpacing.
_FIELD_MM = {
    "ankle": 240, "clavicle": 300, "elbow": 240, "femur": 430, "foot": 240, "forearm": 300,
    "hand": 240, "hip": 300, "humerus": 350, "knee": 300, "pelvis": 430, "ribs": 350,
    "shoulder": 300, "spine": 430, "tibia_fibula": 430, "wrist": 200,
}

# Lucent-line width as a fraction of the image size: wide enough that the line stays visible
# after the demo's downscaling to a 128 x 128 frame (about 2-3 frame pixels).
FRACTURE_WIDTH = (0.015, 0.025)

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
    """

    pixels: np.ndarray
    region: str
    fracture: bool
    box: tuple[int, int, int, int] | None
    bits_stored: int
    seed: int
    laterality: Literal["R", "L"]
    field: tuple[int, int, int, int] = (0, 0, 0, 0)
    marker: tuple[int, int, int, int] = (0, 0, 0, 0)
    fracture_kind: str | None = None  # "undisplaced" | "displaced" | "angulated" | None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1


# --------------------------------------------------------------------------------------
# random streams
# --------------------------------------------------------------------------------------

_S_CHOICE, _S_LAYOUT, _S_FRAME, _S_FRACTURE, _S_EXPOSURE, _S_NOISE, _S_TEXTURE, _S_META = range(8)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), 0x5EED])


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


# --------------------------------------------------------------------------------------
# primitives (canonical layout frame, pixel units)
# --------------------------------------------------------------------------------------


def _merge(best: np.ndarray, acc: list[np.ndarray], params) -> None:
    d2, r, ri, m = params
    q = d2 / (r * r)
    sel = q < best
    np.copyto(best, q, where=sel)
    for dst, src in zip(acc, (d2, r, ri, m), strict=True):
        np.copyto(dst, src, where=sel)


@dataclass
class _Tube:
    """A polyline with per-vertex radius, cortex fraction and medulla density."""

    pts: np.ndarray  # (n, 2) x, y
    radius: np.ndarray  # (n,)
    cortex: np.ndarray  # (n,) cortex thickness as a fraction of the radius
    marrow: np.ndarray  # (n,) density of the medulla relative to cortex
    name: str = ""
    frac_weight: float = 0.0
    frac_range: tuple[float, float] = (0.2, 0.8)  # arc-length fraction
    normalized: bool = False  # soft tissue: profile in [0, 1]
    weight: float = 1.0

    def bbox(self) -> tuple[float, float, float, float]:
        r = float(self.radius.max())
        return (
            float(self.pts[:, 0].min()) - r,
            float(self.pts[:, 1].min()) - r,
            float(self.pts[:, 0].max()) + r,
            float(self.pts[:, 1].max()) + r,
        )

    def seg_bbox(self, i: int) -> tuple[float, float, float, float]:
        r = float(max(self.radius[i], self.radius[i + 1]))
        (ax, ay), (bx, by) = self.pts[i], self.pts[i + 1]
        return (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r)

    def seg_params(self, i: int, x: np.ndarray, y: np.ndarray):
        """(d^2, r, inner r, medulla density) of the points w.r.t. segment i."""
        p, rad, cf, mw = self.pts, self.radius, self.cortex, self.marrow
        ax, ay = p[i]
        bx, by = p[i + 1]
        abx, aby = bx - ax, by - ay
        l2 = abx * abx + aby * aby
        if l2 <= 1e-12:
            t = np.zeros(np.broadcast(x, y).shape)
        else:
            t = ((x - ax) * abx + (y - ay) * aby) / l2
            np.clip(t, 0.0, 1.0, out=t)
        dx = x - (ax + t * abx)
        dy = y - (ay + t * aby)
        d2 = dx * dx + dy * dy
        r = rad[i] + t * (rad[i + 1] - rad[i])
        ri = r * (1.0 - (cf[i] + t * (cf[i + 1] - cf[i])))
        m = mw[i] + t * (mw[i + 1] - mw[i])
        return d2, r, ri, m

    def profile(self, d2, r, ri, m) -> np.ndarray:
        if self.normalized:
            return np.sqrt(np.maximum(1.0 - d2 / (r * r), 0.0)) * self.weight
        outer = np.sqrt(np.maximum(r * r - d2, 0.0))
        inner = np.sqrt(np.maximum(ri * ri - d2, 0.0))
        return 2.0 * ((outer - inner) + m * inner) * self.weight

    def density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each point takes the segment it is most inside of (no seams at the joints)."""
        shape = np.broadcast(x, y).shape
        best = np.full(shape, np.inf)
        acc = [np.zeros(shape) for _ in range(4)]
        for i in range(len(self.pts) - 1):
            _merge(best, acc, self.seg_params(i, x, y))
        return self.profile(*acc)

    # geometry along the polyline ------------------------------------------------------
    def _cumlen(self) -> np.ndarray:
        seg = np.hypot(*np.diff(self.pts, axis=0).T)
        return np.concatenate([[0.0], np.cumsum(seg)])

    def point_at(self, frac: float) -> tuple[np.ndarray, np.ndarray, float, int]:
        """(point, unit axis, radius, segment index) at an arc-length fraction."""
        cl = self._cumlen()
        s = frac * cl[-1]
        k = int(np.clip(np.searchsorted(cl, s, side="right") - 1, 0, len(cl) - 2))
        seg = cl[k + 1] - cl[k]
        t = 0.0 if seg <= 0 else (s - cl[k]) / seg
        a, b = self.pts[k], self.pts[k + 1]
        axis = (b - a) / max(seg, 1e-9)
        r = self.radius[k] + t * (self.radius[k + 1] - self.radius[k])
        return a + t * (b - a), axis, float(r), k

    def split(self, frac: float, ext: float) -> tuple[_Tube, _Tube]:
        """Two overlapping pieces cut at ``frac``; each runs ``ext`` past the cut point."""
        pf, axis, r, k = self.point_at(frac)

        def interp(arr: np.ndarray) -> float:
            a, b = self.pts[k], self.pts[k + 1]
            seg = float(np.hypot(*(b - a)))
            t = 0.0 if seg <= 0 else float(np.hypot(*(pf - a))) / seg
            return float(arr[k] + t * (arr[k + 1] - arr[k]))

        vr, vc, vm = interp(self.radius), interp(self.cortex), interp(self.marrow)
        prox = _Tube(
            np.vstack([self.pts[: k + 1], pf, pf + axis * ext]),
            np.concatenate([self.radius[: k + 1], [vr, vr]]),
            np.concatenate([self.cortex[: k + 1], [vc, vc]]),
            np.concatenate([self.marrow[: k + 1], [vm, vm]]),
            name=self.name + ":proximal",
        )
        dist = _Tube(
            np.vstack([pf - axis * ext, pf, self.pts[k + 1 :]]),
            np.concatenate([[vr, vr], self.radius[k + 1 :]]),
            np.concatenate([[vc, vc], self.cortex[k + 1 :]]),
            np.concatenate([[vm, vm], self.marrow[k + 1 :]]),
            name=self.name + ":distal",
        )
        return prox, dist


@dataclass
class _Blob:
    """A (super-)ellipse bone: bright rim, lighter inside."""

    center: np.ndarray
    a: float
    b: float
    angle: float  # radians
    cortex: float = 0.2
    marrow: float = 0.5
    power: float = 2.0
    name: str = ""
    frac_weight: float = 0.0
    normalized: bool = False
    weight: float = 1.0
    depth: float = 0.0  # half-thickness along the beam (0: min(a, b)); flat bones are thin

    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.a, self.b) * (1.42 if self.power > 2 else 1.0)
        cx, cy = self.center
        return (cx - r, cy - r, cx + r, cy + r)

    def _rho(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.center[0], y - self.center[1]
        xl = (dx * c + dy * s) / self.a
        yl = (-dx * s + dy * c) / self.b
        if self.power == 2.0:
            return np.sqrt(xl * xl + yl * yl)
        p = self.power
        return (np.abs(xl) ** p + np.abs(yl) ** p) ** (1.0 / p)

    def density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rho = self._rho(x, y)
        if self.normalized:
            return np.sqrt(np.clip(1.0 - rho * rho, 0.0, None)) * self.weight
        sc = self.depth if self.depth > 0 else min(self.a, self.b)
        ci = 1.0 - self.cortex
        outer = sc * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
        ri = rho / ci
        inner = sc * ci * np.sqrt(np.clip(1.0 - ri * ri, 0.0, None))
        return 2.0 * ((outer - inner) + self.marrow * inner) * self.weight

    @property
    def axis(self) -> np.ndarray:
        return np.array([math.cos(self.angle), math.sin(self.angle)])


_Prim = _Tube | _Blob


def _long(
    p0: Sequence[float],
    p1: Sequence[float],
    r: float,
    *,
    flare0: float = 1.0,
    flare1: float = 1.0,
    cortex: float = 0.36,
    marrow: float = 0.12,
    flare_len: float | None = None,
    name: str = "",
    frac_weight: float = 0.0,
    frac_range: tuple[float, float] = (0.2, 0.8),
) -> _Tube:
    """A long bone: a straight tube whose ends flare into thin-cortex trabecular bone."""
    p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.hypot(*(p1a - p0a)))
    fl = (flare_len if flare_len is not None else 2.6 * r) / max(length, 1e-9)
    f = min(0.32, 1.6 * fl)
    t = np.unique(
        np.concatenate([np.linspace(0, f, 6), np.linspace(f, 1 - f, 4), np.linspace(1 - f, 1, 6)])
    )
    e0 = np.exp(-((t / fl) ** 2)) if flare0 > 1.0 else np.zeros_like(t)
    e1 = np.exp(-(((1 - t) / fl) ** 2)) if flare1 > 1.0 else np.zeros_like(t)
    rad = r * (1.0 + (flare0 - 1.0) * e0 + (flare1 - 1.0) * e1)
    end = np.maximum(e0, e1)
    cf = cortex * (1 - end) + 0.12 * end
    mw = marrow * (1 - end) + 0.5 * end * r / rad  # wide trabecular ends are not denser
    pts = p0a[None, :] + t[:, None] * (p1a - p0a)[None, :]
    return _Tube(pts, rad, cf, mw, name=name, frac_weight=frac_weight, frac_range=frac_range)


def _curve(
    ctrl: Sequence[Sequence[float]],
    r: float | Sequence[float],
    *,
    cortex: float = 0.35,
    marrow: float = 0.25,
    n: int = 14,
    name: str = "",
    frac_weight: float = 0.0,
    frac_range: tuple[float, float] = (0.2, 0.8),
    normalized: bool = False,
    weight: float = 1.0,
) -> _Tube:
    """A curved tube through the control points (quadratic/cubic Bezier), for ribs etc."""
    c = np.asarray(ctrl, float)
    t = np.linspace(0, 1, n)[:, None]
    if len(c) == 2:
        pts = c[0] + t * (c[1] - c[0])
    elif len(c) == 3:
        pts = (1 - t) ** 2 * c[0] + 2 * (1 - t) * t * c[1] + t**2 * c[2]
    else:
        pts = (1 - t) ** 3 * c[0] + 3 * (1 - t) ** 2 * t * c[1] + 3 * (1 - t) * t**2 * c[2] + t**3 * c[3]
    rr = np.asarray(r, float)
    if rr.ndim == 0:
        rad = np.full(n, float(rr))
    else:
        rad = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(rr)), rr)
    return _Tube(
        pts, rad, np.full(n, cortex), np.full(n, marrow), name=name, frac_weight=frac_weight,
        frac_range=frac_range, normalized=normalized, weight=weight,
    )


def _blob(c, a, b, angle_deg=0.0, *, cortex=0.2, marrow=0.5, power=2.0, name="", frac_weight=0.0,
          depth: float | None = None) -> _Blob:
    dp = min(a, b, 0.07) if depth is None else depth
    return _Blob(np.asarray(c, float), float(a), float(b), math.radians(angle_deg), cortex, marrow,
                 power, name=name, frac_weight=frac_weight, depth=float(dp))


def _soft_tube(ctrl, r, weight=1.0) -> _Tube:
    return _curve(ctrl, r, n=12, normalized=True, weight=weight)


def _soft_blob(c, a, b, angle_deg=0.0, weight=1.0, power=2.0) -> _Blob:
    return _Blob(np.asarray(c, float), float(a), float(b), math.radians(angle_deg), power=power,
                 normalized=True, weight=weight)


@dataclass
class _Layout:
    bones: list[_Prim]
    soft: list[_Prim]  # weight < 0: subtracted (lungs)
    ref_radius: float  # typical bone radius (layout units) for attenuation normalisation


# --------------------------------------------------------------------------------------
# region layouts: frame is w x h layout units (min side 1), natural orientation
# (portrait: w = 1 <= h, landscape: h = 1 <= w). y grows downward.
# --------------------------------------------------------------------------------------


class _J:
    """Jitter helper bound to the layout stream."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, v: float, amt: float) -> float:
        return float(v + self.rng.uniform(-amt, amt))

    def f(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))


def _lay_forearm(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.05)
    r = j(0.042, 0.006)
    bones = [
        _long((j(cx + 0.02, 0.02), -0.35), (cx, h * 0.03), 0.06, flare1=2.3, name="humerus"),
        _long((cx + 0.075, h * 0.08), (j(cx + 0.13, 0.02), h * 0.93), r, flare0=1.35, flare1=1.75,
              name="radius", frac_weight=0.6, frac_range=(0.25, 0.9)),
        _long((cx - 0.06, h * 0.02), (j(cx - 0.09, 0.02), h * 0.92), r * 0.95, flare0=1.9, flare1=1.25,
              name="ulna", frac_weight=0.4, frac_range=(0.25, 0.85)),
    ]
    for k in range(4):
        bones.append(_blob((cx - 0.1 + 0.075 * k, h * 0.985 + j(0, 0.01)), 0.035, 0.028, j(0, 20)))
    soft = [_soft_tube([(cx, -0.2), (cx, h * 0.5), (cx + 0.02, h + 0.2)], [0.33, 0.28, 0.22])]
    return _Layout(bones, soft, r)


def _lay_wrist(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.42 + j(0, 0.03)
    rr = j(0.06, 0.008)
    bones: list[_Prim] = [
        _long((cx + 0.09, -0.3), (cx + 0.12, yj), rr, flare1=1.75, name="radius", frac_weight=0.55,
              frac_range=(0.72, 0.93)),
        _long((cx - 0.12, -0.3), (cx - 0.12, yj - 0.02), rr * 0.72, flare1=1.25, name="ulna",
              frac_weight=0.12, frac_range=(0.7, 0.93)),
    ]
    row1 = yj + 0.14
    bones.append(_blob((cx + 0.15, row1 + 0.01), 0.075, 0.038, -55 + j(0, 8), name="scaphoid",
                       frac_weight=0.15, cortex=0.25))
    for k, x in enumerate((cx + 0.02, cx - 0.09, cx - 0.17)):
        bones.append(_blob((x, row1 + j(0, 0.01)), j(0.055, 0.006), j(0.045, 0.005), j(0, 15)))
    row2 = row1 + 0.115
    for k, x in enumerate((cx + 0.16, cx + 0.07, cx - 0.03, cx - 0.13)):
        bones.append(_blob((x, row2 + j(0, 0.01)), j(0.05, 0.006), j(0.045, 0.005), j(0, 15)))
    base = row2 + 0.1
    for k, (x, ang) in enumerate(((cx + 0.22, 35), (cx + 0.1, 8), (cx - 0.0, 0), (cx - 0.1, -6), (cx - 0.19, -14))):
        a = math.radians(ang + j(0, 3))
        L = 0.55 if k else 0.35
        bones.append(
            _long((x, base), (x + L * math.sin(a), base + L * math.cos(a)), 0.028, flare0=1.35, flare1=1.3,
                  name=f"metacarpal{k + 1}", frac_weight=0.035, frac_range=(0.15, 0.6))
        )
    soft = [
        _soft_tube([(cx, -0.3), (cx, yj), (cx + 0.02, h + 0.3)], [0.3, 0.3, 0.34]),
        _soft_tube([(cx + 0.22, base), (cx + 0.45, h + 0.2)], 0.07, weight=0.8),
    ]
    return _Layout(bones, soft, rr * 0.8)


def _finger(base, ang_deg, lens, rads, j: _J, name: str, wts: Sequence[float]) -> list[_Prim]:
    out: list[_Prim] = []
    a = math.radians(ang_deg)
    d = np.array([math.sin(a), -math.cos(a)])
    p = np.asarray(base, float)
    for i, (L, r) in enumerate(zip(lens, rads, strict=True)):
        q = p + d * L
        out.append(_long(p, q, r, flare0=1.45, flare1=1.3, cortex=0.38, flare_len=1.6 * r,
                         name=f"{name}{i}", frac_weight=wts[i], frac_range=(0.25, 0.75)))
        p = q + d * (0.022 + j(0, 0.004))
    return out


def _lay_hand(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.03)
    yb = h * 0.8 + j(0, 0.02)
    sc = j(1.0, 0.05)
    bones: list[_Prim] = []
    soft: list[_Prim] = [_soft_blob((cx + 0.02, yb - 0.12), 0.3 * sc, 0.28 * sc, 0, 1.0),
                         _soft_tube([(cx, yb), (cx, h + 0.3)], 0.26)]
    fingers = [(-0.16, -11, 0.9), (-0.055, -3.5, 1.0), (0.05, 3.5, 0.97), (0.15, 11, 0.82)]
    for k, (dx, ang, ln) in enumerate(fingers):
        base = (cx + dx * sc, yb + abs(dx) * 0.15)
        lens = np.array([0.3, 0.2, 0.13, 0.09]) * ln * sc
        rads = np.array([0.027, 0.025, 0.021, 0.018]) * sc
        ang = ang + j(0, 2)
        bones += _finger(base, ang, lens, rads, j, f"finger{k + 2}_", (0.09, 0.06, 0.03, 0.02))
        a = math.radians(ang)
        tip = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * (lens.sum() + 0.07)
        mid = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * 0.3 * ln * sc
        soft.append(_soft_tube([mid, tip], 0.052 * sc, weight=0.85))
    tb = (cx - 0.24 * sc, yb + 0.02)
    tang = -42 + j(0, 5)
    bones += _finger(tb, tang, np.array([0.2, 0.14, 0.1]) * sc, np.array([0.03, 0.026, 0.021]) * sc, j,
                     "thumb", (0.06, 0.04, 0.02))
    a = math.radians(tang)
    soft.append(_soft_tube([tb, np.array(tb) + np.array([math.sin(a), -math.cos(a)]) * 0.5 * sc], 0.065 * sc, 0.9))
    for k in range(4):
        bones.append(_blob((cx - 0.13 + 0.09 * k, yb + 0.08 + j(0, 0.01)), 0.045 * sc, 0.035 * sc, j(0, 20)))
        bones.append(_blob((cx - 0.11 + 0.08 * k, yb + 0.16 + j(0, 0.01)), 0.042 * sc, 0.035 * sc, j(0, 20)))
    return _Layout(bones, soft, 0.026)


def _lay_elbow(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.5 + j(0, 0.04)
    bones = [
        _long((j(cx, 0.03), -0.4), (cx, yj), 0.065, flare1=2.5, name="humerus", frac_weight=0.4,
              frac_range=(0.7, 0.9)),
        _long((cx + 0.12, yj + 0.07), (j(cx + 0.16, 0.03), h + 0.5), 0.045, flare0=1.45, name="radius",
              frac_weight=0.35, frac_range=(0.04, 0.2)),
        _long((cx - 0.07, yj - 0.06), (j(cx - 0.09, 0.03), h + 0.5), 0.05, flare0=2.0, name="ulna",
              frac_weight=0.25, frac_range=(0.08, 0.3)),
    ]
    soft = [_soft_tube([(cx, -0.3), (cx, yj), (cx + 0.03, h + 0.3)], [0.36, 0.38, 0.33])]
    return _Layout(bones, soft, 0.055)


def _lay_humerus(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    top = h * 0.1 + j(0, 0.03)
    r = j(0.055, 0.006)
    bones: list[_Prim] = [
        _blob((cx + 0.05, top), 0.12, 0.13, 0, cortex=0.12, marrow=0.5, name="head"),
        _long((cx + 0.03, top + 0.02), (j(cx, 0.02), h * 0.93), r, flare0=1.9, flare1=2.2, name="humerus",
              frac_weight=1.0, frac_range=(0.2, 0.82)),
        _blob((cx - 0.17, top + 0.02), 0.05, 0.14, 8, cortex=0.2, marrow=0.35, name="glenoid"),
        _blob((cx - 0.35, top + 0.2), 0.22, 0.3, 10, cortex=0.08, marrow=0.3, name="scapula"),
        _long((cx + 0.06, h * 0.97), (cx + 0.1, h + 0.4), 0.04, flare0=1.4, name="radius"),
        _long((cx - 0.06, h * 0.95), (cx - 0.08, h + 0.4), 0.045, flare0=1.8, name="ulna"),
    ]
    soft = [_soft_tube([(cx, -0.1), (cx, h * 0.5), (cx, h + 0.2)], [0.42, 0.33, 0.3]),
            _soft_blob((cx - 0.3, top), 0.45, 0.3, 0, 0.9)]
    return _Layout(bones, soft, r)


def _ribs(x0, y0, n, dy, span, j: _J, weight=0.0, side=1, r=0.02) -> list[_Prim]:
    out: list[_Prim] = []
    for i in range(n):
        y = y0 + i * dy + j(0, 0.01)
        rr = r * j(1.0, 0.08)
        out.append(_curve([(x0, y), (x0 + side * span * 0.7, y - 0.14), (x0 + side * span, y + 0.2 + 0.02 * i)],
                          [rr, rr * 1.1, rr * 0.9], cortex=0.4, marrow=0.2, n=16, name=f"rib{i + 1}",
                          frac_weight=weight, frac_range=(0.3, 0.85)))
    return out


def _vertebrae(cx, y0, n, hgt, wid, j: _J, frac_weight=0.0) -> list[_Prim]:
    out: list[_Prim] = []
    y = y0
    for i in range(n):
        hh = hgt * j(1.0, 0.05)
        ww = wid * (1 + 0.03 * i) * j(1.0, 0.03)
        c = (cx + j(0, 0.01), y + hh / 2)
        out.append(_blob(c, ww / 2, hh / 2, j(0, 3), cortex=0.14, marrow=0.45, power=3.5, name=f"vertebra{i + 1}",
                         frac_weight=frac_weight))
        for s in (-1, 1):
            out.append(_blob((c[0] + s * ww * 0.3, c[1] - hh * 0.05), ww * 0.09, hh * 0.24, 0, cortex=0.45,
                             marrow=0.2, name="pedicle"))
            out.append(_long((c[0] + s * ww * 0.42, c[1] - hh * 0.1), (c[0] + s * ww * 0.85, c[1] - hh * 0.18),
                             hh * 0.12, name=f"transverse{i + 1}", frac_weight=frac_weight * 0.15,
                             frac_range=(0.3, 0.7)))
        out.append(_blob((c[0], c[1] + hh * 0.15), ww * 0.07, hh * 0.33, 0, cortex=0.4, marrow=0.3, name="spinous"))
        y += hh + hgt * 0.32 * j(1.0, 0.1)
    return out


def _lay_shoulder(w, h, j: _J) -> _Layout:
    hx = w * 0.58 + j(0, 0.04)
    hy = 0.42 + j(0, 0.03)
    bones: list[_Prim] = [
        _blob((hx, hy), 0.16, 0.165, 0, cortex=0.1, marrow=0.5, name="head"),
        _long((hx - 0.02, hy + 0.05), (hx - 0.05, 1.6), 0.075, flare0=1.9, name="humerus", frac_weight=0.5,
              frac_range=(0.04, 0.22)),
        _blob((hx - 0.19, hy), 0.05, 0.15, 5, cortex=0.2, marrow=0.35, name="glenoid"),
        _blob((hx - 0.42, hy + 0.25), 0.28, 0.38, 15, cortex=0.07, marrow=0.3, name="scapula"),
        _curve([(hx - 0.75, 0.32), (hx - 0.3, 0.2), (hx + 0.05, 0.17)], 0.035, name="scapular spine"),
        _blob((hx - 0.05, 0.16), 0.12, 0.045, -5, cortex=0.25, marrow=0.4, name="acromion"),
        _curve([(hx - 1.2, 0.25), (hx - 0.6, 0.02), (hx - 0.35, 0.2), (hx - 0.08, 0.1)], 0.038, cortex=0.38,
               name="clavicle", frac_weight=0.5, frac_range=(0.35, 0.8)),
        _blob((hx - 0.22, hy - 0.16), 0.06, 0.03, 30, cortex=0.3, marrow=0.4, name="coracoid"),
    ]
    bones += _ribs(hx - 1.1, 0.35, 5, 0.18, 0.75, j)
    soft = [_soft_blob((hx - 0.5, 0.7), 0.85, 0.75, 0, 1.0), _soft_tube([(hx, 0.3), (hx - 0.05, 1.6)], 0.3),
            _soft_blob((hx - 0.75, 0.85), 0.4, 0.45, 0, -0.35)]
    return _Layout(bones, soft, 0.06)


def _lay_clavicle(w, h, j: _J) -> _Layout:
    y = 0.42 + j(0, 0.04)
    x0, x1 = 0.1 * w + j(0, 0.03), 0.88 * w + j(0, 0.03)
    bones: list[_Prim] = [
        _curve([(x0, y + 0.06), (x0 + 0.35 * (x1 - x0), y - 0.14), (x0 + 0.65 * (x1 - x0), y + 0.12), (x1, y - 0.05)],
               [0.05, 0.04, 0.038, 0.045], cortex=0.36, marrow=0.3, n=24, name="clavicle", frac_weight=1.0,
               frac_range=(0.25, 0.8)),
        _blob((x1 + 0.05, y - 0.02), 0.1, 0.045, -8, cortex=0.25, marrow=0.4, name="acromion"),
        _blob((x1 + 0.08, y + 0.3), 0.14, 0.15, 0, cortex=0.1, marrow=0.5, name="head"),
        _blob((x0 + 0.55 * (x1 - x0), y + 0.45), 0.3, 0.4, 20, cortex=0.07, marrow=0.3, name="scapula"),
    ]
    bones += _vertebrae(x0 - 0.18, -0.1, 5, 0.14, 0.24, j)
    bones += _ribs(x0 - 0.05, 0.1, 6, 0.17, 0.9 * (x1 - x0), j)
    soft = [_soft_blob((w / 2, 0.75), w * 0.65, 0.8, 0, 1.0), _soft_blob((w * 0.5, 0.95), w * 0.3, 0.4, 0, -0.35)]
    return _Layout(bones, soft, 0.045)


def _lay_ribs(w, h, j: _J) -> _Layout:
    sx = 0.12 + j(0, 0.03)
    bones: list[_Prim] = _vertebrae(sx - 0.12, -0.05, 9, 0.11, 0.2, j)
    bones += _ribs(sx, 0.08, 10, 0.125 * h / 1.3, 0.78, j, weight=1.0, r=0.021)
    soft = [_soft_blob((0.45, h / 2), 0.75, h * 0.62, 0, 1.0), _soft_blob((0.55, h * 0.5), 0.35, h * 0.42, 0, -0.4)]
    return _Layout(bones, soft, 0.022)


def _lay_spine(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    bones = _vertebrae(cx, 0.02 + j(0, 0.03), 7, 0.15 * h / 1.35, 0.32, j, frac_weight=1.0)
    for s in (-1, 1):
        bones += [_curve([(cx + s * 0.15, -0.05), (cx + s * 0.45, -0.05), (cx + s * 0.6, 0.25)], 0.025,
                         cortex=0.4, name="rib")]
    soft = [_soft_blob((cx, h / 2), 0.6, h * 0.75, 0, 1.0),
            _soft_tube([(cx - 0.12, h * 0.3), (cx - 0.2, h + 0.1)], 0.08, 0.25),
            _soft_tube([(cx + 0.12, h * 0.3), (cx + 0.2, h + 0.1)], 0.08, 0.25)]
    return _Layout(bones, soft, 0.05)


def _hemipelvis(cx, s, j: _J, *, femur: bool = True, wts=(0.3, 0.3, 0.4)) -> list[_Prim]:
    """One side of the pelvis (s = +1 right of the image centre, -1 left)."""
    hx = cx + s * 0.32
    hy = 0.62 + j(0, 0.02)
    out: list[_Prim] = [
        _blob((cx + s * 0.3, 0.3), 0.24, 0.2, s * 25 + j(0, 4), cortex=0.07, marrow=0.3, name="ilium"),
        _blob((hx, hy), 0.09, 0.09, 0, cortex=0.12, marrow=0.5, name="femoral head"),
        _curve([(hx - s * 0.04, hy - 0.02), (cx + s * 0.15, 0.66), (cx + s * 0.035, 0.72)], 0.03,
               name="superior ramus", frac_weight=wts[0], frac_range=(0.3, 0.75)),
        _curve([(cx + s * 0.035, 0.8), (cx + s * 0.15, 0.88), (hx - s * 0.07, 0.76)], 0.032,
               name="inferior ramus", frac_weight=wts[1], frac_range=(0.3, 0.75)),
        _blob((hx - s * 0.08, 0.78), 0.06, 0.075, 0, cortex=0.2, marrow=0.4, name="ischium"),
        _blob((cx + s * 0.02, 0.76), 0.02, 0.06, 0, cortex=0.3, marrow=0.4, name="symphysis"),
    ]
    if femur:
        nx, ny = hx + s * 0.11, hy + 0.1
        out += [
            _long((hx, hy), (nx, ny), 0.055, name="femoral neck", frac_weight=wts[2], frac_range=(0.3, 0.75),
                  cortex=0.3),
            _blob((nx + s * 0.04, ny - 0.04), 0.06, 0.08, 0, cortex=0.15, marrow=0.45, name="trochanter"),
            _long((nx, ny - 0.02), (nx - s * 0.02, 1.8), 0.07, flare0=1.5, name="femur", frac_weight=wts[2] * 0.3,
                  frac_range=(0.05, 0.2)),
        ]
    return out


def _lay_pelvis(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.03)
    bones: list[_Prim] = [
        _blob((cx, 0.34), 0.13, 0.2, 0, cortex=0.1, marrow=0.4, power=2.6, name="sacrum"),
    ]
    bones += _vertebrae(cx, -0.25, 2, 0.11, 0.28, j)
    bones += _hemipelvis(cx, 1, j) + _hemipelvis(cx, -1, j)
    soft = [_soft_blob((cx, 0.55), 0.68, 0.7, 0, 1.0, power=2.5),
            _soft_tube([(cx + 0.42, 0.8), (cx + 0.42, 1.4)], 0.2),
            _soft_tube([(cx - 0.42, 0.8), (cx - 0.42, 1.4)], 0.2)]
    return _Layout(bones, soft, 0.045)


def _lay_hip(w, h, j: _J) -> _Layout:
    cx = w * 0.2 + j(0, 0.04)
    bones: list[_Prim] = _hemipelvis(cx, 1, j, wts=(0.15, 0.1, 0.75))
    bones.append(_blob((cx - 0.05, 0.3), 0.13, 0.2, 0, cortex=0.1, marrow=0.4, power=2.6, name="sacrum"))
    soft = [_soft_blob((cx + 0.2, 0.55), 0.7, 0.7, 0, 1.0, power=2.4),
            _soft_tube([(cx + 0.45, 0.6), (cx + 0.45, h + 0.3)], 0.3)]
    return _Layout(bones, soft, 0.05)


def _lay_femur(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    hy = 0.08 * h + j(0, 0.02)
    r = j(0.06, 0.006)
    bones: list[_Prim] = [
        _blob((cx - 0.12, hy), 0.085, 0.085, 0, cortex=0.12, marrow=0.5, name="femoral head"),
        _long((cx - 0.12, hy), (cx, hy + 0.1), 0.05, name="femoral neck", cortex=0.3),
        _blob((cx + 0.08, hy + 0.05), 0.06, 0.08, 0, cortex=0.15, marrow=0.45, name="trochanter"),
        _long((cx + 0.02, hy + 0.05), (j(cx + 0.03, 0.02), h * 0.93), r, flare0=1.3, flare1=2.3, name="femur",
              frac_weight=1.0, frac_range=(0.18, 0.85)),
        _long((cx + 0.03, h * 0.99), (cx + 0.03, h + 0.5), 0.07, flare0=2.1, name="tibia"),
        _blob((cx - 0.3, hy - 0.05), 0.2, 0.14, 20, cortex=0.07, marrow=0.3, name="ilium"),
    ]
    soft = [_soft_tube([(cx, -0.2), (cx, h * 0.5), (cx, h + 0.2)], [0.44, 0.38, 0.3])]
    return _Layout(bones, soft, r)


def _lay_knee(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.47 + j(0, 0.03)
    bones: list[_Prim] = [
        _long((j(cx, 0.02), -0.4), (cx, yj - 0.03), 0.075, flare1=2.35, name="femur", frac_weight=0.3,
              frac_range=(0.62, 0.82)),
        _blob((cx + j(0, 0.02), yj - 0.12), 0.09, 0.11, 0, cortex=0.15, marrow=0.45, name="patella",
              frac_weight=0.2),
        _long((cx, yj + 0.05), (j(cx, 0.02), h + 0.5), 0.07, flare0=2.4, name="tibia", frac_weight=0.35,
              frac_range=(0.02, 0.25)),
        _long((cx + 0.18, yj + 0.11), (j(cx + 0.21, 0.02), h + 0.5), 0.028, flare0=1.7, name="fibula",
              frac_weight=0.15, frac_range=(0.05, 0.3)),
    ]
    soft = [_soft_tube([(cx, -0.3), (cx, yj), (cx, h + 0.3)], [0.42, 0.4, 0.36])]
    return _Layout(bones, soft, 0.07)


def _lay_tibia_fibula(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    r = j(0.062, 0.006)
    bones: list[_Prim] = [
        _long((cx - 0.04, 0.03 * h), (j(cx - 0.03, 0.02), 0.96 * h), r, flare0=2.0, flare1=1.6, name="tibia",
              frac_weight=0.6, frac_range=(0.2, 0.85)),
        _long((cx + 0.15, 0.07 * h), (j(cx + 0.16, 0.02), 0.985 * h), 0.026, flare0=1.6, flare1=1.6, name="fibula",
              frac_weight=0.4, frac_range=(0.2, 0.9)),
        _long((cx - 0.03, -0.5), (cx - 0.02, 0.0), 0.07, flare1=2.2, name="femur"),
        _blob((cx, h + 0.04), 0.13, 0.06, 0, cortex=0.15, marrow=0.45, name="talus"),
    ]
    soft = [_soft_tube([(cx, -0.2), (cx + 0.02, h * 0.35), (cx, h + 0.2)], [0.34, 0.34, 0.2])]
    return _Layout(bones, soft, r)


def _lay_ankle(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.5 + j(0, 0.03)
    bones: list[_Prim] = [
        _long((j(cx - 0.04, 0.02), -0.4), (cx - 0.04, yj), 0.085, flare1=1.55, name="tibia", frac_weight=0.3,
              frac_range=(0.7, 0.9)),
        _blob((cx - 0.15, yj + 0.05), 0.05, 0.07, 10, cortex=0.2, marrow=0.45, name="medial malleolus",
              frac_weight=0.2),
        _long((j(cx + 0.2, 0.02), -0.4), (cx + 0.17, yj + 0.1), 0.036, flare1=1.45, name="fibula", frac_weight=0.5,
              frac_range=(0.72, 0.93)),
        _blob((cx, yj + 0.11), 0.15, 0.09, 0, cortex=0.15, marrow=0.45, power=2.5, name="talus"),
        _blob((cx + 0.02, yj + 0.28), 0.17, 0.1, 0, cortex=0.12, marrow=0.45, name="calcaneus"),
        _blob((cx - 0.1, yj + 0.25), 0.07, 0.06, 20, cortex=0.2, marrow=0.45, name="navicular"),
    ]
    soft = [_soft_tube([(cx, -0.3), (cx, yj), (cx + 0.02, h + 0.3)], [0.3, 0.33, 0.36])]
    return _Layout(bones, soft, 0.06)


def _lay_foot(w, h, j: _J) -> _Layout:
    cx = w / 2 + j(0, 0.03)
    yb = h * 0.62 + j(0, 0.02)
    bones: list[_Prim] = [
        _blob((cx + 0.02, yb + 0.42), 0.13, 0.16, 0, cortex=0.1, marrow=0.45, name="calcaneus"),
        _blob((cx - 0.02, yb + 0.26), 0.12, 0.09, 0, cortex=0.13, marrow=0.45, name="talus"),
        _blob((cx - 0.08, yb + 0.12), 0.09, 0.05, -10, cortex=0.2, marrow=0.45, name="navicular"),
        _blob((cx + 0.1, yb + 0.14), 0.07, 0.07, 0, cortex=0.2, marrow=0.45, name="cuboid"),
    ]
    for k in range(3):
        bones.append(_blob((cx - 0.12 + 0.07 * k, yb + 0.03), 0.035, 0.05, 0, cortex=0.2, marrow=0.45))
    toes = [(-0.15, -7, 1.0, 1.35), (-0.06, -2, 1.05, 1.0), (0.02, 2, 1.0, 0.95), (0.1, 6, 0.95, 0.9),
            (0.18, 11, 0.85, 0.9)]
    soft: list[_Prim] = [_soft_tube([(cx, yb + 0.5), (cx, yb), (cx - 0.01, yb - 0.3)], [0.22, 0.27, 0.28])]
    for k, (dx, ang, ln, th) in enumerate(toes):
        base = (cx + dx, yb - 0.02 + abs(dx) * 0.2)
        ang += j(0, 2)
        lens = np.array([0.3, 0.1, 0.06, 0.05][: 3 if k == 0 else 4]) * ln
        lens[0] = 0.3 * ln
        rads = np.array([0.026, 0.022, 0.019, 0.016][: len(lens)]) * th
        bones += _finger(base, ang, lens, rads, j, f"ray{k + 1}_",
                         (0.2, 0.03, 0.02, 0.01) if k else (0.15, 0.06, 0.03))
        a = math.radians(ang)
        tip = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * (lens.sum() + 0.08)
        mid = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * lens[0]
        soft.append(_soft_tube([mid, tip], 0.05 * th, weight=0.85))
    return _Layout(bones, soft, 0.03)


_LAYOUTS = {
    "ankle": _lay_ankle, "clavicle": _lay_clavicle, "elbow": _lay_elbow, "femur": _lay_femur,
    "foot": _lay_foot, "forearm": _lay_forearm, "hand": _lay_hand, "hip": _lay_hip,
    "humerus": _lay_humerus, "knee": _lay_knee, "pelvis": _lay_pelvis, "ribs": _lay_ribs,
    "shoulder": _lay_shoulder, "spine": _lay_spine, "tibia_fibula": _lay_tibia_fibula, "wrist": _lay_wrist,
}


# --------------------------------------------------------------------------------------
# geometry: canonical layout frame -> final pixel grid
# --------------------------------------------------------------------------------------


@dataclass
class _Frame:
    H: int
    W: int
    M: np.ndarray  # 2x2 canonical -> final (includes mirror, rotation, scale)
    cc: np.ndarray  # canonical centre
    off: np.ndarray  # final position of the canonical centre

    def __post_init__(self) -> None:
        self.Minv = np.linalg.inv(self.M)

    def to_final(self, u, v):
        du, dv = np.asarray(u) - self.cc[0], np.asarray(v) - self.cc[1]
        return (self.M[0, 0] * du + self.M[0, 1] * dv + self.off[0],
                self.M[1, 0] * du + self.M[1, 1] * dv + self.off[1])

    def to_canon(self, x, y):
        dx, dy = np.asarray(x) - self.off[0], np.asarray(y) - self.off[1]
        return (self.Minv[0, 0] * dx + self.Minv[0, 1] * dy + self.cc[0],
                self.Minv[1, 0] * dx + self.Minv[1, 1] * dy + self.cc[1])

    def window(self, bbox: tuple[float, float, float, float], pad: float = 2.0):
        u0, v0, u1, v1 = bbox
        xs, ys = self.to_final(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        x0 = max(0, int(math.floor(xs.min() - pad)))
        x1 = min(self.W, int(math.ceil(xs.max() + pad)) + 1)
        y0 = max(0, int(math.floor(ys.min() - pad)))
        y1 = min(self.H, int(math.ceil(ys.max() + pad)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    def grid(self, win):
        x0, y0, x1, y1 = win
        X, Y = np.meshgrid(np.arange(x0, x1, dtype=float), np.arange(y0, y1, dtype=float))
        return self.to_canon(X, Y)


def _scale_prim(p: _Prim, s: float) -> _Prim:
    if isinstance(p, _Tube):
        return _Tube(p.pts * s, p.radius * s, p.cortex.copy(), p.marrow.copy(), p.name, p.frac_weight,
                     p.frac_range, p.normalized, p.weight)
    return _Blob(p.center * s, p.a * s, p.b * s, p.angle, p.cortex, p.marrow, p.power, p.name,
                 p.frac_weight, p.normalized, p.weight, p.depth * s)


# --------------------------------------------------------------------------------------
# fractures
# --------------------------------------------------------------------------------------


@dataclass
class _Fracture:
    bone: int
    pf: np.ndarray
    normal: np.ndarray  # unit normal of the fracture line
    width: float
    depth: float
    amp: float
    k: float
    phase: float
    rclip: float
    kind: str
    pieces: tuple[_Prim, _Prim] | None = None  # displaced: (fixed, moving)
    angle: float = 0.0
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    extent: tuple[float, float, float, float] | None = None

    def sd(self, u, v):
        du, dv = u - self.pf[0], v - self.pf[1]
        along = -du * self.normal[1] + dv * self.normal[0]
        return du * self.normal[0] + dv * self.normal[1] + self.amp * np.sin(self.k * along + self.phase)

    def near(self, u, v):
        return (u - self.pf[0]) ** 2 + (v - self.pf[1]) ** 2 < self.rclip**2

    def fwd(self, u, v):
        du, dv = u - self.pf[0], v - self.pf[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.pf[0] + c * du - s * dv + self.shift[0], self.pf[1] + s * du + c * dv + self.shift[1]

    def moving_frame(self, frame: _Frame) -> _Frame:
        """frame composed with the inverse fragment transform (still affine)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        cc = self.pf + rot.T @ (frame.cc - self.shift - self.pf)
        return _Frame(frame.H, frame.W, frame.M @ rot, cc, frame.off)

    def render(self, frame: _Frame, bone: _Prim, win) -> tuple[np.ndarray, np.ndarray]:
        """(fractured density, footprint of the line) of the bone on a window of the final grid."""
        hw = self.width / 2
        u, v = frame.grid(win)
        sd = self.sd(u, v)
        near = self.near(u, v)
        if self.pieces is None:
            dens = _eval(frame, bone, win)
            band = np.clip(hw + 0.5 - np.abs(sd), 0.0, 1.0) * near
            foot = (np.abs(sd) <= hw) & near & (dens > 0)
            return dens * (1.0 - self.depth * band), foot
        fixed, moving = self.pieces
        mf = self.moving_frame(frame)
        uu, vv = mf.grid(win)
        sdm = self.sd(uu, vv)
        nearm = self.near(uu, vv)
        df = _eval(frame, fixed, win)
        dm = _eval(mf, moving, win)
        keep_f = np.where(near, np.clip(-sd - hw + 0.5, 0.0, 1.0), 1.0)
        keep_m = np.where(nearm, np.clip(sdm - hw + 0.5, 0.0, 1.0), 1.0)
        foot = ((np.abs(sd) <= hw) & near & (df > 0)) | ((np.abs(sdm) <= hw) & nearm & (dm > 0))
        return df * keep_f + dm * keep_m, foot

    def bbox(self) -> tuple[float, float, float, float]:
        extra = float(np.hypot(*self.shift)) + self.width
        if self.extent is not None:  # compact bone: the whole bone
            e = self.extent
            return (e[0] - extra, e[1] - extra, e[2] + extra, e[3] + extra)
        r = self.rclip + extra
        return (self.pf[0] - r, self.pf[1] - r, self.pf[0] + r, self.pf[1] + r)


def _make_fracture(bones: list[_Prim], rng: np.random.Generator, s: float, scale: float) -> _Fracture:
    wts = np.array([b.frac_weight for b in bones], float)
    idx = int(rng.choice(len(bones), p=wts / wts.sum()))
    bone = bones[idx]
    width = max(2.2, rng.uniform(*FRACTURE_WIDTH) * s) / scale
    phi = math.radians(rng.uniform(-35, 35))
    kind = str(rng.choice(["undisplaced", "displaced", "angulated"], p=[0.55, 0.3, 0.15]))
    if isinstance(bone, _Tube):
        frac = rng.uniform(*bone.frac_range)
        pf, axis, r, _ = bone.point_at(frac)
        r_local = float(bone.radius.max()) if bone.radius.max() < 1.6 * r else r * 1.6
        r_disp = min(r, 1.3 * float(bone.radius.min()))
    else:
        axis = bone.axis if bone.a >= bone.b else np.array([-bone.axis[1], bone.axis[0]])
        if rng.random() < 0.5:
            axis = np.array([-axis[1], axis[0]])
        r = min(bone.a, bone.b)
        r_local = max(bone.a, bone.b)
        pf = bone.center + axis * rng.uniform(-0.3, 0.3) * r
        r_disp = r
        if kind == "angulated":
            kind = "displaced"
    c, sn = math.cos(phi), math.sin(phi)
    normal = np.array([axis[0] * c - axis[1] * sn, axis[0] * sn + axis[1] * c])
    amp = rng.uniform(0.15, 0.5) * width
    k = 2 * math.pi / (rng.uniform(0.6, 1.4) * r)
    phase = rng.uniform(0, 2 * math.pi)
    ext = r_local * abs(math.tan(phi)) + r_local + width + amp
    depth = float(rng.uniform(0.85, 1.0)) if kind == "undisplaced" else 1.0
    fr = _Fracture(idx, np.asarray(pf, float), normal, width, depth, amp, k, phase,
                   rclip=ext + r_local + width, kind=kind)
    if kind != "undisplaced":
        lateral = np.array([-axis[1], axis[0]])
        side = rng.choice([-1.0, 1.0])
        if kind == "displaced":
            shift = lateral * side * rng.uniform(0.25, 0.6) * r_disp
            # keep the fragments apart across the (oblique) line: the gap stays lucent
            shift -= normal * min(0.0, float(shift @ normal))
            fr.shift = shift + normal * rng.uniform(0.0, 0.5) * width
        else:
            fr.angle = math.radians(rng.uniform(3, 9)) * float(rng.choice([-1.0, 1.0]))
            fr.shift = lateral * side * rng.uniform(0.0, 0.25) * r_disp
        if isinstance(bone, _Tube):
            prox, dist = bone.split(frac, ext)
            fr.pieces = (prox, dist)
        else:
            fr.pieces = (bone, bone)
    if isinstance(bone, _Blob):
        fr.rclip = 1e9
        fr.extent = bone.bbox()
    return fr


# --------------------------------------------------------------------------------------
# the case generator
# --------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """Everything drawn for a seed except the fracture (shared by fractured / normal)."""

    region: str
    laterality: str
    H: int
    W: int
    frame: _Frame
    bones: list[_Prim]
    soft: list[_Prim]
    ref_px: float
    bits: int
    field: tuple[int, int, int, int]
    border: dict
    marker: dict
    s: float
    scale: float


def _choose(seed: int, region: str | None, fracture: bool | None, shape: tuple[int, int] | None):
    rng = _rng(seed, _S_CHOICE)
    r_idx = int(rng.integers(len(REGIONS)))
    f_draw = bool(rng.random() < 0.5)
    lat = "R" if rng.random() < 0.5 else "L"
    flip_orient = rng.random() < 0.15
    H = int(rng.integers(740, 1001))
    W = int(np.clip(round(H * rng.uniform(0.7, 0.86)), 600, H - 60))
    bits = int(rng.choice([12, 12, 12, 12, 14, 14, 16]))
    reg = REGIONS[r_idx] if region is None else region
    if reg not in _LAYOUTS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    frac = f_draw if fracture is None else bool(fracture)
    if shape is None:
        landscape = (reg in _LANDSCAPE) != flip_orient
        if landscape:
            H, W = W, H
    else:
        if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 96:
            raise ValueError(f"shape must be (rows, cols) with both >= 96, got {shape!r}")
        H, W = int(shape[0]), int(shape[1])
    return reg, frac, lat, H, W, bits


def _scene(seed: int, region: str, lat: str, H: int, W: int, bits: int) -> _Scene:
    rf = _rng(seed, _S_FRAME)
    natural_landscape = region in _LANDSCAPE
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
    frame = _Frame(H, W, M, np.array([Wc / 2, Hc / 2]), np.array([W / 2, H / 2]) + shift)

    lay = _LAYOUTS[region](Wc / s, Hc / s, _J(_rng(seed, _S_LAYOUT)))
    bones = [_scale_prim(b, s) for b in lay.bones]
    soft = [_scale_prim(b, s) for b in lay.soft]

    # collimation border
    sides = []
    no_border = rf.random() < 0.12
    for dim in (W, H, W, H):  # left, top, right, bottom
        wd = 0 if (no_border or rf.random() < 0.3) else int(rf.uniform(0.015, 0.12) * dim)
        sides.append(wd)
    kind = str(rf.choice(["black", "noisy", "bright"], p=[0.45, 0.35, 0.2]))
    border = {
        "kind": kind,
        "level": {"black": rf.uniform(0.0, 0.012), "noisy": rf.uniform(0.03, 0.15),
                  "bright": rf.uniform(0.85, 1.0)}[kind],
        "noise": rf.uniform(0.008, 0.03),
        "penumbra": rf.uniform(0.6, 3.0),
    }
    fld = (sides[0], sides[1], W - sides[2], H - sides[3])

    # laterality marker: a corner, inside the border when it is wide enough and not bright
    mh = int(round(rf.uniform(0.035, 0.06) * H))
    corner = int(rf.integers(4))
    aspect = 0.8
    mw = int(round(mh * aspect))
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
    marker = {"box": (mx, my, mx + mw, my + mh), "level": rf.uniform(0.88, 1.0), "text": lat}
    return _Scene(region, lat, H, W, frame, bones, soft, lay.ref_radius * s, bits, fld, border, marker, s, scale)


def _box_of(mask: np.ndarray, win) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = win[0], win[1]
    return (int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1))


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _visible(sc: _Scene, fr: _Fracture, win, dens: np.ndarray, foot: np.ndarray, min_ratio: float = 0.25) -> bool:
    """Is enough of the attenuation along the line removed (not hidden under other bones)?"""
    orig = _eval(sc.frame, sc.bones[fr.bone], win)
    removed = np.clip(orig - dens, 0.0, None)
    others = np.zeros_like(orig)
    for i, b in enumerate(sc.bones):
        if i != fr.bone:
            bw = sc.frame.window(b.bbox())
            if bw is not None and _overlap(bw, win):
                others += _eval(sc.frame, b, win)
    return float(removed[foot].mean()) >= min_ratio * float((orig + others)[foot].mean())


def _place_fracture(sc: _Scene, seed: int) -> tuple[_Fracture, tuple[int, int, int, int]]:
    rng = _rng(seed, _S_FRACTURE)
    f = sc.field
    margin = max(4, int(0.01 * sc.s))
    mb = sc.marker["box"]
    mk = (mb[0] - margin, mb[1] - margin, mb[2] + margin, mb[3] + margin)
    fallback = None
    for attempt in range(80):
        fr = _make_fracture(sc.bones, rng, sc.s, sc.scale)
        bone = sc.bones[fr.bone]
        win = sc.frame.window(fr.bbox())
        if win is None:
            continue
        dens, foot = fr.render(sc.frame, bone, win)
        box = _box_of(foot, win)
        if box is None or (box[2] - box[0]) * (box[3] - box[1]) < 12:
            continue
        inside_img = box[0] >= margin and box[1] >= margin and box[2] <= sc.W - margin and box[3] <= sc.H - margin
        if not inside_img:
            continue
        # the whole footprint must be in the image (not clipped by the window)
        if (box[0] <= win[0] and win[0] > 0) or (box[2] >= win[2] and win[2] < sc.W):
            continue
        if (box[1] <= win[1] and win[1] > 0) or (box[3] >= win[3] and win[3] < sc.H):
            continue
        fm = max(margin, int(0.03 * sc.s))
        in_field = box[0] >= f[0] + fm and box[1] >= f[1] + fm and box[2] <= f[2] - fm and box[3] <= f[3] - fm
        if in_field and not _overlap(box, mk) and _visible(sc, fr, win, dens, foot):
            return fr, box
        if fallback is None and not _overlap(box, mk):
            fallback = (fr, box)
    if fallback is not None:
        return fallback
    raise RuntimeError(f"could not place a fracture for seed {seed} region {sc.region} (image too small?)")


_SOFT_DOWN = 4


def _eval(frame: _Frame, p: _Prim, win) -> np.ndarray:
    """Density of a primitive on a window of the final grid (tubes segment by segment)."""
    if isinstance(p, _Blob):
        u, v = frame.grid(win)
        return p.density(u, v)
    shape = (win[3] - win[1], win[2] - win[0])
    best = np.full(shape, np.inf)
    acc = [np.zeros(shape) for _ in range(3)] + [np.zeros(shape)]
    acc[1][:] = 1.0  # r: avoid 0/0 where no segment reaches
    for i in range(len(p.pts) - 1):
        sw = frame.window(p.seg_bbox(i))
        if sw is None:
            continue
        sw = (max(sw[0], win[0]), max(sw[1], win[1]), min(sw[2], win[2]), min(sw[3], win[3]))
        if sw[0] >= sw[2] or sw[1] >= sw[3]:
            continue
        u, v = frame.grid(sw)
        sl = (slice(sw[1] - win[1], sw[3] - win[1]), slice(sw[0] - win[0], sw[2] - win[0]))
        sub_acc = [a[sl] for a in acc]
        _merge(best[sl], sub_acc, p.seg_params(i, u, v))
    acc[0][np.isinf(best)] = np.inf
    return p.profile(*acc)


def _render(seed: int, sc: _Scene, fr: _Fracture | None) -> dict[str, np.ndarray]:
    H, W = sc.H, sc.W
    bone = np.zeros((H, W))
    for i, b in enumerate(sc.bones):
        win = sc.frame.window(b.bbox())
        if fr is not None and fr.bone == i:
            bb = b.bbox()
            fb = fr.bbox()
            win = sc.frame.window((min(bb[0], fb[0]), min(bb[1], fb[1]), max(bb[2], fb[2]), max(bb[3], fb[3])))
            if fr.pieces is not None and fr.angle:
                # the moving fragment can swing: cover it by transforming its corners
                mb = fr.pieces[1].bbox()
                cu, cv = fr.fwd(np.array([mb[0], mb[2], mb[0], mb[2]]), np.array([mb[1], mb[1], mb[3], mb[3]]))
                win = sc.frame.window((min(cu.min(), bb[0]), min(cv.min(), bb[1]), max(cu.max(), bb[2]),
                                       max(cv.max(), bb[3])))
            elif fr.pieces is not None:
                win = sc.frame.window((bb[0] - abs(fr.shift[0]) - 2, bb[1] - abs(fr.shift[1]) - 2,
                                       bb[2] + abs(fr.shift[0]) + 2, bb[3] + abs(fr.shift[1]) + 2))
        if win is None:
            continue
        if fr is not None and fr.bone == i:
            bone[win[1]:win[3], win[0]:win[2]] += fr.render(sc.frame, b, win)[0]
        else:
            bone[win[1]:win[3], win[0]:win[2]] += _eval(sc.frame, b, win)
    # soft tissue is smooth: render it at 1/4 resolution and interpolate
    f = _SOFT_DOWN
    hl, wl = -(-H // f), -(-W // f)
    c0 = (f - 1) / 2
    low = _Frame(hl, wl, sc.frame.M / f, sc.frame.cc, (sc.frame.off - c0) / f)
    soft_pos = np.zeros((hl, wl))
    soft_neg = np.zeros((hl, wl))
    for p in sc.soft:
        win = low.window(p.bbox())
        if win is None:
            continue
        d = _eval(low, p, win)
        if p.weight >= 0:
            np.maximum(soft_pos[win[1]:win[3], win[0]:win[2]], d, out=soft_pos[win[1]:win[3], win[0]:win[2]])
        else:
            soft_neg[win[1]:win[3], win[0]:win[2]] += d
    soft_low = np.clip(soft_pos + soft_neg, 0.0, None)
    soft = ndimage.zoom(soft_low, f, order=1, mode="nearest", grid_mode=True)[:H, :W]
    return {"bone": bone / (2.0 * sc.ref_px * sc.scale), "soft": soft}


def _expose(seed: int, sc: _Scene, layers: dict[str, np.ndarray]) -> np.ndarray:
    """Physics-ish image formation; returns display values in [0, 1] (float)."""
    H, W = sc.H, sc.W
    re = _rng(seed, _S_EXPOSURE)
    rt = _rng(seed, _S_TEXTURE)
    rn = _rng(seed, _S_NOISE)
    soft_gain = re.uniform(0.7, 1.05)
    bone_gain = re.uniform(1.2, 1.8)
    heel = re.uniform(-0.12, 0.12)
    heel_dir = re.uniform(0, 2 * math.pi)
    a0 = re.uniform(1.5, 2.3)
    gamma = re.uniform(0.75, 1.3)
    lo = re.uniform(0.0, 0.06)
    hi = re.uniform(0.8, 0.98)
    n0 = re.uniform(900, 4000)
    mtf = re.uniform(0.5, 1.1)
    e_noise = re.uniform(0.002, 0.006)

    f32 = np.float32
    tex_sigma = max(1.0, 0.0025 * sc.s)
    tex = ndimage.gaussian_filter(rt.standard_normal((H, W), dtype=f32), tex_sigma)
    tex *= f32(0.12 / (tex.std() + 1e-12))
    tex += f32(1.0)
    lf = ndimage.gaussian_filter(rt.standard_normal((H // 8 + 1, W // 8 + 1)), 3.0)
    lf = ndimage.zoom(lf * (0.05 / (lf.std() + 1e-12)) + 1.0, 8, order=1, mode="nearest", grid_mode=True)[:H, :W]

    A = (f32(soft_gain) * layers["soft"].astype(f32)) * lf.astype(f32)
    A += (f32(bone_gain) * layers["bone"].astype(f32)) * tex
    gx = (np.arange(W, dtype=f32) - W / 2) * f32(math.cos(heel_dir) * heel / max(H, W))
    gy = (np.arange(H, dtype=f32) - H / 2) * f32(math.sin(heel_dir) * heel / max(H, W))
    A *= f32(1.0) + gy[:, None] + gx[None, :]
    A = ndimage.gaussian_filter(A, mtf)
    N = np.exp(-A) * f32(n0)
    N += np.sqrt(N) * rn.standard_normal((H, W), dtype=f32)
    np.maximum(N, f32(1.0), out=N)
    # display: log signal -> tone curve -> gamma -> gain/offset, plus electronic noise
    Ad = np.log(N * f32(1.0 / n0))  # = -attenuation
    y = (f32(1.0) - np.exp(Ad * f32(1.0 / a0))) * f32(1.0 / (1.0 - math.exp(-3.2 / a0)))
    y = np.sign(y) * np.abs(y) ** f32(gamma)
    y = f32(lo) + f32(hi - lo) * y + f32(e_noise) * rn.standard_normal((H, W), dtype=f32)
    return y.astype(np.float64)


def _marker_mask(text: str, w: int, h: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    size = 48
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        font = ImageFont.load_default()
    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 4, size // 4), text, fill=255, font=font)
    bb = img.getbbox() or (0, 0, img.width, img.height)
    glyph = img.crop(bb).resize((max(1, int(w * 0.8)), max(1, int(h * 0.8))), Image.BILINEAR)
    out = np.zeros((h, w))
    gy, gx = (h - glyph.height) // 2, (w - glyph.width) // 2
    out[gy:gy + glyph.height, gx:gx + glyph.width] = np.asarray(glyph, float) / 255.0
    return out


def _finish(seed: int, sc: _Scene, y: np.ndarray) -> np.ndarray:
    H, W = sc.H, sc.W
    rf = _rng(seed, _S_FRAME + 100)
    x0, y0, x1, y1 = sc.field
    b = sc.border
    pen = b["penumbra"]
    xs = np.arange(W, dtype=float)
    ys = np.arange(H, dtype=float)
    ax = np.ones(W)
    ay = np.ones(H)
    if x0 > 0:
        ax = np.minimum(ax, np.clip((xs - x0) / pen + 0.5, 0, 1))
    if x1 < W:
        ax = np.minimum(ax, np.clip((x1 - 1 - xs) / pen + 0.5, 0, 1))
    if y0 > 0:
        ay = np.minimum(ay, np.clip((ys - y0) / pen + 0.5, 0, 1))
    if y1 < H:
        ay = np.minimum(ay, np.clip((y1 - 1 - ys) / pen + 0.5, 0, 1))
    alpha = ay[:, None] * ax[None, :]
    if b["kind"] == "bright":
        outside = np.full((H, W), b["level"])
    elif b["kind"] == "noisy":
        outside = b["level"] + b["noise"] * rf.standard_normal((H, W))
        outside += 0.3 * b["level"] * ndimage.gaussian_filter(rf.standard_normal((H // 16 + 1, W // 16 + 1)), 2)[
            np.arange(H)[:, None] // 16, np.arange(W)[None, :] // 16]
    else:
        outside = b["level"] + 0.002 * rf.standard_normal((H, W))
    y = alpha * y + (1 - alpha) * outside
    mx0, my0, mx1, my1 = sc.marker["box"]
    m = _marker_mask(sc.marker["text"], mx1 - mx0, my1 - my0)
    region = y[my0:my1, mx0:mx1]
    y[my0:my1, mx0:mx1] = region * (1 - m) + sc.marker["level"] * m
    maxv = (1 << sc.bits) - 1
    return np.clip(np.rint(y * maxv), 0, maxv).astype(np.uint16)


def _build(seed: int, region: str | None, fracture: bool | None, shape: tuple[int, int] | None):
    seed = _check_seed(seed)
    reg, frac, lat, H, W, bits = _choose(seed, region, fracture, shape)
    sc = _scene(seed, reg, lat, H, W, bits)
    fr, box = (None, None)
    if frac:
        fr, box = _place_fracture(sc, seed)
    layers = _render(seed, sc, fr)
    pixels = _finish(seed, sc, _expose(seed, sc, layers))
    pixels.setflags(write=False)
    case = SyntheticCase(
        pixels=pixels, region=reg, fracture=frac, box=box, bits_stored=bits, seed=seed,
        laterality=lat,  # type: ignore[arg-type]
        field=sc.field, marker=sc.marker["box"], fracture_kind=None if fr is None else fr.kind,
    )
    return case, sc, layers


def make_case(
    seed: int,
    region: str | None = None,
    fracture: bool | None = None,
    shape: tuple[int, int] | None = None,
) -> SyntheticCase:
    """One synthetic radiograph, a pure function of its arguments.

    region / fracture / shape default to values drawn from the seed; ``shape`` is
    (rows, cols). Same seed and region with fracture True / False give the same picture
    except for the fracture.
    """
    return _build(seed, region, fracture, shape)[0]


def dataset(
    n: int,
    seed: int,
    fracture_rate: float = 0.5,
    regions: Iterable[str] = REGIONS,
    shape: tuple[int, int] | None = None,
) -> Iterator[SyntheticCase]:
    """``n`` cases, deterministic for ``seed``; each case's ``seed`` reproduces it with make_case."""
    seed = _check_seed(seed)
    regs = tuple(regions)
    if not regs:
        raise ValueError("regions is empty")
    for r in regs:
        if r not in _LAYOUTS:
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


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------


def write_png(case: SyntheticCase, path: str | Path, bits: int = 16) -> Path:
    """Grayscale PNG, brighter = denser. Values are rescaled to the full 8 / 16-bit range."""
    from PIL import Image

    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    arr = case.pixels.astype(np.float64) * (((1 << bits) - 1) / case.max_value)
    arr = np.rint(arr)
    img = Image.fromarray(arr.astype(np.uint8)) if bits == 8 else Image.fromarray(arr.astype(np.uint16))
    path = Path(path)
    img.save(path, format="PNG")
    return path


def _ts():
    from pydicom import uid as U

    return U


def _transfer_syntaxes():
    U = _ts()
    return {
        "explicit_vr_little_endian": U.ExplicitVRLittleEndian,
        "implicit_vr_little_endian": U.ImplicitVRLittleEndian,
        "explicit_vr_big_endian": U.ExplicitVRBigEndian,
        "deflated_explicit_vr_little_endian": U.DeflatedExplicitVRLittleEndian,
        "rle_lossless": U.RLELossless,
        "jpeg2000_lossless": U.JPEG2000Lossless,
        "jpeg2000_lossy": U.JPEG2000,
        "jpegls_lossless": U.JPEGLSLossless,
        "jpegls_near_lossless": U.JPEGLSNearLossless,
        "jpeg_lossless_sv1": U.JPEGLosslessSV1,
        "jpeg_baseline_8bit": U.JPEGBaseline8Bit,
        "jpeg_extended_12bit": U.JPEGExtended12Bit,
    }


#: Every transfer syntax write_dicom knows (name -> UID); see can_write() for the
#: encoders actually installed and LOSSLESS for which are lossless.
TRANSFER_SYNTAXES: dict[str, UID] = _transfer_syntaxes()
#: The lossless ones (pixels round-trip exactly).
LOSSLESS: frozenset[UID] = frozenset(
    TRANSFER_SYNTAXES[k] for k in (
        "explicit_vr_little_endian", "implicit_vr_little_endian", "explicit_vr_big_endian",
        "deflated_explicit_vr_little_endian", "rle_lossless", "jpeg2000_lossless", "jpegls_lossless",
        "jpeg_lossless_sv1",
    )
)
_IMAGECODECS_SYNTAXES = ("jpeg_lossless_sv1", "jpeg_baseline_8bit", "jpeg_extended_12bit")


def _imagecodecs_ok() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.JPEG8.available)
    except Exception:  # noqa: BLE001 - optional dependency, any import failure means "no"
        return False


def can_write(transfer_syntax: UID | str) -> bool:
    """True if write_dicom can write this transfer syntax with the installed encoders."""
    ts = UID(str(transfer_syntax))
    if ts not in TRANSFER_SYNTAXES.values():
        return False
    if not ts.is_compressed:
        return True
    if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES):
        return _imagecodecs_ok()
    from pydicom.pixels import get_encoder

    try:
        return bool(get_encoder(ts).is_available)
    except Exception:  # noqa: BLE001
        return False


def writable_transfer_syntaxes() -> dict[str, UID]:
    """The subset of TRANSFER_SYNTAXES that the installed encoders can write."""
    return {k: v for k, v in TRANSFER_SYNTAXES.items() if can_write(v)}


# region -> keyword of its code in DICOM CID 4031 (Common Anatomic Regions), as pydicom names it
_ANATOMY_CODE = {
    "ankle": "AnkleJoint", "clavicle": "Clavicle", "elbow": "ElbowJoint", "femur": "Femur", "foot": "Foot",
    "forearm": "Forearm", "hand": "Hand", "hip": "Hip", "humerus": "Humerus", "knee": "Knee", "pelvis": "Pelvis",
    "ribs": "Rib", "shoulder": "Shoulder", "spine": "Spine", "tibia_fibula": "LowerLeg", "wrist": "WristJoint",
}


def _code_items(cid: str, keyword: str | None) -> list:
    """[code item] from pydicom's copy of a DICOM context group, [] if unknown."""
    if keyword is None:
        return []
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    try:
        code = getattr(getattr(codes, cid), keyword)
    except (AttributeError, KeyError):
        return []
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return [item]


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["fracscan-synthetic", *[str(p) for p in parts]])


def _file_dataset(path: Path | str, sop_class: str, instance_uid: str, transfer_syntax: str):
    """An empty Part-10 dataset with its file meta; the SOP Class/Instance UIDs are set on both."""
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationVersionName = "FRACSCAN_SYNTH"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    return ds


def _ds_str(x: float) -> str:
    s = f"{x:.6g}"
    return s[:16]


def write_dicom(
    case: SyntheticCase,
    path: str | Path,
    *,
    transfer_syntax: UID | str = ExplicitVRLittleEndian,
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    modality: Literal["DX", "CR"] = "DX",
    body_part: str | None = None,
    patient_name: str = "SYNTHETIC^DEMO",
    patient_id: str | None = None,
    rescale_intercept: float | None = None,
) -> Path:
    """Write a DICOM Part-10 file of the case.

    MONOCHROME1 stores ``max - value``, so inverting MONOCHROME1 recovers ``case.pixels``.
    JPEG Baseline stores an 8-bit version (``round(v * 255 / max)``) and JPEG Extended a
    12-bit version of the pixels (both lossy anyway). ``rescale_intercept`` None draws it
    from the seed (mostly 0).
    """
    import pydicom
    from pydicom.sequence import Sequence as DSequence

    U = _ts()
    ts = UID(str(transfer_syntax))
    if ts not in TRANSFER_SYNTAXES.values():
        raise ValueError(f"unsupported transfer syntax {ts} ({ts.name})")
    if not can_write(ts):
        raise RuntimeError(
            f"no encoder installed for {ts.name}: "
            + ("install imagecodecs" if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES)
               else "install the pydicom encoder plugin (e.g. pyjpegls for JPEG-LS)")
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be DX or CR, got {modality!r}")
    path = Path(path)
    rm = _rng(case.seed, _S_META)

    # stored pixel values
    bits = case.bits_stored
    arr = case.pixels.astype(np.uint16)
    if ts == U.JPEGBaseline8Bit:
        bits = 8
        arr = np.rint(arr.astype(float) * (255 / case.max_value)).astype(np.uint16)
    elif ts == U.JPEGExtended12Bit and bits > 12:
        bits = 12
        arr = np.rint(arr.astype(float) * (4095 / case.max_value)).astype(np.uint16)
    maxv = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        arr = (maxv - arr).astype(np.uint16)
    lossy = ts not in LOSSLESS

    sop_class = U.DigitalXRayImageStorageForPresentation if modality == "DX" else U.ComputedRadiographyImageStorage
    study_uid = _uid(case.seed, "study")
    series_uid = _uid(case.seed, "series", modality, photometric)
    inst_uid = _uid(case.seed, "instance", modality, photometric, bits, ts if lossy else "")

    ds = _file_dataset(path, sop_class, inst_uid, ts)

    when = _dt.datetime(2020, 1, 1, 8, 0, 0) + _dt.timedelta(
        days=int(rm.integers(0, 1500)), seconds=int(rm.integers(0, 10 * 3600)))
    region = case.region
    bp = (body_part if body_part is not None else BODY_PART.get(region, region.upper())).upper()
    view = "PA" if region in ("hand", "wrist") else "AP"

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "fracscan synthetic generator (DEMO)"
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR {region.upper().replace('_', ' ')} 2 VIEWS"
    ds.SeriesDescription = f"{bp} {view}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id if patient_id is not None else f"DEMO-{case.seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SYNTHETIC IMAGE - NEVER IDENTIFIED"
    ds.BodyPartExamined = bp
    ds.ViewPosition = view
    ds.KVP = _ds_str(float(rm.choice([50, 55, 60, 66, 70, 77, 81, 85])))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    lat = case.laterality
    # DX carries the image-level ImageLaterality; CR (no DX Anatomy module) the series-level
    # Laterality. DICOM forbids Laterality when ImageLaterality is present.
    if modality == "DX":
        ds.ImageLaterality = "U" if region in _UNPAIRED else lat
    elif region not in _UNPAIRED:
        ds.Laterality = lat
    ds.AnatomicRegionSequence = DSequence(_code_items("cid4031", _ANATOMY_CODE.get(_BODY_PART_REGION.get(bp, ""))))
    if modality == "DX":
        ds.ViewCodeSequence = DSequence(
            _code_items("cid4010", "PosteroAnterior" if view == "PA" else "AnteroPosterior"))
    ds.PatientOrientation = ["L" if lat == "R" else "R", "F"]
    ds.ImageComments = DEMO_NOTICE
    ds.BurnedInAnnotation = "YES"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = DSequence([])
    spacing = _FIELD_MM.get(region, 300) / max(case.shape)
    ds.ImagerPixelSpacing = [_ds_str(spacing), _ds_str(spacing)]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = case.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0

    draw = rm.random()
    if rescale_intercept is None:
        rescale_intercept = 0.0 if draw < 0.75 else float(rm.choice([-1024.0, -512.0, 100.0]))
    slope = 1.0
    ds.RescaleIntercept = _ds_str(rescale_intercept)
    ds.RescaleSlope = _ds_str(slope)
    ds.RescaleType = "US"
    # window from the field's percentiles, in modality units of the stored values
    fx0, fy0, fx1, fy1 = case.field
    inner = arr[fy0:fy1, fx0:fx1] if (fx1 > fx0 and fy1 > fy0) else arr
    p1, p99 = np.percentile(inner, [30, 99.7] if photometric == "MONOCHROME2" else [0.3, 70])
    ds.WindowCenter = _ds_str((p1 + p99) / 2 * slope + rescale_intercept)
    ds.WindowWidth = _ds_str(max(1.0, (p99 - p1) * slope))
    ds.LossyImageCompression = "01" if lossy else "00"

    if ts.is_compressed:
        ds.PixelData = arr.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
        ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
        _compress(ds, arr, ts, bits)
        if lossy:
            ds.LossyImageCompression = "01"
    elif ts == U.ExplicitVRBigEndian:
        ds.PixelData = arr.astype(">u2").tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ts
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _compress(ds, arr: np.ndarray, ts, bits: int) -> None:
    U = _ts()
    if ts in (TRANSFER_SYNTAXES[k] for k in _IMAGECODECS_SYNTAXES):
        import imagecodecs
        from pydicom.encaps import encapsulate

        if ts == U.JPEGLosslessSV1:
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint16), lossless=True, predictor=1, bitspersample=bits)
        elif ts == U.JPEGBaseline8Bit:
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint8), level=92)
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:  # JPEG Extended 12 bit
            frame = imagecodecs.jpeg8_encode(arr.astype(np.uint16), level=92, bitspersample=12)
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        if ts != U.JPEGLosslessSV1:
            ds.LossyImageCompressionRatio = _ds_str(arr.size * (1 if bits == 8 else 2) / len(frame))
        ds.file_meta.TransferSyntaxUID = ts
        return
    kw: dict = {}
    if ts == U.JPEG2000:
        kw["j2k_cr"] = [10]
    if ts == U.JPEGLSNearLossless:
        kw["jls_error"] = 3
    ds.compress(ts, arr, generate_instance_uid=False, **kw)
    if ts == U.JPEG2000:
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    elif ts == U.JPEGLSNearLossless:
        ds.LossyImageCompressionMethod = "ISO_14495_1"


def dicom_pixels(path: str | Path) -> np.ndarray:
    """Read back a file written by write_dicom as MONOCHROME2-sense stored values (test helper)."""
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.int64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = ((1 << int(ds.BitsStored)) - 1) - arr
    return arr


def write_non_image_dicom(path: str | Path, seed: int = 0) -> Path:
    """A Basic Text SR DICOM file: valid DICOM, no PixelData (for bad-input tests)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    path = Path(path)
    inst = _uid(seed, "sr-instance")
    ds = _file_dataset(path, BasicTextSRStorage, inst, ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.ContentTime = "080000"
    ds.AccessionNumber = ""
    ds.Modality = "SR"
    ds.Manufacturer = "fracscan synthetic generator (DEMO)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC TEXT REPORT"
    ds.PatientName = "SYNTHETIC^DEMO"
    ds.PatientID = f"DEMO-SR-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _uid(seed, "sr-study")
    ds.SeriesInstanceUID = _uid(seed, "sr-series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = DSequence([])
    ds.PerformedProcedureCodeSequence = DSequence([])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
        return c

    ds.ConceptNameCodeSequence = DSequence([code("18782-3", "LN", "Radiology Study observation (narrative)")])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DSequence([code("121071", "DCM", "Finding")])
    item.TextValue = DEMO_NOTICE + ". This object has no image."
    ds.ContentSequence = DSequence([item])
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------
# examples/
# --------------------------------------------------------------------------------------

# (file name, region, fracture, seed, writer, options). Images are ~0.55x the default size.
_EXAMPLES: tuple[tuple[str, str, bool, int, str, dict], ...] = (
    ("wrist_fracture.dcm", "wrist", True, 101, "dicom", {}),
    ("hand_normal_mono1.dcm", "hand", False, 102, "dicom",
     {"photometric": "MONOCHROME1", "ts": "jpeg2000_lossless"}),
    ("ankle_fracture_j2k.dcm", "ankle", True, 103, "dicom", {"ts": "jpeg2000_lossless"}),
    ("knee_normal_j2k_lossy.dcm", "knee", False, 104, "dicom", {"ts": "jpeg2000_lossy"}),
    ("IM000105", "forearm", True, 105, "dicom", {"ts": "rle_lossless", "modality": "CR"}),
    ("tibia_fibula_fracture.png", "tibia_fibula", True, 106, "png16", {}),
    ("elbow_normal.png", "elbow", False, 107, "png8", {}),
    ("femur_fracture_cr_mono1.dcm", "femur", True, 108, "dicom",
     {"photometric": "MONOCHROME1", "modality": "CR", "ts": "jpeg2000_lossless"}),
    ("pelvis_normal.dcm", "pelvis", False, 114, "dicom", {"ts": "deflated_explicit_vr_little_endian"}),
    ("foot_fracture.png", "foot", True, 110, "png8", {}),
    ("clavicle_fracture_mono1.dcm", "clavicle", True, 128, "dicom",
     {"photometric": "MONOCHROME1", "ts": "jpeg2000_lossless"}),
    ("hip_fracture.dcm", "hip", True, 118, "dicom", {"ts": "implicit_vr_little_endian"}),
)
_EXAMPLE_SCALE = 0.55

_EXAMPLES_README = f"""\
{DEMO_NOTICE}

These radiographs were made by fracscan.synthetic.write_examples(): simple shapes, a
physical-ish exposure model and noise. They are not anatomy and not patients. They exist
to demonstrate the pipeline (the DEMO ensemble was trained on the same generator).

labels.csv: source = file name, fracture = 1/0, region, and the fracture box x0,y0,x1,y1
in pixel coordinates of the stored image, half-open (pixels[y0:y1, x0:x1]); empty when
there is no fracture. Regenerate with:
    python -c "from fracscan.synthetic import write_examples; write_examples('examples')"
"""


def write_examples(out_dir: str | Path) -> list[Path]:
    """Write a dozen example radiographs, ``labels.csv`` and a README into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for name, region, frac, seed, writer, opt in _EXAMPLES:
        reg, _, _, H, W, _ = _choose(seed, region, frac, None)
        shape = (int(H * _EXAMPLE_SCALE), int(W * _EXAMPLE_SCALE))
        case = make_case(seed, region, frac, shape)
        p = out / name
        if writer == "dicom":
            write_dicom(case, p, transfer_syntax=TRANSFER_SYNTAXES[opt.get("ts", "explicit_vr_little_endian")],
                        photometric=opt.get("photometric", "MONOCHROME2"), modality=opt.get("modality", "DX"))
        else:
            write_png(case, p, bits=16 if writer == "png16" else 8)
        written.append(p)
        box = case.box if case.box is not None else ("", "", "", "")
        rows.append([name, int(case.fracture), case.region, *box])
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "fracture", "region", "x0", "y0", "x1", "y1"])
        w.writerows(rows)
    readme = out / "README.txt"
    readme.write_text(_EXAMPLES_README)
    return [*written, labels, readme]
