"""Image formation: bone and soft-tissue path lengths -> exposure -> border and marker -> stored pixels.

`render_layers` projects the scene (with its fracture, if any) into bone and soft-tissue path
lengths; `expose` turns them into an attenuation with quantum and electronic noise and a random
exposure (gain, gamma, tone curve, heel effect); `finish` adds the collimation border and the
burned-in R / L marker and quantises to the scene's bit depth.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from . import streams
from .fractures import Fracture
from .primitives import FloatArray, Frame, density_on
from .scenes import Scene

_SOFT_DOWN = 4


def render_layers(seed: int, sc: Scene, fr: Fracture | None) -> dict[str, FloatArray]:
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
                win = sc.frame.window(
                    (min(cu.min(), bb[0]), min(cv.min(), bb[1]), max(cu.max(), bb[2]), max(cv.max(), bb[3]))
                )
            elif fr.pieces is not None:
                win = sc.frame.window(
                    (
                        bb[0] - abs(fr.shift[0]) - 2,
                        bb[1] - abs(fr.shift[1]) - 2,
                        bb[2] + abs(fr.shift[0]) + 2,
                        bb[3] + abs(fr.shift[1]) + 2,
                    )
                )
        if win is None:
            continue
        if fr is not None and fr.bone == i:
            bone[win[1] : win[3], win[0] : win[2]] += fr.render(sc.frame, b, win)[0]
        else:
            bone[win[1] : win[3], win[0] : win[2]] += density_on(sc.frame, b, win)
    # soft tissue is smooth: render it at 1/4 resolution and interpolate
    f = _SOFT_DOWN
    hl, wl = -(-H // f), -(-W // f)
    c0 = (f - 1) / 2
    low = Frame(hl, wl, sc.frame.M / f, sc.frame.cc, (sc.frame.off - c0) / f)
    soft_pos = np.zeros((hl, wl))
    soft_neg = np.zeros((hl, wl))
    for p in sc.soft:
        win = low.window(p.bbox())
        if win is None:
            continue
        d = density_on(low, p, win)
        if p.weight >= 0:
            np.maximum(soft_pos[win[1] : win[3], win[0] : win[2]], d, out=soft_pos[win[1] : win[3], win[0] : win[2]])
        else:
            soft_neg[win[1] : win[3], win[0] : win[2]] += d
    soft_low = np.clip(soft_pos + soft_neg, 0.0, None)
    soft = ndimage.zoom(soft_low, f, order=1, mode="nearest", grid_mode=True)[:H, :W]
    return {"bone": bone / (2.0 * sc.ref_px * sc.scale), "soft": soft}


def expose(seed: int, sc: Scene, layers: dict[str, FloatArray]) -> FloatArray:
    """Physics-ish image formation; returns display values in [0, 1] (float)."""
    H, W = sc.H, sc.W
    re = streams.rng(seed, streams.EXPOSURE)
    rt = streams.rng(seed, streams.TEXTURE)
    rn = streams.rng(seed, streams.NOISE)
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
    y: FloatArray = (f32(1.0) - np.exp(Ad * f32(1.0 / a0))) * f32(1.0 / (1.0 - math.exp(-3.2 / a0)))
    y = np.sign(y) * np.abs(y) ** f32(gamma)
    y = f32(lo) + f32(hi - lo) * y + f32(e_noise) * rn.standard_normal((H, W), dtype=f32)
    return y.astype(np.float64)


def _marker_mask(text: str, w: int, h: int) -> FloatArray:
    from PIL import Image, ImageDraw, ImageFont

    size = 48
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        font = ImageFont.load_default()
    img = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(img).text((size // 4, size // 4), text, fill=255, font=font)
    bb = img.getbbox() or (0, 0, img.width, img.height)
    glyph = img.crop(bb).resize((max(1, int(w * 0.8)), max(1, int(h * 0.8))), Image.Resampling.BILINEAR)
    out = np.zeros((h, w))
    gy, gx = (h - glyph.height) // 2, (w - glyph.width) // 2
    out[gy : gy + glyph.height, gx : gx + glyph.width] = np.asarray(glyph, float) / 255.0
    return out


def finish(seed: int, sc: Scene, y: FloatArray) -> NDArray[np.uint16]:
    H, W = sc.H, sc.W
    rf = streams.rng(seed, streams.FRAME + 100)
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
        outside += (
            0.3
            * b["level"]
            * ndimage.gaussian_filter(rf.standard_normal((H // 16 + 1, W // 16 + 1)), 2)[
                np.arange(H)[:, None] // 16, np.arange(W)[None, :] // 16
            ]
        )
    else:
        outside = b["level"] + 0.002 * rf.standard_normal((H, W))
    y = alpha * y + (1 - alpha) * outside
    mx0, my0, mx1, my1 = sc.marker["box"]
    m = _marker_mask(sc.marker["text"], mx1 - mx0, my1 - my0)
    region = y[my0:my1, mx0:mx1]
    y[my0:my1, mx0:mx1] = region * (1 - m) + sc.marker["level"] * m
    maxv = (1 << sc.bits) - 1
    counts: FloatArray = np.rint(y * maxv)
    return np.clip(counts, 0, maxv).astype(np.uint16)
