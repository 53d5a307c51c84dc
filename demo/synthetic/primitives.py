"""Bone and soft-tissue primitives, the affine frame that places them, and their density on a pixel grid.

A primitive lives in the canonical layout frame (pixel units after `scale_prim`): a `Tube` is a
polyline with per-vertex radius, cortex and medulla (long bones, ribs, soft-tissue limbs), a
`Blob` a (super-)ellipse (carpals, heads, vertebral bodies). `Frame` maps that frame onto the
final pixel grid (mirror, rotation, scale, shift); `density_on` samples a primitive on a window
of that grid: the projected path length through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.floating[Any]]
BoolArray = NDArray[np.bool_]
Window = tuple[int, int, int, int]  # x0, y0, x1, y1 on the final pixel grid
Point = Sequence[float] | FloatArray  # x, y
Points = Sequence[Sequence[float]] | FloatArray  # (n, 2)
SegParams = tuple[FloatArray, FloatArray, FloatArray, FloatArray]  # d^2, r, inner r, medulla density


def _merge(best: FloatArray, acc: list[FloatArray], params: SegParams) -> None:
    d2, r, ri, m = params
    q = d2 / (r * r)
    sel = q < best
    np.copyto(best, q, where=sel)
    for dst, src in zip(acc, (d2, r, ri, m), strict=True):
        np.copyto(dst, src, where=sel)


@dataclass
class Tube:
    """A polyline with per-vertex radius, cortex fraction and medulla density."""

    pts: FloatArray  # (n, 2) x, y
    radius: FloatArray  # (n,)
    cortex: FloatArray  # (n,) cortex thickness as a fraction of the radius
    marrow: FloatArray  # (n,) density of the medulla relative to cortex
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

    def seg_params(self, i: int, x: FloatArray, y: FloatArray) -> SegParams:
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

    def profile(self, d2: FloatArray, r: FloatArray, ri: FloatArray, m: FloatArray) -> FloatArray:
        if self.normalized:
            unit: FloatArray = np.sqrt(np.maximum(1.0 - d2 / (r * r), 0.0))
            return unit * self.weight
        outer: FloatArray = np.sqrt(np.maximum(r * r - d2, 0.0))
        inner: FloatArray = np.sqrt(np.maximum(ri * ri - d2, 0.0))
        return 2.0 * ((outer - inner) + m * inner) * self.weight

    def density(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Each point takes the segment it is most inside of (no seams at the joints)."""
        shape = np.broadcast(x, y).shape
        best = np.full(shape, np.inf)
        acc = [np.zeros(shape) for _ in range(4)]
        for i in range(len(self.pts) - 1):
            _merge(best, acc, self.seg_params(i, x, y))
        return self.profile(*acc)

    # geometry along the polyline
    def _cumlen(self) -> FloatArray:
        seg = np.hypot(*np.diff(self.pts, axis=0).T)
        return np.concatenate([[0.0], np.cumsum(seg)])

    def point_at(self, frac: float) -> tuple[FloatArray, FloatArray, float, int]:
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

    def split(self, frac: float, ext: float) -> tuple[Tube, Tube]:
        """Two overlapping pieces cut at ``frac``; each runs ``ext`` past the cut point."""
        pf, axis, _, k = self.point_at(frac)

        def interp(arr: FloatArray) -> float:
            a, b = self.pts[k], self.pts[k + 1]
            seg = float(np.hypot(*(b - a)))
            t = 0.0 if seg <= 0 else float(np.hypot(*(pf - a))) / seg
            return float(arr[k] + t * (arr[k + 1] - arr[k]))

        vr, vc, vm = interp(self.radius), interp(self.cortex), interp(self.marrow)
        prox = Tube(
            np.vstack([self.pts[: k + 1], pf, pf + axis * ext]),
            np.concatenate([self.radius[: k + 1], [vr, vr]]),
            np.concatenate([self.cortex[: k + 1], [vc, vc]]),
            np.concatenate([self.marrow[: k + 1], [vm, vm]]),
            name=self.name + ":proximal",
        )
        dist = Tube(
            np.vstack([pf - axis * ext, pf, self.pts[k + 1 :]]),
            np.concatenate([[vr, vr], self.radius[k + 1 :]]),
            np.concatenate([[vc, vc], self.cortex[k + 1 :]]),
            np.concatenate([[vm, vm], self.marrow[k + 1 :]]),
            name=self.name + ":distal",
        )
        return prox, dist


@dataclass
class Blob:
    """A (super-)ellipse bone: bright rim, lighter inside."""

    center: FloatArray
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

    def _rho(self, x: FloatArray, y: FloatArray) -> FloatArray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.center[0], y - self.center[1]
        xl = (dx * c + dy * s) / self.a
        yl = (-dx * s + dy * c) / self.b
        if self.power == 2.0:
            rho: FloatArray = np.sqrt(xl * xl + yl * yl)
            return rho
        p = self.power
        sx: FloatArray = np.abs(xl)
        sy: FloatArray = np.abs(yl)
        return (sx**p + sy**p) ** (1.0 / p)

    def density(self, x: FloatArray, y: FloatArray) -> FloatArray:
        rho = self._rho(x, y)
        if self.normalized:
            unit: FloatArray = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
            return unit * self.weight
        sc = self.depth if self.depth > 0 else min(self.a, self.b)
        ci = 1.0 - self.cortex
        outer: FloatArray = sc * np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
        ri = rho / ci
        inner: FloatArray = sc * ci * np.sqrt(np.clip(1.0 - ri * ri, 0.0, None))
        return 2.0 * ((outer - inner) + self.marrow * inner) * self.weight

    @property
    def axis(self) -> FloatArray:
        return np.array([math.cos(self.angle), math.sin(self.angle)])


Prim = Tube | Blob


def long_bone(
    p0: Point,
    p1: Point,
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
) -> Tube:
    """A long bone: a straight tube whose ends flare into thin-cortex trabecular bone."""
    p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.hypot(*(p1a - p0a)))
    fl = (flare_len if flare_len is not None else 2.6 * r) / max(length, 1e-9)
    f = min(0.32, 1.6 * fl)
    t = np.unique(np.concatenate([np.linspace(0, f, 6), np.linspace(f, 1 - f, 4), np.linspace(1 - f, 1, 6)]))
    e0 = np.exp(-((t / fl) ** 2)) if flare0 > 1.0 else np.zeros_like(t)
    e1 = np.exp(-(((1 - t) / fl) ** 2)) if flare1 > 1.0 else np.zeros_like(t)
    rad = r * (1.0 + (flare0 - 1.0) * e0 + (flare1 - 1.0) * e1)
    end = np.maximum(e0, e1)
    cf = cortex * (1 - end) + 0.12 * end
    mw = marrow * (1 - end) + 0.5 * end * r / rad  # wide trabecular ends are not denser
    pts = p0a[None, :] + t[:, None] * (p1a - p0a)[None, :]
    return Tube(pts, rad, cf, mw, name=name, frac_weight=frac_weight, frac_range=frac_range)


def curve(
    ctrl: Points,
    r: float | Sequence[float] | FloatArray,
    *,
    cortex: float = 0.35,
    marrow: float = 0.25,
    n: int = 14,
    name: str = "",
    frac_weight: float = 0.0,
    frac_range: tuple[float, float] = (0.2, 0.8),
    normalized: bool = False,
    weight: float = 1.0,
) -> Tube:
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
    rad = np.full(n, float(rr)) if rr.ndim == 0 else np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(rr)), rr)
    return Tube(
        pts,
        rad,
        np.full(n, cortex),
        np.full(n, marrow),
        name=name,
        frac_weight=frac_weight,
        frac_range=frac_range,
        normalized=normalized,
        weight=weight,
    )


def blob(
    c: Point,
    a: float,
    b: float,
    angle_deg: float = 0.0,
    *,
    cortex: float = 0.2,
    marrow: float = 0.5,
    power: float = 2.0,
    name: str = "",
    frac_weight: float = 0.0,
    depth: float | None = None,
) -> Blob:
    dp = min(a, b, 0.07) if depth is None else depth
    return Blob(
        np.asarray(c, float),
        float(a),
        float(b),
        math.radians(angle_deg),
        cortex,
        marrow,
        power,
        name=name,
        frac_weight=frac_weight,
        depth=float(dp),
    )


def soft_tube(ctrl: Points, r: float | Sequence[float] | FloatArray, weight: float = 1.0) -> Tube:
    return curve(ctrl, r, n=12, normalized=True, weight=weight)


def soft_blob(c: Point, a: float, b: float, angle_deg: float = 0.0, weight: float = 1.0, power: float = 2.0) -> Blob:
    return Blob(
        np.asarray(c, float), float(a), float(b), math.radians(angle_deg), power=power, normalized=True, weight=weight
    )


@dataclass
class Frame:
    H: int
    W: int
    M: FloatArray  # 2x2 canonical -> final (includes mirror, rotation, scale)
    cc: FloatArray  # canonical centre
    off: FloatArray  # final position of the canonical centre

    def __post_init__(self) -> None:
        self.Minv = np.linalg.inv(self.M)

    def to_final(self, u: ArrayLike, v: ArrayLike) -> tuple[FloatArray, FloatArray]:
        du, dv = np.asarray(u) - self.cc[0], np.asarray(v) - self.cc[1]
        return (
            self.M[0, 0] * du + self.M[0, 1] * dv + self.off[0],
            self.M[1, 0] * du + self.M[1, 1] * dv + self.off[1],
        )

    def to_canon(self, x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
        dx, dy = np.asarray(x) - self.off[0], np.asarray(y) - self.off[1]
        return (
            self.Minv[0, 0] * dx + self.Minv[0, 1] * dy + self.cc[0],
            self.Minv[1, 0] * dx + self.Minv[1, 1] * dy + self.cc[1],
        )

    def window(self, bbox: tuple[float, float, float, float], pad: float = 2.0) -> Window | None:
        u0, v0, u1, v1 = bbox
        xs, ys = self.to_final(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        x0 = max(0, math.floor(xs.min() - pad))
        x1 = min(self.W, math.ceil(xs.max() + pad) + 1)
        y0 = max(0, math.floor(ys.min() - pad))
        y1 = min(self.H, math.ceil(ys.max() + pad) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    def grid(self, win: Window) -> tuple[FloatArray, FloatArray]:
        x0, y0, x1, y1 = win
        X, Y = np.meshgrid(np.arange(x0, x1, dtype=float), np.arange(y0, y1, dtype=float))
        return self.to_canon(X, Y)


def scale_prim(p: Prim, s: float) -> Prim:
    if isinstance(p, Tube):
        return Tube(
            p.pts * s,
            p.radius * s,
            p.cortex.copy(),
            p.marrow.copy(),
            p.name,
            p.frac_weight,
            p.frac_range,
            p.normalized,
            p.weight,
        )
    return Blob(
        p.center * s,
        p.a * s,
        p.b * s,
        p.angle,
        p.cortex,
        p.marrow,
        p.power,
        p.name,
        p.frac_weight,
        p.normalized,
        p.weight,
        p.depth * s,
    )


def density_on(frame: Frame, p: Prim, win: Window) -> FloatArray:
    """Density of a primitive on a window of the final grid (tubes segment by segment)."""
    if isinstance(p, Blob):
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


@dataclass
class Layout:
    bones: list[Prim]
    soft: list[Prim]  # weight < 0: subtracted (lungs)
    ref_radius: float  # typical bone radius (layout units) for attenuation normalisation


class Jitter:
    """Jitter helper bound to the layout stream."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, v: float, amt: float) -> float:
        return float(v + self.rng.uniform(-amt, amt))

    def f(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))
