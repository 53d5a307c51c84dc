"""Fractures: a lucent line across one bone, sometimes a displaced or angulated fragment.

`place_fracture` draws candidate fractures from the fracture stream until one lies inside the
collimated field, off the burned-in marker, and visibly removes bone (not hidden under other
bones); its box is computed on the final pixel grid, after every transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import streams
from .primitives import Blob, BoolArray, FloatArray, Frame, Prim, Tube, Window, density_on
from .scenes import Scene

# Lucent-line width as a fraction of the image size: wide enough that the line stays visible
# after the demo's downscaling to a 128 x 128 frame (about 2-3 frame pixels).
FRACTURE_WIDTH = (0.015, 0.025)


@dataclass
class Fracture:
    bone: int
    pf: FloatArray
    normal: FloatArray  # unit normal of the fracture line
    width: float
    depth: float
    amp: float
    k: float
    phase: float
    rclip: float
    kind: str
    pieces: tuple[Prim, Prim] | None = None  # displaced: (fixed, moving)
    angle: float = 0.0
    shift: FloatArray = field(default_factory=lambda: np.zeros(2))
    extent: tuple[float, float, float, float] | None = None

    def sd(self, u: FloatArray, v: FloatArray) -> FloatArray:
        du, dv = u - self.pf[0], v - self.pf[1]
        along = -du * self.normal[1] + dv * self.normal[0]
        wave: FloatArray = np.sin(self.k * along + self.phase)
        signed: FloatArray = du * self.normal[0] + dv * self.normal[1] + self.amp * wave
        return signed

    def near(self, u: FloatArray, v: FloatArray) -> BoolArray:
        inside: BoolArray = (u - self.pf[0]) ** 2 + (v - self.pf[1]) ** 2 < self.rclip**2
        return inside

    def fwd(self, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        du, dv = u - self.pf[0], v - self.pf[1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.pf[0] + c * du - s * dv + self.shift[0], self.pf[1] + s * du + c * dv + self.shift[1]

    def moving_frame(self, frame: Frame) -> Frame:
        """frame composed with the inverse fragment transform (still affine)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        cc = self.pf + rot.T @ (frame.cc - self.shift - self.pf)
        return Frame(frame.H, frame.W, frame.M @ rot, cc, frame.off)

    def render(self, frame: Frame, bone: Prim, win: Window) -> tuple[FloatArray, BoolArray]:
        """(fractured density, footprint of the line) of the bone on a window of the final grid."""
        hw = self.width / 2
        u, v = frame.grid(win)
        sd = self.sd(u, v)
        near = self.near(u, v)
        if self.pieces is None:
            dens = density_on(frame, bone, win)
            band = np.clip(hw + 0.5 - np.abs(sd), 0.0, 1.0) * near
            foot = (np.abs(sd) <= hw) & near & (dens > 0)
            return dens * (1.0 - self.depth * band), foot
        fixed, moving = self.pieces
        mf = self.moving_frame(frame)
        uu, vv = mf.grid(win)
        sdm = self.sd(uu, vv)
        nearm = self.near(uu, vv)
        df = density_on(frame, fixed, win)
        dm = density_on(mf, moving, win)
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


def _make_fracture(bones: list[Prim], rng: np.random.Generator, s: float, scale: float) -> Fracture:
    wts = np.array([b.frac_weight for b in bones], float)
    idx = int(rng.choice(len(bones), p=wts / wts.sum()))
    bone = bones[idx]
    width = max(2.2, rng.uniform(*FRACTURE_WIDTH) * s) / scale
    phi = math.radians(rng.uniform(-35, 35))
    kind = str(rng.choice(["undisplaced", "displaced", "angulated"], p=[0.55, 0.3, 0.15]))
    if isinstance(bone, Tube):
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
    fr = Fracture(
        idx, np.asarray(pf, float), normal, width, depth, amp, k, phase, rclip=ext + r_local + width, kind=kind
    )
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
        if isinstance(bone, Tube):
            prox, dist = bone.split(frac, ext)
            fr.pieces = (prox, dist)
        else:
            fr.pieces = (bone, bone)
    if isinstance(bone, Blob):
        fr.rclip = 1e9
        fr.extent = bone.bbox()
    return fr


def _box_of(mask: BoolArray, win: Window) -> Window | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, y0 = win[0], win[1]
    return (int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1))


def _overlap(a: Window, b: Window) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _visible(sc: Scene, fr: Fracture, win: Window, dens: FloatArray, foot: BoolArray, min_ratio: float = 0.25) -> bool:
    """Is enough of the attenuation along the line removed (not hidden under other bones)?"""
    orig = density_on(sc.frame, sc.bones[fr.bone], win)
    removed = np.clip(orig - dens, 0.0, None)
    others = np.zeros_like(orig)
    for i, b in enumerate(sc.bones):
        if i != fr.bone:
            bw = sc.frame.window(b.bbox())
            if bw is not None and _overlap(bw, win):
                others += density_on(sc.frame, b, win)
    return float(removed[foot].mean()) >= min_ratio * float((orig + others)[foot].mean())


def place_fracture(sc: Scene, seed: int) -> tuple[Fracture, tuple[int, int, int, int]]:
    rng = streams.rng(seed, streams.FRACTURE)
    f = sc.field
    margin = max(4, int(0.01 * sc.s))
    mb = sc.marker["box"]
    mk = (mb[0] - margin, mb[1] - margin, mb[2] + margin, mb[3] + margin)
    fallback = None
    for _ in range(80):
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
