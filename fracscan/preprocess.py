"""Pre-processing (Jones et al. 2020): crop the border, resize to S x S, plain + LCN channels.

Input: a 2-D grayscale array where larger = brighter (the decoder has already applied the
modality LUT and inverted MONOCHROME1). Output: a [2, S, S] float32 tensor (channel 0 the
plain image, channel 1 its Local Contrast Normalization, both in [-1, 1]) and the
`Geometry` that maps any point of the S x S frame back to original pixel coordinates.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from fracscan.spec import PreprocessSpec


class EmptyImageError(ValueError):
    """The image has no content at all (every pixel is black)."""


@dataclass(frozen=True)
class Geometry:
    """How the S x S frame was made from the original image.

    crop = rows y0:y1, columns x0:x1 of the original; that crop was resized to
    (resized_h, resized_w) and placed at (pad_top, pad_left) in the S x S frame.
    """

    y0: int
    x0: int
    y1: int
    x1: int
    resized_h: int
    resized_w: int
    pad_top: int
    pad_left: int
    size: int

    def to_array(self) -> np.ndarray:
        return np.asarray(astuple(self), dtype=np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Geometry:
        return cls(*(int(round(float(v))) for v in np.asarray(values).reshape(-1)[:9]))

    @property
    def scale_y(self) -> float:
        return self.resized_h / (self.y1 - self.y0)

    @property
    def scale_x(self) -> float:
        return self.resized_w / (self.x1 - self.x0)

    def frame_to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map points [..., (x, y)] in frame pixel coordinates to original pixel coordinates.

        Coordinates are continuous (pixel i spans [i, i+1)); results are clipped to the crop.
        """
        xy = np.asarray(xy, dtype=np.float64)
        x = self.x0 + (xy[..., 0] - self.pad_left) / self.scale_x
        y = self.y0 + (xy[..., 1] - self.pad_top) / self.scale_y
        return np.stack([np.clip(x, self.x0, self.x1), np.clip(y, self.y0, self.y1)], axis=-1)

    def original_to_frame(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        x = (xy[..., 0] - self.x0) * self.scale_x + self.pad_left
        y = (xy[..., 1] - self.y0) * self.scale_y + self.pad_top
        return np.stack([x, y], axis=-1)


# --- cropping -----------------------------------------------------------------------------

_CROP_WORK_SIDE = 512  # crop statistics are computed on a block-averaged copy of this size


def _block_mean(img: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    """Average non-overlapping k x k blocks so the long side is <= side (suppresses noise)."""
    k = max(1, int(np.ceil(max(img.shape) / side)))
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    if k == 1 or h == 0 or w == 0:
        return img.astype(np.float32), 1
    small = img[:h, :w].astype(np.float32).reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return small, k


def _content_span(fraction: np.ndarray, strong: float, weak: float) -> tuple[int, int] | None:
    """First/last index whose content fraction >= strong, grown while neighbours stay >= weak.

    Hysteresis keeps faint anatomy at the edges (a fingertip) while a burned-in marker,
    separated from the anatomy by empty rows, stays outside.
    """
    idx = np.flatnonzero(fraction >= strong)
    if idx.size == 0:
        return None
    lo, hi = int(idx[0]), int(idx[-1])
    while lo > 0 and fraction[lo - 1] >= weak:
        lo -= 1
    while hi < fraction.size - 1 and fraction[hi + 1] >= weak:
        hi += 1
    return lo, hi + 1


def find_crop(img: np.ndarray) -> tuple[int, int, int, int]:
    """Return (y0, x0, y1, x1): the box that removes black / collimation borders.

    Works on row and column statistics of a denoised copy: a pixel is "content" if it is
    clearly above the dark border level and not part of a saturated bright border. Rows
    and columns with too little content are border. Never returns an empty box; when in
    doubt it keeps the whole image.
    """
    h, w = img.shape
    small, k = _block_mean(img, _CROP_WORK_SIDE)
    small = ndimage.median_filter(small, size=3, mode="nearest")
    lo, hi = np.percentile(small, [1.0, 99.5])
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return 0, 0, h, w  # flat image: nothing to crop
    norm = (small - lo) / (hi - lo)
    # Bright uniform borders (unexposed collimated areas shown white) count as border too:
    # they are saturated *and* locally flat.
    flat = ndimage.uniform_filter(norm, 5) ** 2 >= ndimage.uniform_filter(norm**2, 5) - 1e-4
    content = (norm > 0.12) & ~(flat & (norm > 0.97))
    span_y = _content_span(content.mean(axis=1), strong=0.15, weak=0.01)
    span_x = _content_span(content.mean(axis=0), strong=0.15, weak=0.01)
    if span_y is None or span_x is None:
        return 0, 0, h, w
    margin = 2  # work pixels: keep a sliver of border rather than cut anatomy
    y0 = max(0, (span_y[0] - margin) * k)
    y1 = min(h, (span_y[1] + margin) * k)
    x0 = max(0, (span_x[0] - margin) * k)
    x1 = min(w, (span_x[1] + margin) * k)
    if span_y[1] + margin >= small.shape[0]:
        y1 = h  # the block-mean dropped the last h % k rows: keep them
    if span_x[1] + margin >= small.shape[1]:
        x1 = w
    return y0, x0, y1, x1


# --- resize, normalise, LCN ---------------------------------------------------------------


def _intensity_range(img: np.ndarray) -> tuple[float, float]:
    """Robust black/white points (0.5 / 99.5 percentiles) from at most ~1M samples."""
    step = max(1, int(np.sqrt(img.size / 1_000_000)))
    lo, hi = np.percentile(img[::step, ::step], [0.5, 99.5])
    if hi - lo <= 0:
        lo, hi = float(img.min()), float(img.max())
    return float(lo), float(hi)


def local_contrast_normalize(plain: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Gaussian-weighted LCN of a [-1, 1] image, clipped and rescaled to [-1, 1]."""
    x = plain.astype(np.float64)
    mean = ndimage.gaussian_filter(x, spec.lcn_sigma, mode="reflect")
    sq_mean = ndimage.gaussian_filter(x * x, spec.lcn_sigma, mode="reflect")
    std = np.sqrt(np.maximum(sq_mean - mean * mean, 0.0))
    lcn = (x - mean) / np.maximum(std, spec.lcn_floor)
    return (np.clip(lcn, -spec.lcn_clip, spec.lcn_clip) / spec.lcn_clip).astype(np.float32)


def preprocess(img: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Geometry]:
    """Crop, resize (long side S, anti-aliased), pad to S x S; return ([2, S, S], geometry)."""
    img = np.asarray(img)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale image, got shape {img.shape}")
    img = img.astype(np.float32, copy=False)
    if not np.all(np.isfinite(img)):
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    if float(img.max()) <= 0.0 and float(img.min()) >= 0.0:
        raise EmptyImageError("the image is entirely black: there is no content to score")

    y0, x0, y1, x1 = find_crop(img)
    crop = img[y0:y1, x0:x1]
    lo, hi = _intensity_range(crop)
    if hi - lo > 0:
        unit = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
    else:
        unit = np.full(crop.shape, 0.5, dtype=np.float32)  # flat image: mid-gray

    size = spec.size
    ch, cw = crop.shape
    scale = size / max(ch, cw)
    rh, rw = max(1, min(size, round(ch * scale))), max(1, min(size, round(cw * scale)))
    # Pillow's resampling widens the filter support when shrinking, i.e. it anti-aliases.
    resized = np.asarray(
        Image.fromarray(unit.astype(np.float32), mode="F").resize((rw, rh), Image.Resampling.BILINEAR)
    )
    pad_top, pad_left = (size - rh) // 2, (size - rw) // 2
    plain = np.full((size, size), -1.0, dtype=np.float32)
    plain[pad_top : pad_top + rh, pad_left : pad_left + rw] = np.clip(resized, 0.0, 1.0) * 2.0 - 1.0

    pixels = np.stack([plain, local_contrast_normalize(plain, spec)])
    geometry = Geometry(y0, x0, y1, x1, rh, rw, pad_top, pad_left, size)
    return pixels, geometry
