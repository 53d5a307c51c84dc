"""Layouts of the limb regions: forearm, wrist, hand, elbow, humerus, femur, knee, lower leg, ankle, foot.

Long bones are tubes that flare into trabecular ends; hand, wrist and foot add sets of small
bones. See `phantoms` for the frame a layout is drawn in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .primitives import FloatArray, Jitter, Layout, Point, Prim, blob, long_bone, soft_blob, soft_tube


def forearm_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.05)
    r = j(0.042, 0.006)
    bones: list[Prim] = [
        long_bone((j(cx + 0.02, 0.02), -0.35), (cx, h * 0.03), 0.06, flare1=2.3, name="humerus"),
        long_bone(
            (cx + 0.075, h * 0.08),
            (j(cx + 0.13, 0.02), h * 0.93),
            r,
            flare0=1.35,
            flare1=1.75,
            name="radius",
            frac_weight=0.6,
            frac_range=(0.25, 0.9),
        ),
        long_bone(
            (cx - 0.06, h * 0.02),
            (j(cx - 0.09, 0.02), h * 0.92),
            r * 0.95,
            flare0=1.9,
            flare1=1.25,
            name="ulna",
            frac_weight=0.4,
            frac_range=(0.25, 0.85),
        ),
    ]
    for k in range(4):
        bones.append(blob((cx - 0.1 + 0.075 * k, h * 0.985 + j(0, 0.01)), 0.035, 0.028, j(0, 20)))
    soft: list[Prim] = [soft_tube([(cx, -0.2), (cx, h * 0.5), (cx + 0.02, h + 0.2)], [0.33, 0.28, 0.22])]
    return Layout(bones, soft, r)


def wrist_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.42 + j(0, 0.03)
    rr = j(0.06, 0.008)
    bones: list[Prim] = [
        long_bone(
            (cx + 0.09, -0.3),
            (cx + 0.12, yj),
            rr,
            flare1=1.75,
            name="radius",
            frac_weight=0.55,
            frac_range=(0.72, 0.93),
        ),
        long_bone(
            (cx - 0.12, -0.3),
            (cx - 0.12, yj - 0.02),
            rr * 0.72,
            flare1=1.25,
            name="ulna",
            frac_weight=0.12,
            frac_range=(0.7, 0.93),
        ),
    ]
    row1 = yj + 0.14
    bones.append(
        blob((cx + 0.15, row1 + 0.01), 0.075, 0.038, -55 + j(0, 8), name="scaphoid", frac_weight=0.15, cortex=0.25)
    )
    for x, name in ((cx + 0.02, "lunate"), (cx - 0.09, "triquetrum"), (cx - 0.17, "pisiform")):
        bones.append(blob((x, row1 + j(0, 0.01)), j(0.055, 0.006), j(0.045, 0.005), j(0, 15), name=name))
    row2 = row1 + 0.115
    distal = ((cx + 0.16, "trapezium"), (cx + 0.07, "trapezoid"), (cx - 0.03, "capitate"), (cx - 0.13, "hamate"))
    for x, name in distal:
        bones.append(blob((x, row2 + j(0, 0.01)), j(0.05, 0.006), j(0.045, 0.005), j(0, 15), name=name))
    base = row2 + 0.1
    for k, (x, ang) in enumerate(((cx + 0.22, 35), (cx + 0.1, 8), (cx - 0.0, 0), (cx - 0.1, -6), (cx - 0.19, -14))):
        a = math.radians(ang + j(0, 3))
        L = 0.55 if k else 0.35
        bones.append(
            long_bone(
                (x, base),
                (x + L * math.sin(a), base + L * math.cos(a)),
                0.028,
                flare0=1.35,
                flare1=1.3,
                name=f"metacarpal{k + 1}",
                frac_weight=0.035,
                frac_range=(0.15, 0.6),
            )
        )
    soft: list[Prim] = [
        soft_tube([(cx, -0.3), (cx, yj), (cx + 0.02, h + 0.3)], [0.3, 0.3, 0.34]),
        soft_tube([(cx + 0.22, base), (cx + 0.45, h + 0.2)], 0.07, weight=0.8),
    ]
    return Layout(bones, soft, rr * 0.8)


def _finger(
    base: Point,
    ang_deg: float,
    lens: FloatArray,
    rads: FloatArray,
    j: Jitter,
    name: str,
    wts: Sequence[float],
) -> list[Prim]:
    out: list[Prim] = []
    a = math.radians(ang_deg)
    d = np.array([math.sin(a), -math.cos(a)])
    p = np.asarray(base, float)
    for i, (L, r) in enumerate(zip(lens, rads, strict=True)):
        q = p + d * L
        out.append(
            long_bone(
                p,
                q,
                r,
                flare0=1.45,
                flare1=1.3,
                cortex=0.38,
                flare_len=1.6 * r,
                name=f"{name}{i}",
                frac_weight=wts[i],
                frac_range=(0.25, 0.75),
            )
        )
        p = q + d * (0.022 + j(0, 0.004))
    return out


def hand_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.03)
    yb = h * 0.8 + j(0, 0.02)
    sc = j(1.0, 0.05)
    bones: list[Prim] = []
    soft: list[Prim] = [
        soft_blob((cx + 0.02, yb - 0.12), 0.3 * sc, 0.28 * sc, 0, 1.0),
        soft_tube([(cx, yb), (cx, h + 0.3)], 0.26),
    ]
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
        soft.append(soft_tube([mid, tip], 0.052 * sc, weight=0.85))
    tb = (cx - 0.24 * sc, yb + 0.02)
    tang = -42 + j(0, 5)
    bones += _finger(
        tb, tang, np.array([0.2, 0.14, 0.1]) * sc, np.array([0.03, 0.026, 0.021]) * sc, j, "thumb", (0.06, 0.04, 0.02)
    )
    a = math.radians(tang)
    soft.append(soft_tube([tb, np.array(tb) + np.array([math.sin(a), -math.cos(a)]) * 0.5 * sc], 0.065 * sc, 0.9))
    for k in range(4):
        c1 = (cx - 0.13 + 0.09 * k, yb + 0.08 + j(0, 0.01))
        bones.append(blob(c1, 0.045 * sc, 0.035 * sc, j(0, 20), name=f"carpal_distal{k}"))
        c2 = (cx - 0.11 + 0.08 * k, yb + 0.16 + j(0, 0.01))
        bones.append(blob(c2, 0.042 * sc, 0.035 * sc, j(0, 20), name=f"carpal_proximal{k}"))
    return Layout(bones, soft, 0.026)


def elbow_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.5 + j(0, 0.04)
    bones: list[Prim] = [
        long_bone(
            (j(cx, 0.03), -0.4), (cx, yj), 0.065, flare1=2.5, name="humerus", frac_weight=0.4, frac_range=(0.7, 0.9)
        ),
        long_bone(
            (cx + 0.12, yj + 0.07),
            (j(cx + 0.16, 0.03), h + 0.5),
            0.045,
            flare0=1.45,
            name="radius",
            frac_weight=0.35,
            frac_range=(0.04, 0.2),
        ),
        long_bone(
            (cx - 0.07, yj - 0.06),
            (j(cx - 0.09, 0.03), h + 0.5),
            0.05,
            flare0=2.0,
            name="ulna",
            frac_weight=0.25,
            frac_range=(0.08, 0.3),
        ),
    ]
    soft: list[Prim] = [soft_tube([(cx, -0.3), (cx, yj), (cx + 0.03, h + 0.3)], [0.36, 0.38, 0.33])]
    return Layout(bones, soft, 0.055)


def humerus_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    top = h * 0.1 + j(0, 0.03)
    r = j(0.055, 0.006)
    bones: list[Prim] = [
        blob((cx + 0.05, top), 0.12, 0.13, 0, cortex=0.12, marrow=0.5, name="head"),
        long_bone(
            (cx + 0.03, top + 0.02),
            (j(cx, 0.02), h * 0.93),
            r,
            flare0=1.9,
            flare1=2.2,
            name="humerus",
            frac_weight=1.0,
            frac_range=(0.2, 0.82),
        ),
        blob((cx - 0.17, top + 0.02), 0.05, 0.14, 8, cortex=0.2, marrow=0.35, name="glenoid"),
        blob((cx - 0.35, top + 0.2), 0.22, 0.3, 10, cortex=0.08, marrow=0.3, name="scapula"),
        long_bone((cx + 0.06, h * 0.97), (cx + 0.1, h + 0.4), 0.04, flare0=1.4, name="radius"),
        long_bone((cx - 0.06, h * 0.95), (cx - 0.08, h + 0.4), 0.045, flare0=1.8, name="ulna"),
    ]
    soft: list[Prim] = [
        soft_tube([(cx, -0.1), (cx, h * 0.5), (cx, h + 0.2)], [0.42, 0.33, 0.3]),
        soft_blob((cx - 0.3, top), 0.45, 0.3, 0, 0.9),
    ]
    return Layout(bones, soft, r)


def femur_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    hy = 0.08 * h + j(0, 0.02)
    r = j(0.06, 0.006)
    bones: list[Prim] = [
        blob((cx - 0.12, hy), 0.085, 0.085, 0, cortex=0.12, marrow=0.5, name="femoral head"),
        long_bone((cx - 0.12, hy), (cx, hy + 0.1), 0.05, name="femoral neck", cortex=0.3),
        blob((cx + 0.08, hy + 0.05), 0.06, 0.08, 0, cortex=0.15, marrow=0.45, name="trochanter"),
        long_bone(
            (cx + 0.02, hy + 0.05),
            (j(cx + 0.03, 0.02), h * 0.93),
            r,
            flare0=1.3,
            flare1=2.3,
            name="femur",
            frac_weight=1.0,
            frac_range=(0.18, 0.85),
        ),
        long_bone((cx + 0.03, h * 0.99), (cx + 0.03, h + 0.5), 0.07, flare0=2.1, name="tibia"),
        blob((cx - 0.3, hy - 0.05), 0.2, 0.14, 20, cortex=0.07, marrow=0.3, name="ilium"),
    ]
    soft: list[Prim] = [soft_tube([(cx, -0.2), (cx, h * 0.5), (cx, h + 0.2)], [0.44, 0.38, 0.3])]
    return Layout(bones, soft, r)


def knee_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.47 + j(0, 0.03)
    bones: list[Prim] = [
        long_bone(
            (j(cx, 0.02), -0.4),
            (cx, yj - 0.03),
            0.075,
            flare1=2.35,
            name="femur",
            frac_weight=0.3,
            frac_range=(0.62, 0.82),
        ),
        blob((cx + j(0, 0.02), yj - 0.12), 0.09, 0.11, 0, cortex=0.15, marrow=0.45, name="patella", frac_weight=0.2),
        long_bone(
            (cx, yj + 0.05),
            (j(cx, 0.02), h + 0.5),
            0.07,
            flare0=2.4,
            name="tibia",
            frac_weight=0.35,
            frac_range=(0.02, 0.25),
        ),
        long_bone(
            (cx + 0.18, yj + 0.11),
            (j(cx + 0.21, 0.02), h + 0.5),
            0.028,
            flare0=1.7,
            name="fibula",
            frac_weight=0.15,
            frac_range=(0.05, 0.3),
        ),
    ]
    soft: list[Prim] = [soft_tube([(cx, -0.3), (cx, yj), (cx, h + 0.3)], [0.42, 0.4, 0.36])]
    return Layout(bones, soft, 0.07)


def tibia_fibula_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    r = j(0.062, 0.006)
    bones: list[Prim] = [
        long_bone(
            (cx - 0.04, 0.03 * h),
            (j(cx - 0.03, 0.02), 0.96 * h),
            r,
            flare0=2.0,
            flare1=1.6,
            name="tibia",
            frac_weight=0.6,
            frac_range=(0.2, 0.85),
        ),
        long_bone(
            (cx + 0.15, 0.07 * h),
            (j(cx + 0.16, 0.02), 0.985 * h),
            0.026,
            flare0=1.6,
            flare1=1.6,
            name="fibula",
            frac_weight=0.4,
            frac_range=(0.2, 0.9),
        ),
        long_bone((cx - 0.03, -0.5), (cx - 0.02, 0.0), 0.07, flare1=2.2, name="femur"),
        blob((cx, h + 0.04), 0.13, 0.06, 0, cortex=0.15, marrow=0.45, name="talus"),
    ]
    soft: list[Prim] = [soft_tube([(cx, -0.2), (cx + 0.02, h * 0.35), (cx, h + 0.2)], [0.34, 0.34, 0.2])]
    return Layout(bones, soft, r)


def ankle_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.04)
    yj = h * 0.5 + j(0, 0.03)
    bones: list[Prim] = [
        long_bone(
            (j(cx - 0.04, 0.02), -0.4),
            (cx - 0.04, yj),
            0.085,
            flare1=1.55,
            name="tibia",
            frac_weight=0.3,
            frac_range=(0.7, 0.9),
        ),
        blob((cx - 0.15, yj + 0.05), 0.05, 0.07, 10, cortex=0.2, marrow=0.45, name="medial malleolus", frac_weight=0.2),
        long_bone(
            (j(cx + 0.2, 0.02), -0.4),
            (cx + 0.17, yj + 0.1),
            0.036,
            flare1=1.45,
            name="fibula",
            frac_weight=0.5,
            frac_range=(0.72, 0.93),
        ),
        blob((cx, yj + 0.11), 0.15, 0.09, 0, cortex=0.15, marrow=0.45, power=2.5, name="talus"),
        blob((cx + 0.02, yj + 0.28), 0.17, 0.1, 0, cortex=0.12, marrow=0.45, name="calcaneus"),
        blob((cx - 0.1, yj + 0.25), 0.07, 0.06, 20, cortex=0.2, marrow=0.45, name="navicular"),
    ]
    soft: list[Prim] = [soft_tube([(cx, -0.3), (cx, yj), (cx + 0.02, h + 0.3)], [0.3, 0.33, 0.36])]
    return Layout(bones, soft, 0.06)


def foot_layout(w: float, h: float, j: Jitter) -> Layout:
    cx = w / 2 + j(0, 0.03)
    yb = h * 0.62 + j(0, 0.02)
    bones: list[Prim] = [
        blob((cx + 0.02, yb + 0.42), 0.13, 0.16, 0, cortex=0.1, marrow=0.45, name="calcaneus"),
        blob((cx - 0.02, yb + 0.26), 0.12, 0.09, 0, cortex=0.13, marrow=0.45, name="talus"),
        blob((cx - 0.08, yb + 0.12), 0.09, 0.05, -10, cortex=0.2, marrow=0.45, name="navicular"),
        blob((cx + 0.1, yb + 0.14), 0.07, 0.07, 0, cortex=0.2, marrow=0.45, name="cuboid"),
    ]
    for k in range(3):
        bones.append(blob((cx - 0.12 + 0.07 * k, yb + 0.03), 0.035, 0.05, 0, cortex=0.2, marrow=0.45))
    toes: list[tuple[float, float, float, float]] = [  # dx, angle (degrees), length and thickness scales
        (-0.15, -7, 1.0, 1.35),
        (-0.06, -2, 1.05, 1.0),
        (0.02, 2, 1.0, 0.95),
        (0.1, 6, 0.95, 0.9),
        (0.18, 11, 0.85, 0.9),
    ]
    soft: list[Prim] = [soft_tube([(cx, yb + 0.5), (cx, yb), (cx - 0.01, yb - 0.3)], [0.22, 0.27, 0.28])]
    for k, (dx, ang, ln, th) in enumerate(toes):
        base = (cx + dx, yb - 0.02 + abs(dx) * 0.2)
        ang += j(0, 2)
        lens = np.array([0.3, 0.1, 0.06, 0.05][: 3 if k == 0 else 4]) * ln
        lens[0] = 0.3 * ln
        rads = np.array([0.026, 0.022, 0.019, 0.016][: len(lens)]) * th
        bones += _finger(base, ang, lens, rads, j, f"ray{k + 1}_", (0.2, 0.03, 0.02, 0.01) if k else (0.15, 0.06, 0.03))
        a = math.radians(ang)
        tip = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * (lens.sum() + 0.08)
        mid = np.array(base) + np.array([math.sin(a), -math.cos(a)]) * lens[0]
        soft.append(soft_tube([mid, tip], 0.05 * th, weight=0.85))
    return Layout(bones, soft, 0.03)
