"""The regions and their layouts: which bones and soft tissue a radiograph of each region shows.

A layout is drawn in a frame of w x h layout units (the shorter side is 1) in the region's
natural orientation (portrait: w = 1 <= h, landscape (`LANDSCAPE`): h = 1 <= w); y grows
downward. Each bone carries a `frac_weight` (how often the fracture lands on it) and, for
tubes, the arc-length range where it may. Every jitter comes from the layout stream.
"""

from __future__ import annotations

from collections.abc import Callable

from . import limbs, trunk
from .primitives import Jitter, Layout

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
# Regions whose natural detector orientation is landscape.
LANDSCAPE = frozenset({"pelvis", "clavicle", "shoulder"})

LAYOUTS: dict[str, Callable[[float, float, Jitter], Layout]] = {
    "ankle": limbs.ankle_layout,
    "clavicle": trunk.clavicle_layout,
    "elbow": limbs.elbow_layout,
    "femur": limbs.femur_layout,
    "foot": limbs.foot_layout,
    "forearm": limbs.forearm_layout,
    "hand": limbs.hand_layout,
    "hip": trunk.hip_layout,
    "humerus": limbs.humerus_layout,
    "knee": limbs.knee_layout,
    "pelvis": trunk.pelvis_layout,
    "ribs": trunk.ribs_layout,
    "shoulder": trunk.shoulder_layout,
    "spine": trunk.spine_layout,
    "tibia_fibula": limbs.tibia_fibula_layout,
    "wrist": limbs.wrist_layout,
}
