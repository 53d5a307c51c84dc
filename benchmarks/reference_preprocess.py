"""The frozen scipy pre-processing: `fracscan.preprocess` as it was before the OpenCV rewrite.

Kept only as the yardstick of the fast implementation: `tests/test_preprocess_fast.py` checks
parity against it and `benchmarks/bench_prepare.py` times it in the same run (the speed-up is a
ratio measured on one machine, at one moment). Do not change it; the product never imports it.
Only the `Geometry` and `EmptyImageError` types are shared with the product.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from fracscan.preprocess import EmptyImageError, Geometry
from fracscan.spec import PreprocessSpec

CROP_WORK_SIDE = 512


def _block_mean(img: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    k = max(1, int(np.ceil(max(img.shape) / side)))
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    if k == 1 or h == 0 or w == 0:
        return img.astype(np.float32), 1
    small = img[:h, :w].astype(np.float32).reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return small, k


def content_span(fraction: np.ndarray, strong: float, weak: float) -> tuple[int, int] | None:
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
    h, w = img.shape
    small, k = _block_mean(img, CROP_WORK_SIDE)
    small = ndimage.median_filter(small, size=3, mode="nearest")
    lo, hi = np.percentile(small, [1.0, 99.5])
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return 0, 0, h, w
    norm = (small - lo) / (hi - lo)
    flat = ndimage.uniform_filter(norm, 5) ** 2 >= ndimage.uniform_filter(norm**2, 5) - 1e-4
    content = (norm > 0.12) & ~(flat & (norm > 0.97))
    span_y = content_span(content.mean(axis=1), strong=0.15, weak=0.01)
    span_x = content_span(content.mean(axis=0), strong=0.15, weak=0.01)
    if span_y is None or span_x is None:
        return 0, 0, h, w
    margin = 2
    y0 = max(0, (span_y[0] - margin) * k)
    y1 = min(h, (span_y[1] + margin) * k)
    x0 = max(0, (span_x[0] - margin) * k)
    x1 = min(w, (span_x[1] + margin) * k)
    if span_y[1] + margin >= small.shape[0]:
        y1 = h
    if span_x[1] + margin >= small.shape[1]:
        x1 = w
    return y0, x0, y1, x1


def intensity_range(img: np.ndarray) -> tuple[float, float]:
    step = max(1, int(np.sqrt(img.size / 1_000_000)))
    lo, hi = np.percentile(img[::step, ::step], [0.5, 99.5])
    if hi - lo <= 0:
        lo, hi = float(img.min()), float(img.max())
    return float(lo), float(hi)


def local_contrast_normalize(plain: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    x = plain.astype(np.float64)
    mean = ndimage.gaussian_filter(x, spec.lcn_sigma, mode="reflect")
    sq_mean = ndimage.gaussian_filter(x * x, spec.lcn_sigma, mode="reflect")
    std = np.sqrt(np.maximum(sq_mean - mean * mean, 0.0))
    lcn = (x - mean) / np.maximum(std, spec.lcn_floor)
    return (np.clip(lcn, -spec.lcn_clip, spec.lcn_clip) / spec.lcn_clip).astype(np.float32)


def reference_preprocess(img: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Geometry]:
    """Today's algorithm, verbatim: ([2, S, S] plain + LCN in [-1, 1], geometry)."""
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
    lo, hi = intensity_range(crop)
    if hi - lo > 0:  # noqa: SIM108 - kept as it was
        unit = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
    else:
        unit = np.full(crop.shape, 0.5, dtype=np.float32)

    size = spec.size
    ch, cw = crop.shape
    scale = size / max(ch, cw)
    rh, rw = max(1, min(size, round(ch * scale))), max(1, min(size, round(cw * scale)))
    resized = np.asarray(Image.fromarray(unit.astype(np.float32), mode="F").resize((rw, rh), Image.Resampling.BILINEAR))
    pad_top, pad_left = (size - rh) // 2, (size - rw) // 2
    plain = np.full((size, size), -1.0, dtype=np.float32)
    plain[pad_top : pad_top + rh, pad_left : pad_left + rw] = np.clip(resized, 0.0, 1.0) * 2.0 - 1.0

    pixels = np.stack([plain, local_contrast_normalize(plain, spec)])
    geometry = Geometry(y0, x0, y1, x1, rh, rw, pad_top, pad_left, size)
    return pixels, geometry
