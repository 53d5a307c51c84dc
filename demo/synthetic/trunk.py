"""Layouts of the trunk and girdle regions: shoulder, clavicle, ribs, spine, pelvis, hip.

Overlapping flat bones, ribs and vertebrae: the regions where a fracture is one small line among
many bones. See `phantoms` for the frame a layout is drawn in.
"""

from __future__ import annotations

from .primitives import Jitter, Layout, Prim, blob, curve, long_bone, soft_blob, soft_tube


def _ribs(
    x0: float, y0: float, n: int, dy: float, span: float, j: Jitter, weight: float = 0.0, side: int = 1, r: float = 0.02
) -> list[Prim]:
    out: list[Prim] = []
    for i in range(n):
        y = y0 + i * dy + j(0, 0.01)
        rr = r * j(1.0, 0.08)
        out.append(
            curve(
                [(x0, y), (x0 + side * span * 0.7, y - 0.14), (x0 + side * span, y + 0.2 + 0.02 * i)],
                [rr, rr * 1.1, rr * 0.9],
                cortex=0.4,
                marrow=0.2,
                n=16,
                name=f"rib{i + 1}",
                frac_weight=weight,
                frac_range=(0.3, 0.85),
            )
        )
    return out


def _vertebrae(cx: float, y0: float, n: int, hgt: float, wid: float, j: Jitter, frac_weight: float = 0.0) -> list[Prim]:
    out: list[Prim] = []
    y = y0
    for i in range(n):
        hh = hgt * j(1.0, 0.05)
        ww = wid * (1 + 0.03 * i) * j(1.0, 0.03)
        c = (cx + j(0, 0.01), y + hh / 2)
        out.append(
            blob(
                c,
                ww / 2,
                hh / 2,
                j(0, 3),
                cortex=0.14,
                marrow=0.45,
                power=3.5,
                name=f"vertebra{i + 1}",
                frac_weight=frac_weight,
            )
        )
        for s in (-1, 1):
            out.append(
                blob(
                    (c[0] + s * ww * 0.3, c[1] - hh * 0.05),
                    ww * 0.09,
                    hh * 0.24,
                    0,
                    cortex=0.45,
                    marrow=0.2,
                    name="pedicle",
                )
            )
            out.append(
                long_bone(
                    (c[0] + s * ww * 0.42, c[1] - hh * 0.1),
                    (c[0] + s * ww * 0.85, c[1] - hh * 0.18),
                    hh * 0.12,
                    name=f"transverse{i + 1}",
                    frac_weight=frac_weight * 0.15,
                    frac_range=(0.3, 0.7),
                )
            )
        out.append(blob((c[0], c[1] + hh * 0.15), ww * 0.07, hh * 0.33, 0, cortex=0.4, marrow=0.3, name="spinous"))
        y += hh + hgt * 0.32 * j(1.0, 0.1)
    return out


def shoulder_layout(w: float, h: float, j: Jitter) -> Layout:
    hx = w * 0.58 + j(0, 0.04)
    hy = 0.42 + j(0, 0.03)
    bones: list[Prim] = [
        blob((hx, hy), 0.16, 0.165, 0, cortex=0.1, marrow=0.5, name="head"),
        long_bone(
            (hx - 0.02, hy + 0.05),
            (hx - 0.05, 1.6),
            0.075,
            flare0=1.9,
            name="humerus",
            frac_weight=0.5,
            frac_range=(0.04, 0.22),
        ),
        blob((hx - 0.19, hy), 0.05, 0.15, 5, cortex=0.2, marrow=0.35, name="glenoid"),
        blob((hx - 0.42, hy + 0.25), 0.28, 0.38, 15, cortex=0.07, marrow=0.3, name="scapula"),
        curve([(hx - 0.75, 0.32), (hx - 0.3, 0.2), (hx + 0.05, 0.17)], 0.035, name="scapular spine"),
        blob((hx - 0.05, 0.16), 0.12, 0.045, -5, cortex=0.25, marrow=0.4, name="acromion"),
        curve(
            [(hx - 1.2, 0.25), (hx - 0.6, 0.02), (hx - 0.35, 0.2), (hx - 0.08, 0.1)],
            0.038,
            cortex=0.38,
            name="clavicle",
            frac_weight=0.5,
            frac_range=(0.35, 0.8),
        ),
        blob((hx - 0.22, hy - 0.16), 0.06, 0.03, 30, cortex=0.3, marrow=0.4, name="coracoid"),
    ]
    bones += _ribs(hx - 1.1, 0.35, 5, 0.18, 0.75, j)
    soft: list[Prim] = [
        soft_blob((hx - 0.5, 0.7), 0.85, 0.75, 0, 1.0),
        soft_tube([(hx, 0.3), (hx - 0.05, 1.6)], 0.3),
        soft_blob((hx - 0.75, 0.85), 0.4, 0.45, 0, -0.35),
    ]
    return Layout(bones, soft, 0.06)


def clavicle_layout(w: float, h: float, j: Jitter) -> Layout:
    y = 0.42 + j(0, 0.04)
    x0, x1 = 0.1 * w + j(0, 0.03), 0.88 * w + j(0, 0.03)
    bones: list[Prim] = [
        curve(
            [(x0, y + 0.06), (x0 + 0.35 * (x1 - x0), y - 0.14), (x0 + 0.65 * (x1 - x0), y + 0.12), (x1, y - 0.05)],
            [0.05, 0.04, 0.038, 0.045],
            cortex=0.36,
            marrow=0.3,
            n=24,
            name="clavicle",
            frac_weight=1.0,
            frac_range=(0.25, 0.8),
        ),
        blob((x1 + 0.05, y - 0.02), 0.1, 0.045, -8, cortex=0.25, marrow=0.4, name="acromion"),
        blob((x1 + 0.08, y + 0.3), 0.14, 0.15, 0, cortex=0.1, marrow=0.5, name="head"),
        blob((x0 + 0.55 * (x1 - x0), y + 0.45), 0.3, 0.4, 20, cortex=0.07, marrow=0.3, name="scapula"),
    ]
    bones += _vertebrae(x0 - 0.18, -0.1, 5, 0.14, 0.24, j)
    bones += _ribs(x0 - 0.05, 0.1, 6, 0.17, 0.9 * (x1 - x0), j)
    soft: list[Prim] = [
        soft_blob((w / 2, 0.75), w * 0.65, 0.8, 0, 1.0),
        soft_blob((w * 0.5, 0.95), w * 0.3, 0.4, 0, -0.35),
    ]
    return Layout(bones, soft, 0.045)


def ribs_layout(w: float, h: float, j: Jitter) -> Layout:
    sx = 0.12 + j(0, 0.03)
    bones: list[Prim] = _vertebrae(sx - 0.12, -0.05, 9, 0.11, 0.2, j)
    bones += _ribs(sx, 0.08, 10, 0.125 * h / 1.3, 0.78, j, weight=1.0, r=0.021)
    soft: list[Prim] = [
        soft_blob((0.45, h / 2), 0.75, h * 0.62, 0, 1.0),
        soft_blob((0.55, h * 0.5), 0.35, h * 0.42, 0, -0.4),
    ]
    return Layout(bones, soft, 0.022)


def spine_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    bones: list[Prim] = _vertebrae(cx, 0.02 + j(0, 0.03), 7, 0.15 * h / 1.35, 0.32, j, frac_weight=1.0)
    for s in (-1, 1):
        bones += [
            curve([(cx + s * 0.15, -0.05), (cx + s * 0.45, -0.05), (cx + s * 0.6, 0.25)], 0.025, cortex=0.4, name="rib")
        ]
    soft: list[Prim] = [
        soft_blob((cx, h / 2), 0.6, h * 0.75, 0, 1.0),
        soft_tube([(cx - 0.12, h * 0.3), (cx - 0.2, h + 0.1)], 0.08, 0.25),
        soft_tube([(cx + 0.12, h * 0.3), (cx + 0.2, h + 0.1)], 0.08, 0.25),
    ]
    return Layout(bones, soft, 0.05)


def _hemipelvis(
    cx: float, s: int, j: Jitter, *, femur: bool = True, wts: tuple[float, float, float] = (0.3, 0.3, 0.4)
) -> list[Prim]:
    """One side of the pelvis (s = +1 right of the image centre, -1 left)."""
    hx = cx + s * 0.32
    hy = 0.62 + j(0, 0.02)
    out: list[Prim] = [
        blob((cx + s * 0.3, 0.3), 0.24, 0.2, s * 25 + j(0, 4), cortex=0.07, marrow=0.3, name="ilium"),
        blob((hx, hy), 0.09, 0.09, 0, cortex=0.12, marrow=0.5, name="femoral head"),
        curve(
            [(hx - s * 0.04, hy - 0.02), (cx + s * 0.15, 0.66), (cx + s * 0.035, 0.72)],
            0.03,
            name="superior ramus",
            frac_weight=wts[0],
            frac_range=(0.3, 0.75),
        ),
        curve(
            [(cx + s * 0.035, 0.8), (cx + s * 0.15, 0.88), (hx - s * 0.07, 0.76)],
            0.032,
            name="inferior ramus",
            frac_weight=wts[1],
            frac_range=(0.3, 0.75),
        ),
        blob((hx - s * 0.08, 0.78), 0.06, 0.075, 0, cortex=0.2, marrow=0.4, name="ischium"),
        blob((cx + s * 0.02, 0.76), 0.02, 0.06, 0, cortex=0.3, marrow=0.4, name="symphysis"),
    ]
    if femur:
        nx, ny = hx + s * 0.11, hy + 0.1
        out += [
            long_bone(
                (hx, hy), (nx, ny), 0.055, name="femoral neck", frac_weight=wts[2], frac_range=(0.3, 0.75), cortex=0.3
            ),
            blob((nx + s * 0.04, ny - 0.04), 0.06, 0.08, 0, cortex=0.15, marrow=0.45, name="trochanter"),
            long_bone(
                (nx, ny - 0.02),
                (nx - s * 0.02, 1.8),
                0.07,
                flare0=1.5,
                name="femur",
                frac_weight=wts[2] * 0.3,
                frac_range=(0.05, 0.2),
            ),
        ]
    return out


def pelvis_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.03)
    bones: list[Prim] = [
        blob((cx, 0.34), 0.13, 0.2, 0, cortex=0.1, marrow=0.4, power=2.6, name="sacrum"),
    ]
    bones += _vertebrae(cx, -0.25, 2, 0.11, 0.28, j)
    bones += _hemipelvis(cx, 1, j) + _hemipelvis(cx, -1, j)
    soft: list[Prim] = [
        soft_blob((cx, 0.55), 0.68, 0.7, 0, 1.0, power=2.5),
        soft_tube([(cx + 0.42, 0.8), (cx + 0.42, 1.4)], 0.2),
        soft_tube([(cx - 0.42, 0.8), (cx - 0.42, 1.4)], 0.2),
    ]
    return Layout(bones, soft, 0.045)


def hip_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w * 0.2 + j(0, 0.04)
    bones: list[Prim] = _hemipelvis(cx, 1, j, wts=(0.15, 0.1, 0.75))
    bones.append(blob((cx - 0.05, 0.3), 0.13, 0.2, 0, cortex=0.1, marrow=0.4, power=2.6, name="sacrum"))
    soft: list[Prim] = [
        soft_blob((cx + 0.2, 0.55), 0.7, 0.7, 0, 1.0, power=2.4),
        soft_tube([(cx + 0.45, 0.6), (cx + 0.45, h + 0.3)], 0.3),
    ]
    return Layout(bones, soft, 0.05)
