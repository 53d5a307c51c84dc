"""JPEG 2000 at a reduced resolution: decode only the wavelet levels the model will see.

A JPEG 2000 codestream is multi-resolution: resolution level L is the image shrunk 2**L times
(each side rounded up), and OpenJPEG decodes it without touching the finer levels (a 3000 x 2500
lossless radiograph: 0.8 s at full size, 0.2 s at level 1, 0.05 s at level 2, on one core).
fracscan always shrinks a radiograph to S pixels, so the top levels of a large one are decoded
only to be thrown away. Pillow exposes OpenJPEG's `reduce` as an attribute of the opened
`Jpeg2KImageFile`, set before `load()`; it returns a precision-P codestream scaled to 16 bits
(x 2**(16 - P)), so the precision is read from the codestream's SIZ marker and the scale undone.

Only single-component unsigned codestreams of at most 16 bits take this path (every grayscale
radiograph); anything else is decoded at full size by the caller. The low-pass band is not an
exact block average: pixel values, and so crop statistics, move slightly (see tests/test_reduced_decode.py).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Jpeg2KImagePlugin

__all__ = ["CodestreamHeader", "choose_level", "decode_at_level", "read_header"]

_SOC_SIZ = b"\xff\x4f\xff\x51"
_COD = 0xFF52
_SOT = 0xFF90
_HEADER_SEARCH = 1 << 16  # a JP2 file's codestream box starts within its first few hundred bytes


@dataclass(frozen=True)
class CodestreamHeader:
    width: int
    height: int
    components: int
    precision: int  # bits of the first component
    signed: bool
    levels: int  # wavelet decomposition levels (COD): the coarsest resolution level available

    @property
    def reducible(self) -> bool:
        """Whether this codestream can be decoded at a reduced level here: one unsigned component, <= 16 bits."""
        return self.components == 1 and not self.signed and 1 <= self.precision <= 16 and self.levels > 0

    def side(self, level: int) -> tuple[int, int]:
        """(width, height) at resolution level `level` (OpenJPEG rounds up)."""
        f = 1 << level
        return math.ceil(self.width / f), math.ceil(self.height / f)


def read_header(data: bytes) -> CodestreamHeader | None:
    """The SIZ and COD facts of a raw codestream or a JP2 file's codestream; None when they cannot be read."""
    start = data.find(_SOC_SIZ, 0, _HEADER_SEARCH)
    if start < 0 or len(data) < start + 42:
        return None
    at = start + 4
    lsiz = int.from_bytes(data[at : at + 2], "big")
    _, xsiz, ysiz, x0, y0 = struct.unpack(">HIIII", data[at + 2 : at + 20])
    csiz = int.from_bytes(data[at + 36 : at + 38], "big")
    ssiz = data[at + 38]
    levels = None
    at += lsiz
    while at + 4 <= len(data) and levels is None:  # the main header's markers, up to the first tile
        marker, length = struct.unpack(">HH", data[at : at + 4])
        if marker == _SOT or marker >> 8 != 0xFF:
            break
        if marker == _COD and at + 10 <= len(data):
            levels = data[at + 9]  # Lcod, Scod, SGcod (4 bytes), then SPcod's decomposition levels
        at += 2 + length
    if levels is None or xsiz <= x0 or ysiz <= y0:
        return None
    return CodestreamHeader(xsiz - x0, ysiz - y0, csiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels)


def choose_level(header: CodestreamHeader, min_side: int, max_scale: int | None = None) -> int:
    """The coarsest resolution level whose short side is still >= min_side (0: full size; never upsample)
    and whose scale (2**level) is at most max_scale."""
    if not header.reducible or min_side <= 0:
        return 0
    level = 0
    while (
        level < header.levels
        and min(header.side(level + 1)) >= min_side
        and (max_scale is None or 2 << level <= max_scale)
    ):
        level += 1
    return level


def decode_at_level(data: bytes, header: CodestreamHeader, level: int) -> NDArray[np.uint16]:
    """The stored values at resolution level `level` (a [h, w] uint16 array); raises on a broken codestream.

    The caller has checked the declared size against the pixel limit. Pillow's class is called directly, not
    through Image.open, whose own check reads Pillow's process-wide MAX_IMAGE_PIXELS (the application's).
    """
    with Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(data)) as img:
        img.reduce = level  # Pillow's Jpeg2KImageFile attribute
        img.load()
        mode, arr = img.mode, np.asarray(img)
    if arr.ndim != 2 or mode not in ("L", "I;16"):
        raise ValueError(f"JPEG 2000 decoded to an unexpected {mode} image of shape {arr.shape}")
    shift = (8 if mode == "L" else 16) - header.precision  # Pillow scales the precision up to the mode's bits
    arr = arr.astype(np.uint16, copy=False)
    return arr >> np.uint16(shift) if shift > 0 else arr
