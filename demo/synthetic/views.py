"""Exam views of the wrist, hand and ankle (frontal, lateral, oblique): the limb turned about its long axis.

A view is what the image shows, never a flag: each bone gets a depth ``z`` (its distance in front of
or behind the frontal plane) and turning the limb by ``theta`` about its long, vertical axis projects a
point (x, y, z) of the layout to ``x' = axis + (x - axis) cos(theta) + z sin(theta)``. So

* frontal (theta = 0) is the layout exactly as drawn (pixel-identical to no view at all),
* lateral (theta 82-90 deg) superimposes radius and ulna, tibia and fibula, the carpals and the
  fingers (a tight fan); the thumb swings out in front, the calcaneus and the foot show in profile,
* oblique (theta 48-60 deg, x compressed to about 0.5-0.67; the ankle 30-42 deg) lies between: bones
  partly overlap, the small bones are rotated, the foot is foreshortened.

Flared bone ends, the carpals' and tarsals' outlines and the soft-tissue envelope take their depth
into account (a wrist is flatter than it is wide). The ankle's foot bones (cuboid, cuneiforms,
metatarsals) point at the viewer in the frontal view and only show once the limb turns. Every draw
comes from the view's own stream, so no other stream of a seed is consumed differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import streams
from .primitives import Blob, Layout, Prim, Tube, blob, long_bone, soft_tube

VIEWS: dict[str, tuple[str, ...]] = {
    "ankle": ("frontal", "lateral", "oblique"),
    "hand": ("frontal", "lateral", "oblique"),
    "wrist": ("frontal", "lateral", "oblique"),
}
REGIONS_WITH_VIEWS: tuple[str, ...] = tuple(VIEWS)

VIEW_STREAM = 0x71E7  # the view's own stream: no stream of `streams` is touched
_TURN_DEG = {"lateral": (82.0, 90.0), "oblique": (48.0, 60.0)}
_ANKLE_OBLIQUE_DEG = (30.0, 42.0)  # the foot stays foreshortened, the fibula comes clear of the tibia
_SPIN_DEG = 22.0  # small bones seen from the side rotate in the image by up to this much
_Z_JITTER = 0.008


def check_view(region: str, view: str | None) -> None:
    """A clear error for a view the region does not have (every region has no view: None)."""
    if view is None:
        return
    allowed = VIEWS.get(region)
    if allowed is None:
        raise ValueError(
            f"region {region!r} has no exam views; views exist for {', '.join(REGIONS_WITH_VIEWS)} "
            f"({', '.join(VIEWS[REGIONS_WITH_VIEWS[0]])})"
        )
    if view not in allowed:
        raise ValueError(f"unknown view {view!r} for region {region!r}; expected one of {', '.join(allowed)}")


def pick_region(seed: int) -> str:
    """The region of a seed asked for a view without a region: one that has views."""
    rng = np.random.default_rng([int(seed), VIEW_STREAM, 1])
    return REGIONS_WITH_VIEWS[int(rng.integers(len(REGIONS_WITH_VIEWS)))]


@dataclass(frozen=True)
class Turn:
    """A rotation of the limb by ``theta`` about the vertical line x = ``axis``; ``facing`` -1 turns it the other way."""

    axis: float
    theta: float
    facing: float = 1.0

    @property
    def sin(self) -> float:
        return math.sin(self.theta)

    @property
    def cos(self) -> float:
        return math.cos(self.theta)

    def x(self, x: Any, z: Any) -> Any:
        """x after the turn of points at (x, z): a float for floats, an array for arrays."""
        return self.axis + (np.asarray(x) - self.axis) * self.cos + self.facing * np.asarray(z) * self.sin

    def width(self, flat: float) -> float:
        """Seen width of a section whose depth is ``flat`` times its frontal width."""
        return math.hypot(self.cos, flat * self.sin)


@dataclass(frozen=True)
class Pose:
    """Where a bone lies in depth, and how it looks from the side.

    z: depth at the bone's first point (tubes) or centre (blobs); z_end: depth at a tube's last
    point (linear along it), else ``z + slope * distance along direction from origin`` (a ray
    such as the thumb swinging forward). depth: a blob's semi-axis along the beam in the frontal
    view (its half-width from the side; None: as wide as it is deep). turned_angle: a blob's
    in-plane angle (deg) from the side (None: a random spin). dy: vertical shift from the side.
    flat: depth / width of a tube's flared ends. frac_weight: how often a fracture lands on the bone.
    """

    z: float = 0.0
    z_end: float | None = None
    slope: float = 0.0
    origin: tuple[float, float] | None = None
    direction: tuple[float, float] | None = None
    depth: float | None = None
    turned_angle: float | None = None
    dy: float = 0.0
    flat: float = 1.0
    frac_weight: float | None = None


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    n = float(np.hypot(*v))
    return np.asarray(v / n) if n > 1e-12 else np.array([0.0, 1.0])


def _tube_depth(t: Tube, pose: Pose, dz: float) -> NDArray[np.float64]:
    if pose.z_end is not None:
        d = t.pts[-1] - t.pts[0]
        along = ((t.pts - t.pts[0]) @ d) / max(float(d @ d), 1e-12)
        return np.asarray(pose.z + dz + (pose.z_end - pose.z) * along)
    o = np.asarray(pose.origin if pose.origin is not None else t.pts[0], float)
    d = _unit(np.asarray(pose.direction, float)) if pose.direction is not None else _unit(t.pts[-1] - t.pts[0])
    return np.asarray(pose.z + dz + pose.slope * ((t.pts - o) @ d))


def _turn_bone(b: Prim, pose: Pose, turn: Turn, rng: np.random.Generator) -> tuple[Prim, NDArray[np.float64]]:
    """The bone seen after the turn, and its frontal points with their depth (x, y, z) for the soft tissue."""
    dz = float(rng.uniform(-_Z_JITTER, _Z_JITTER))
    spin = math.radians(float(rng.uniform(-_SPIN_DEG, _SPIN_DEG)))
    fw = b.frac_weight if pose.frac_weight is None else pose.frac_weight
    if isinstance(b, Tube):
        z = _tube_depth(b, pose, dz)
        pts = np.column_stack([turn.x(b.pts[:, 0], z), b.pts[:, 1] + pose.dy * turn.sin])
        rmin = float(b.radius.min())
        radius = rmin + (b.radius - rmin) * turn.width(pose.flat)
        cloud = np.column_stack([b.pts, z])
        return replace(b, pts=pts, radius=radius, frac_weight=fw), cloud
    zc = pose.z + dz
    centre = np.array([float(turn.x(b.center[0], zc)), b.center[1] + pose.dy * turn.sin])
    a = math.hypot(b.a * turn.cos, (pose.depth if pose.depth is not None else b.a) * turn.sin)
    if pose.turned_angle is not None:
        angle = b.angle + (math.radians(turn.facing * pose.turned_angle) - b.angle) * turn.sin**2
    else:
        angle = b.angle + spin * turn.sin
    cloud = np.array([[b.center[0], b.center[1], zc]])
    return replace(b, center=centre, a=a, angle=angle, frac_weight=fw), cloud


def _turn_soft(p: Prim, flat: float, turn: Turn, cloud: NDArray[np.float64]) -> Prim:
    """Soft tissue follows the depth of the nearest bone point; ``flat`` = its depth / width."""

    def depth_at(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        d2 = ((xy[:, None, :] - cloud[None, :, :2]) ** 2).sum(-1)
        return np.asarray(cloud[np.argmin(d2, axis=1), 2])

    if isinstance(p, Tube):
        z = depth_at(p.pts)
        pts = np.column_stack([turn.x(p.pts[:, 0], z), p.pts[:, 1]])
        return replace(p, pts=pts, radius=p.radius * turn.width(flat))
    zc = float(depth_at(p.center[None, :])[0])
    return replace(p, center=np.array([float(turn.x(p.center[0], zc)), p.center[1]]), a=p.a * turn.width(flat))


def _turn_all(
    bones: list[Prim], poses: list[Pose], turn: Turn, rng: np.random.Generator
) -> tuple[list[Prim], NDArray[np.float64]]:
    out: list[Prim] = []
    clouds = []
    for b, pose in zip(bones, poses, strict=True):
        nb, c = _turn_bone(b, pose, turn, rng)
        out.append(nb)
        clouds.append(c)
    return out, np.vstack(clouds)


def _by_name(bones: list[Prim]) -> dict[str, Prim]:
    return {b.name: b for b in bones if b.name}


_WRIST_POSES = {
    "radius": Pose(flat=0.6),
    "ulna": Pose(z=-0.03, flat=0.8),
    "scaphoid": Pose(z=-0.02),
    "lunate": Pose(),
    "triquetrum": Pose(z=0.025),
    "pisiform": Pose(z=-0.05),
    "trapezium": Pose(z=-0.045),
    "trapezoid": Pose(z=-0.015),
    "capitate": Pose(),
    "hamate": Pose(z=0.015),
    "metacarpal1": Pose(z=-0.05, slope=-0.6),  # the thumb swings forward, out of the bundle
    "metacarpal2": Pose(z=-0.012),
    "metacarpal3": Pose(),
    "metacarpal4": Pose(z=0.01),
    "metacarpal5": Pose(z=0.022),
}


def _wrist(lay: Layout, turn: Turn, rng: np.random.Generator) -> Layout:
    bones, cloud = _turn_all(lay.bones, [_WRIST_POSES.get(b.name, Pose()) for b in lay.bones], turn, rng)
    soft = [_turn_soft(lay.soft[0], 0.75, turn, cloud), *(_turn_soft(p, 1.0, turn, cloud) for p in lay.soft[1:])]
    return Layout(bones, soft, lay.ref_radius)


_FINGER_FAN = 0.085  # dz per unit length between neighbouring fingers: a tight lateral fan


def _hand_pose(b: Prim, named: dict[str, Prim], rng: np.random.Generator) -> Pose:
    if b.name.startswith("finger"):
        k = int(b.name[len("finger")]) - 3.5  # index -1.5 ... little +1.5
        ray = named[b.name.split("_")[0] + "_0"]
        assert isinstance(ray, Tube)
        origin = (float(ray.pts[0, 0]), float(ray.pts[0, 1]))
        direction = tuple(float(v) for v in ray.pts[-1] - ray.pts[0])
        return Pose(z=0.012 * k, slope=_FINGER_FAN * k, origin=origin, direction=direction)  # type: ignore[arg-type]
    if b.name.startswith("thumb"):
        ray = named["thumb0"]
        assert isinstance(ray, Tube)
        origin = (float(ray.pts[0, 0]), float(ray.pts[0, 1]))
        direction = tuple(float(v) for v in ray.pts[-1] - ray.pts[0])
        return Pose(z=-0.06, slope=-0.6, origin=origin, direction=direction)  # type: ignore[arg-type]
    return Pose(z=float(rng.uniform(-0.05, 0.05)))  # carpals


def _hand(lay: Layout, turn: Turn, rng: np.random.Generator) -> Layout:
    named = _by_name(lay.bones)
    poses = [_hand_pose(b, named, rng) for b in lay.bones]
    bones, cloud = _turn_all(lay.bones, poses, turn, rng)
    palm, forearm, *digits = lay.soft
    soft = [_turn_soft(palm, 0.35, turn, cloud), _turn_soft(forearm, 0.7, turn, cloud)]
    soft += [_turn_soft(p, 1.0, turn, cloud) for p in digits]
    return Layout(bones, soft, lay.ref_radius)


_ANKLE_POSES = {
    "tibia": Pose(flat=0.85),
    "medial malleolus": Pose(z=0.01),
    "fibula": Pose(z=-0.06, flat=0.9),
    "talus": Pose(z=0.03, depth=0.17, turned_angle=-5.0, dy=-0.01, frac_weight=0.1),
    "calcaneus": Pose(z=-0.1, depth=0.26, turned_angle=-18.0, frac_weight=0.3),
    "navicular": Pose(z=0.22, depth=0.05, turned_angle=70.0, dy=-0.07),
}


def _foot_bones(ax: float, yj: float, rng: np.random.Generator) -> tuple[list[Prim], list[Pose]]:
    """Cuboid, cuneiforms and metatarsals: they point at the viewer until the limb turns."""

    def j(v: float, amt: float) -> float:
        return float(v + rng.uniform(-amt, amt))

    bones: list[Prim] = [
        blob((ax + 0.05, yj + 0.3), 0.05, 0.05, cortex=0.2, marrow=0.45, name="cuboid"),
        blob((ax - 0.05, yj + 0.2), 0.06, 0.05, cortex=0.2, marrow=0.45, name="cuneiforms"),
    ]
    poses = [
        Pose(z=j(0.31, 0.02), depth=0.075, turned_angle=-15.0),
        Pose(z=j(0.36, 0.02), depth=0.07, turned_angle=-25.0),
    ]
    for k in range(3):
        y0 = yj + 0.25 + 0.025 * k
        bones.append(
            long_bone(
                (ax - 0.07 + 0.07 * k, y0),
                (ax - 0.09 + 0.09 * k, y0 + j(0.1, 0.02)),
                j(0.022, 0.003),
                flare0=1.4,
                flare1=1.35,
                cortex=0.38,
                flare_len=0.05,
                name=f"metatarsal{k + 1}",
                frac_weight=0.05,
                frac_range=(0.25, 0.75),
            )
        )
        poses.append(Pose(z=0.44, z_end=j(0.9, 0.04)))
    return bones, poses


def _ankle(lay: Layout, turn: Turn, rng: np.random.Generator, h: float) -> Layout:
    leg_tube = lay.soft[0]
    assert isinstance(leg_tube, Tube)
    ax = float(leg_tube.pts[0, 0])
    talus = _by_name(lay.bones)["talus"]
    assert isinstance(talus, Blob)
    yj = float(talus.center[1]) - 0.11
    extra, extra_poses = _foot_bones(ax, yj, rng)
    poses = [_ANKLE_POSES.get(b.name, Pose()) for b in lay.bones] + extra_poses
    bones, _ = _turn_all(lay.bones + extra, poses, turn, rng)
    # the leg ends at the heel once the foot turns sideways; the foot is a tube from heel to toes
    bottom = (h + 0.3) + ((yj + 0.3) - (h + 0.3)) * turn.sin
    leg = soft_tube([(ax, -0.3), (ax, yj), (ax, bottom)], np.array([0.3, 0.33, 0.34]) * turn.width(0.85))
    heel, toes = float(turn.x(ax, -0.32)), float(turn.x(ax, 1.4))
    foot = soft_tube([(heel, yj + 0.27), (toes, yj + 0.4)], [0.14, 0.09], weight=0.95)
    return Layout(bones, [leg, foot], lay.ref_radius)


_PROJECTORS: dict[str, Callable[[Layout, Turn, np.random.Generator, float], Layout]] = {
    "wrist": lambda lay, turn, rng, h: _wrist(lay, turn, rng),
    "hand": lambda lay, turn, rng, h: _hand(lay, turn, rng),
    "ankle": _ankle,
}


def view_layout(seed: int, region: str, view: str | None, lay: Layout, h: float) -> Layout:
    """The layout as the view shows it (layout units; ``h`` = the layout frame's height)."""
    check_view(region, view)
    if view is None or view == "frontal":
        return lay
    rng = streams.rng(seed, VIEW_STREAM)
    turn_deg = _ANKLE_OBLIQUE_DEG if (region, view) == ("ankle", "oblique") else _TURN_DEG[view]
    theta = math.radians(float(rng.uniform(*turn_deg)))
    axis_tube = lay.soft[1] if region == "hand" else lay.soft[0]
    assert isinstance(axis_tube, Tube)
    # the ankle turns its fibula out of the tibia's shadow in the oblique (a mortise-like view)
    facing = -1.0 if region == "ankle" else 1.0
    return _PROJECTORS[region](lay, Turn(float(axis_tube.pts[0, 0]), theta, facing), rng, h)
