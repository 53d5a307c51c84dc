"""Radiograph-like member inputs for export's checks, made without the demo wing.

The ONNX parity check and the BatchNorm statistics of a `--random-init` member want frames with the
structure of a radiograph (bright elongated bone over soft tissue, a dark border) rather than noise
alone. These phantoms are drawn here, deterministically, and made into frames by the core
pre-processing (`fracscan.preprocess.preprocess`: the serving path's crop, resize and LCN).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fracscan.preprocess import preprocess
from fracscan.spec import PreprocessSpec

RENDER_SCALE = 2  # drawn at twice S, so pre-processing downsamples them as it does real radiographs
BORDER = 0.06  # share of each side left black, like collimation: the crop has something to remove


def phantom(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.uint16]:
    """One uint16 phantom: soft tissue, two or three bone rods (one sometimes broken), noise, a black border."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image: NDArray[np.float32]
    image = 900 + 300 * np.exp(-(((x - cols / 2) / (0.35 * cols)) ** 2))  # soft tissue, brightest in the middle
    for _ in range(int(rng.integers(2, 4))):
        angle = rng.uniform(-0.4, 0.4)
        centre = rng.uniform(0.35, 0.65) * cols
        width = rng.uniform(0.04, 0.09) * cols
        distance = (x - centre) * np.cos(angle) - (y - rows / 2) * np.sin(angle)
        rod = np.clip(1 - (distance / width) ** 2, 0, None) ** 0.5
        if rng.random() < 0.5:  # a transverse gap: a "fracture line"
            gap_at = rng.uniform(0.3, 0.7) * rows
            rod *= np.abs(y - gap_at) > rng.uniform(2, 6)
        image += 1800 * rod
    image += rng.normal(0, 40, shape)
    b_rows, b_cols = int(BORDER * rows), int(BORDER * cols)
    image[:b_rows], image[-b_rows:], image[:, :b_cols], image[:, -b_cols:] = 0, 0, 0, 0
    return np.clip(image, 0, 4095).astype(np.uint16)


def phantom_frames(batch: int, size: int, seed: int = 0, channels: int = 2) -> NDArray[np.float32]:
    """[batch, channels, size, size] float32 in [-1, 1]: plain and LCN channels of phantoms (deterministic)."""
    spec = PreprocessSpec(size=size, lcn_sigma=max(size / 64, 1.0))  # both shipped specs: sigma = S / 64
    rng = np.random.default_rng([seed, 0x9A47])
    out = np.empty((batch, 2, size, size), np.float32)
    for b in range(batch):
        aspect = rng.uniform(1.0, 1.4)
        shape = (max(96, round(RENDER_SCALE * size)), max(96, round(RENDER_SCALE * size / aspect)))
        out[b] = preprocess(phantom(rng, shape), spec)[0]
    return out[:, :channels].copy()
