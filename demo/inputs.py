"""Synthetic radiographs as model inputs: demo cases through the core pre-processing.

The ONNX parity check and the member tests feed members realistic frames rather than noise alone;
these are the demo generator's radiographs made into frames by `fracscan.preprocess.preprocess`
(the serving path's crop, resize and LCN), so there is one generator and one LCN.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.preprocess import preprocess
from fracscan.spec import PreprocessSpec

from .synthetic import make_case
from .synthetic.scenes import choose

# Cases are rendered with their long side at RENDER_SCALE x S, so pre-processing downsamples
# them as it does real radiographs, while rendering stays fast.
RENDER_SCALE = 2


def synthetic_radiographs(batch: int, size: int, seed: int = 0, channels: int = 2) -> NDArray[np.float32]:
    """[batch, channels, size, size] float32 in [-1, 1]: plain and LCN channels of synthetic radiographs.

    Deterministic for (batch, size, seed); region, fracture and orientation are drawn per case.
    `channels` 1: the plain channel only (a spec with lcn = false).
    """
    return _frames(int(batch), int(size), int(seed))[:, : int(channels)].copy()


@lru_cache(maxsize=32)
def _frames(batch: int, size: int, seed: int) -> NDArray[np.float32]:
    # Both shipped specs use an LCN sigma of S / 64 (16 at S = 1024, 2 at S = 128).
    spec = PreprocessSpec(size=size, lcn_sigma=max(size / 64, 1.0))
    case_seeds = np.random.default_rng([seed, 0x1A7E]).integers(0, 1 << 31, batch)
    out = np.empty((batch, 2, size, size), np.float32)
    for b, case_seed in enumerate(case_seeds):
        _, _, _, rows, cols, _ = choose(int(case_seed), None, None, None)
        scale = RENDER_SCALE * size / max(rows, cols)
        shape = (max(96, round(rows * scale)), max(96, round(cols * scale)))
        out[b] = preprocess(make_case(int(case_seed), shape=shape).pixels, spec)[0]
    out.setflags(write=False)
    return out


def npy_bytes(pixels: NDArray[Any]) -> bytes:
    """A synthetic radiograph as the `.npy` bytes the ensemble's IMAGE input takes."""
    import io

    buf = io.BytesIO()
    np.save(buf, pixels)
    return buf.getvalue()
