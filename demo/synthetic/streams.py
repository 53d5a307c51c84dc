"""The seeded random streams of the generator: one independent stream per job.

Each job (choice of region and shape, layout, frame, fracture, exposure, noise, texture,
DICOM metadata) draws from its own ``(seed, stream)`` Generator, so a fractured and a normal
case of the same seed share every draw except the fracture's.
"""

from __future__ import annotations

import numpy as np

CHOICE, LAYOUT, FRAME, FRACTURE, EXPOSURE, NOISE, TEXTURE, META = range(8)


def rng(seed: int, stream: int) -> np.random.Generator:
    """The Generator of one stream of one seed."""
    return np.random.default_rng([int(seed), int(stream), 0x5EED])


def check_seed(seed: int) -> int:
    """The seed as a plain non-negative int; a clear error for anything else."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed
