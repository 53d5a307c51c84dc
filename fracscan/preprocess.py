"""Pre-processing (Jones et al. 2020): crop the border, resize to S x S, plain + LCN channels.

The spec picks the variant: `resize = "pad"` (long side S, aspect kept, padded; Jones) or
`"stretch"` (the crop resized to S x S, aspect not kept; Olczak et al. 2017), `crop = "anatomy"`
(burned-in markers cropped away) or `"keep_markers"` (they stay in the frame), `lcn` (whether the
members read the LCN channel at all).

Input: a 2-D grayscale array where larger = brighter (the decoder has already applied the
modality LUT and inverted MONOCHROME1). Output: a [channels, S, S] float32 tensor (channel 0 the
plain image, channel 1 its Local Contrast Normalization, both in [-1, 1]: 2 channels with LCN, 1
without) and the
`Geometry` that maps any point of the S x S frame back to original pixel coordinates. It comes
in two halves, as it is served: `preprocess_frame` (crop, resize, pad: the plain frame; the
python `preprocess` model) and `normalize_frame` (the LCN channel; the `normalize` model, which
on the GPU targets is the ONNX graph of `fracscan.export.normalize` instead).

This is the one CPU implementation, written for speed (about 30 ms for a 3000 x 2500
radiograph at S = 1024 on one core, 5-9x the scipy version it replaced; see benchmarks/). It
computes the same thing as that version, which is kept frozen in
benchmarks/reference_preprocess.py and checked against in tests/test_preprocess_fast.py: the
same crop rule on the same block-averaged statistics, the same percentiles (exactly, from a
histogram), the same anti-aliased bilinear resampling (Pillow's weights, as sparse matrix
products), and LCN's Gaussian moments, which are smooth at sigma = S / 64, computed on a 4x
coarser grid.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import sparse

from fracscan.spec import PreprocessSpec

# One OpenCV thread: Triton runs several `preprocess` instances (processes) side by side, one
# radiograph each, so the cores are used by instances; OpenCV's own thread pool in each of
# them would only oversubscribe the cores and make a radiograph's cost depend on the load.
cv2.setNumThreads(1)


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

    def to_array(self) -> NDArray[Any]:
        return np.asarray(astuple(self), dtype=np.float32)

    @classmethod
    def from_array(cls, values: NDArray[Any]) -> Geometry:
        return cls(*(round(float(v)) for v in np.asarray(values).reshape(-1)[:9]))

    @property
    def scale_y(self) -> float:
        return self.resized_h / (self.y1 - self.y0)

    @property
    def scale_x(self) -> float:
        return self.resized_w / (self.x1 - self.x0)

    def frame_to_original(self, xy: NDArray[Any]) -> NDArray[Any]:
        """Map points [..., (x, y)] in frame pixel coordinates to original pixel coordinates.

        Coordinates are continuous (pixel i spans [i, i+1)); results are clipped to the crop.
        """
        xy = np.asarray(xy, dtype=np.float64)
        x = self.x0 + (xy[..., 0] - self.pad_left) / self.scale_x
        y = self.y0 + (xy[..., 1] - self.pad_top) / self.scale_y
        return np.stack([np.clip(x, self.x0, self.x1), np.clip(y, self.y0, self.y1)], axis=-1)

    def original_to_frame(self, xy: NDArray[Any]) -> NDArray[Any]:
        xy = np.asarray(xy, dtype=np.float64)
        x = (xy[..., 0] - self.x0) * self.scale_x + self.pad_left
        y = (xy[..., 1] - self.y0) * self.scale_y + self.pad_top
        return np.stack([x, y], axis=-1)


_CROP_WORK_SIDE = 512  # crop statistics are computed on a block-averaged copy of this size
_MARKER_GROWTH = np.ones((5, 5), np.uint8)  # keep_markers: content dilated by 2 work pixels (see _crop_box)
# The crop rule, on the work copy normalised to its robust range (0 at the CROP_PERCENTILES' low point, 1 at the high):
CROP_PERCENTILES = (1.0, 99.5)  # the dark border level and the bright end of the robust range
CONTENT_LEVEL = 0.12  # a pixel above this is anatomy (or a burned-in marker), not dark border
SATURATED_LEVEL = 0.97  # above this and locally flat: an unexposed (white) collimated border, not anatomy
FLATNESS_WINDOW = (5, 5)  # work pixels over which "locally flat" is judged
FLATNESS_VARIANCE = 1e-4  # a window whose normalised variance is below this is flat
STRONG_ROW_SHARE = 0.15  # a row / column whose content share reaches this starts the anatomy's span...
WEAK_ROW_SHARE = 0.01  # ...which extends over neighbours down to this share
CROP_MARGIN = 2  # work pixels kept beyond the span: a sliver of border rather than cut anatomy


def _block_mean(img: NDArray[Any], side: int) -> tuple[NDArray[Any], int]:
    """Average non-overlapping k x k blocks so the long side is <= side (suppresses noise).

    OpenCV's area resampling by an integer factor is exactly the block average; the last
    h % k rows and w % k columns are left out.
    """
    k = max(1, int(np.ceil(max(img.shape) / side)))
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    if k == 1 or h == 0 or w == 0:
        return img.astype(np.float32), 1
    return cv2.resize(img[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA), k


def content_span(fraction: NDArray[Any], strong: float, weak: float) -> tuple[int, int] | None:
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


def marker_span(fraction: NDArray[Any], strong: float, weak: float) -> tuple[int, int] | None:
    """First/last index whose content fraction >= weak, if any index reaches strong.

    Unlike `content_span` this keeps everything that is content at all, however many empty rows
    separate it from the anatomy: a burned-in marker stays inside the crop (`crop = "keep_markers"`).
    Borders have no content (dark, or saturated and flat), so they are still removed.
    """
    if not (fraction >= strong).any():
        return None
    idx = np.flatnonzero(fraction >= weak)
    return int(idx[0]), int(idx[-1]) + 1


def find_crop(img: NDArray[Any], keep_markers: bool = False) -> tuple[int, int, int, int]:
    """Return (y0, x0, y1, x1): the box that removes black / collimation borders.

    Works on row and column statistics of a denoised copy: a pixel is "content" if it is
    clearly above the dark border level and not part of a saturated bright border. Rows
    and columns with too little content are border. Never returns an empty box; when in
    doubt it keeps the whole image. `keep_markers` keeps burned-in markers (`marker_span`).
    """
    img = np.asarray(img, dtype=np.float32)
    return _crop_box(*_block_mean(img, _CROP_WORK_SIDE), img.shape, keep_markers)


def _crop_box(
    small: NDArray[Any], k: int, shape: tuple[int, ...], keep_markers: bool = False
) -> tuple[int, int, int, int]:
    h, w = shape
    small = cv2.medianBlur(small, 3)  # 3 x 3 median; its border is replicated (scipy's "nearest")
    lo, hi = np.percentile(small, list(CROP_PERCENTILES))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return 0, 0, h, w  # flat image: nothing to crop
    norm = (small - np.float32(lo)) / np.float32(hi - lo)
    # Bright uniform borders (unexposed collimated areas shown white) count as border too:
    # they are saturated *and* locally flat. BORDER_REFLECT is scipy's default "reflect".
    mean = cv2.blur(norm, FLATNESS_WINDOW, borderType=cv2.BORDER_REFLECT)
    mean_sq = cv2.blur(norm * norm, FLATNESS_WINDOW, borderType=cv2.BORDER_REFLECT)
    flat = mean * mean >= mean_sq - FLATNESS_VARIANCE
    content = (norm > CONTENT_LEVEL) & ~(flat & (norm > SATURATED_LEVEL))
    span = content_span
    if keep_markers:
        # A marker's thin strokes (an "L"'s foot: one or two pixels a column) fall below the weak level;
        # grown by 2 work pixels, the glyph is a solid blob whose rows and columns all reach it.
        content = cv2.dilate(content.view(np.uint8), _MARKER_GROWTH).view(bool)
        span = marker_span
    span_y = span(content.mean(axis=1), strong=STRONG_ROW_SHARE, weak=WEAK_ROW_SHARE)
    span_x = span(content.mean(axis=0), strong=STRONG_ROW_SHARE, weak=WEAK_ROW_SHARE)
    if span_y is None or span_x is None:
        return 0, 0, h, w
    margin = CROP_MARGIN
    y0 = max(0, (span_y[0] - margin) * k)
    y1 = min(h, (span_y[1] + margin) * k)
    x0 = max(0, (span_x[0] - margin) * k)
    x1 = min(w, (span_x[1] + margin) * k)
    if span_y[1] + margin >= small.shape[0]:
        y1 = h  # the block-mean dropped the last h % k rows: keep them
    if span_x[1] + margin >= small.shape[1]:
        x1 = w
    return y0, x0, y1, x1


def percentiles(sample: NDArray[Any], q: tuple[float, ...]) -> tuple[float, ...]:
    """np.percentile(sample, q) (linear interpolation), exactly, from a histogram when the values are 16-bit integers.

    Decoded radiographs are integers (stored as float32); counting them with OpenCV's 16-bit
    histogram costs a fifth of the selection np.percentile does. Anything else (fractions,
    negative values, more than 16 bits) goes to np.percentile.
    """
    with np.errstate(invalid="ignore"):  # out-of-range values wrap; the comparison rejects them
        words = sample.astype(np.uint16)
    if not np.array_equal(words, sample):
        return tuple(float(v) for v in np.percentile(sample, q))
    counts = cv2.calcHist([words], [0], None, [1 << 16], [0, 1 << 16]).reshape(-1).astype(np.int64)
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    out = []
    for p in q:
        rank = p / 100.0 * (n - 1)
        below = int(np.floor(rank))
        a, b = (int(v) for v in np.searchsorted(cumulative, [below, min(below + 1, n - 1)], side="right"))
        out.append(a + (rank - below) * (b - a))
    return tuple(out)


def _intensity_range(img: NDArray[Any]) -> tuple[float, float]:
    """Robust black/white points (0.5 / 99.5 percentiles) of every step-th pixel (~1-2M samples)."""
    step = max(1, int(np.sqrt(img.size / 1_000_000)))
    lo, hi = percentiles(img[::step, ::step], (0.5, 99.5))
    if hi - lo <= 0:
        lo, hi = float(img.min()), float(img.max())
    return float(lo), float(hi)


def _lcn_grid_factor(spec: PreprocessSpec) -> int:
    """How much coarser than the frame LCN's Gaussian moments are computed: 1, 2 or 4.

    The moments are Gaussian-smoothed at sigma (16 px at S = 1024): a grid f x coarser loses
    nothing as long as sigma / f stays >= 4 px. Smaller sigmas (the demo's 2 px) stay exact.
    """
    factor = 4
    while factor > 1 and (spec.lcn_sigma / factor < 4.0 or spec.size % factor):
        factor //= 2
    return factor


def _gaussian(x: NDArray[Any], sigma: float) -> NDArray[Any]:
    """scipy.ndimage.gaussian_filter(x, sigma, mode="reflect") (radius 4 sigma), with OpenCV."""
    radius = int(4.0 * sigma + 0.5)
    return cv2.GaussianBlur(x, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)


def local_contrast_normalize(
    plain: NDArray[Any], spec: PreprocessSpec, out: NDArray[Any] | None = None
) -> NDArray[Any]:
    """Gaussian-weighted LCN of a [-1, 1] S x S image, clipped and rescaled to [-1, 1].

    lcn = clip((x - mean) / max(std, floor), -clip, clip) / clip, with mean and std the
    Gaussian-weighted local moments. On a coarser grid (block averages of x and x^2) they are
    smoothed with a sigma reduced by the blur the block average and the bilinear upsampling
    add (variance (f^2 - 1) / 12 + (f^2 - 1) / 6 frame pixels), so the result matches the
    full-resolution filter to ~1e-3.
    """
    x = np.asarray(plain, dtype=np.float32)
    size = x.shape[0]
    factor = _lcn_grid_factor(spec) if x.shape == (spec.size, spec.size) else 1
    if factor == 1:
        x64 = x.astype(np.float64)
        mean = _gaussian(x64, spec.lcn_sigma)
        var = _gaussian(x64 * x64, spec.lcn_sigma) - mean * mean
        inv = 1.0 / (np.maximum(np.sqrt(np.maximum(var, 0.0)), spec.lcn_floor) * spec.lcn_clip)
        mean, inv = mean.astype(np.float32), inv.astype(np.float32)
    else:
        side = size // factor
        coarse = cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
        coarse_sq = cv2.resize(x * x, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
        added = (factor * factor - 1) / 12 + (factor * factor - 1) / 6
        sigma = np.sqrt(spec.lcn_sigma**2 - added) / factor
        mean = _gaussian(coarse, sigma)
        var = _gaussian(coarse_sq, sigma) - mean * mean
        inv = 1.0 / (np.maximum(np.sqrt(np.maximum(var, 0.0)), spec.lcn_floor) * spec.lcn_clip)
        mean = cv2.resize(mean.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        inv = cv2.resize(inv.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    out = np.subtract(x, mean, out=out)
    np.multiply(out, inv, out=out)
    np.minimum(out, 1.0, out=out)
    return np.maximum(out, -1.0, out=out)


@lru_cache(maxsize=64)
def _bilinear_weights(in_size: int, out_size: int, span: float = 0.0, offset: float = 0.0) -> sparse.csr_matrix:
    """Pillow's BILINEAR resampling along one axis as an out_size x in_size sparse matrix.

    The same coefficients as Pillow's `precompute_coeffs`: a triangle of half-width
    max(scale, 1) input pixels around each output centre (widened when shrinking, i.e.
    anti-aliased), truncated at the edges and normalised to sum 1. The output covers input
    pixels [offset, offset + span) (default: all in_size of them).
    """
    scale = (span or in_size) / out_size
    filter_scale = max(scale, 1.0)
    support = filter_scale  # the bilinear filter's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    centers = offset + (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    end = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    cols = first[:, None] + np.arange(taps)[None, :]
    weights = np.clip(1.0 - np.abs((cols - centers[:, None] + 0.5) / filter_scale), 0.0, None)
    weights[(cols >= end[:, None]) | (cols >= in_size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    keep = weights > 0
    rows = np.broadcast_to(np.arange(out_size)[:, None], cols.shape)
    matrix = sparse.csr_matrix((weights[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(out_size, in_size))
    return matrix


_BAND_ROWS = 32  # output rows per band: a band's clipped input rows (~100) stay in the cache


Axis = tuple[float, float]  # (span, offset) of `_bilinear_weights`; (0, 0): the whole input


@lru_cache(maxsize=64)
def _row_bands(
    in_size: int, out_size: int, axis: Axis = (0.0, 0.0)
) -> tuple[tuple[int, int, int, int, sparse.csr_matrix], ...]:
    """The row weights cut into bands: (first, end) output rows, (first, end) input rows they read, weights."""
    weights = _bilinear_weights(in_size, out_size, *axis)
    bands = []
    for r0 in range(0, out_size, _BAND_ROWS):
        r1 = min(r0 + _BAND_ROWS, out_size)
        used = weights.indices[weights.indptr[r0] : weights.indptr[r1]]
        a, b = int(used.min()), int(used.max()) + 1
        bands.append((r0, r1, a, b, weights[r0:r1, a:b].tocsr()))
    return tuple(bands)


def _resample(
    crop: NDArray[Any],
    lo: float,
    hi: float,
    rh: int,
    rw: int,
    window: NDArray[Any],
    axes: tuple[Axis, Axis] = ((0.0, 0.0), (0.0, 0.0)),
) -> None:
    """window = the crop clipped to [lo, hi], resized to rh x rw, scaled to [-1, 1].

    `axes`: the (span, offset) of crop pixels that rows and columns cover (`_reduced_axis`), default all.

    The pixels are clipped *before* resizing, as the [0, 1] image always was. The resize is
    Pillow's anti-aliased bilinear filter as sparse matrix products, the same weights with
    float32 sums, one band of output rows at a time: its input rows clipped into a small
    scratch, then rows, then columns, all in the cache (the full-size crop is read once and
    never copied). Resizing the clipped raw values and scaling the S x S result equals
    scaling first, up to round-off.
    """
    bands = _row_bands(crop.shape[0], rh, axes[0])
    columns = _bilinear_weights(crop.shape[1], rw, *axes[1])
    scratch = np.empty((max(b - a for _, _, a, b, _ in bands), crop.shape[1]), np.float32)
    resized = np.empty((rh, rw), np.float32)
    narrow = crop.shape[1] < 8  # OpenCV would take an n x 1 array (n <= 4) for a scalar
    for r0, r1, a, b, rows in bands:
        if narrow:
            chunk = np.clip(crop[a:b], lo, hi, out=scratch[: b - a])
        else:
            chunk = cv2.max(crop[a:b], lo, dst=scratch[: b - a])  # type: ignore[call-overload]
            chunk = cv2.threshold(chunk, hi, 0.0, cv2.THRESH_TRUNC, dst=chunk)[1]  # min(x, hi)
        resized[r0:r1] = (columns @ (rows @ chunk).T).T
    scale = 2.0 / (hi - lo)
    np.multiply(resized, np.float32(scale), out=window)
    window += np.float32(-lo * scale - 1.0)
    np.clip(window, -1.0, 1.0, out=window)


def _checked_block_mean(img: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], int]:
    """(image, its block mean, k) with NaN and +-inf set to 0; raise EmptyImageError if it is all black.

    The block mean reads every pixel but the last h % k rows and w % k columns, and NaN or inf
    anywhere in a block makes that block's mean non-finite: checking the small copy and those
    strips replaces two full passes over the image.
    """
    small, k = _block_mean(img, _CROP_WORK_SIDE)
    h, w = small.shape[0] * k, small.shape[1] * k
    strips = (img[h:, :], img[:h, w:])
    if not (np.isfinite(small).all() and all(np.isfinite(s).all() for s in strips)):
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        small, k = _block_mean(img, _CROP_WORK_SIDE)
    if not small.any() and not img.any():  # a zero block mean can hide +-values: then look at every pixel
        raise EmptyImageError("the image is entirely black: there is no content to score")
    return img, small, k


Box = tuple[int, int, int, int]  # (y0, x0, y1, x1): rows y0:y1, columns x0:x1


def crop_block(shape: tuple[int, ...]) -> int:
    """The side, in pixels of an image of `shape`, of the blocks its crop statistics average (`_block_mean`)."""
    return max(1, int(np.ceil(max(shape) / _CROP_WORK_SIDE)))


def reducible_scale(shape: tuple[int, int]) -> int:
    """The coarsest scale (a power of two) at which a reduced resolution of an image of `shape` gives the same
    crop statistics: its pixels must tile the statistics' blocks, i.e. divide crop_block(shape)."""
    k = crop_block(shape)
    return k & -k


def _reduced_block_mean(img: NDArray[Any], scale: int, shape: tuple[int, int]) -> tuple[NDArray[Any], int]:
    """The block mean the original of `shape` would have, from `img`, a 1/scale reduced resolution of it.

    The same grid of k x k original pixels (k = crop_block(shape) >= scale): area resampling of the
    reduced pixels they cover (an exact block average when scale divides k, see `reducible_scale`).
    """
    k = crop_block(shape)
    h, w = (shape[0] // k) * k, (shape[1] // k) * k
    rows, cols = min(img.shape[0], -(-h // scale)), min(img.shape[1], -(-w // scale))
    return cv2.resize(img[:rows, :cols], (w // k, h // k), interpolation=cv2.INTER_AREA), k


def crop_of(
    img: NDArray[Any], spec: PreprocessSpec, scale: int = 1, original_shape: tuple[int, int] | None = None
) -> tuple[NDArray[Any], Box]:
    """(the image as float32 with NaN / inf set to 0, its crop box); raise EmptyImageError if it is all black.

    `img` may be a 1/scale reduced resolution of an original of `original_shape` (scale <= crop_block of
    it): the statistics are then those of the original's blocks, and the box is in original pixels.
    """
    img = np.asarray(img)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty 2-D grayscale image, got shape {img.shape}")
    img, small, k = _checked_block_mean(img.astype(np.float32, copy=False))
    shape: tuple[int, ...] = img.shape
    if scale > 1:
        shape = original_shape or (img.shape[0] * scale, img.shape[1] * scale)
        small, k = _reduced_block_mean(img, scale, shape)
    return img, _crop_box(small, k, shape, spec.crop == "keep_markers")


def _reduced_axis(start: int, end: int, scale: int, length: int) -> tuple[int, int, Axis]:
    """Original pixels [start, end) of a 1/scale reduced resolution: (first, end) reduced pixels to read,
    and the (span, offset) the resampling covers in them.

    A reduced pixel j is the wavelet low-pass centred on original pixel scale * j (not on the middle of
    its scale x scale block), hence the (scale - 1) / (2 scale) shift.
    """
    first, last = start // scale, min(length, -(-end // scale))
    return first, last, ((end - start) / scale, start / scale - first + (scale - 1) / (2 * scale))


def preprocess_frame(
    img: NDArray[Any],
    spec: PreprocessSpec,
    out: NDArray[Any] | None = None,
    *,
    box: Box | None = None,
    scale: int = 1,
    original_shape: tuple[int, int] | None = None,
) -> tuple[NDArray[Any], Geometry]:
    """The decode-side half: crop, resize (anti-aliased), pad; return (plain [S, S], geometry).

    "pad": the long side becomes S, the aspect is kept and the rest padded; "stretch": the crop
    becomes S x S (each axis scaled on its own, no padding). The plain frame is in [-1, 1] and its
    padding is -1 (black). It is what the `preprocess` model serves (as FRAME [1, S, S]);
    `normalize_frame` (or the `normalize` model) makes the members' input from it.

    `img` may be a reduced resolution of the original (a JPEG 2000 level: `scale` original pixels per
    pixel, the original `original_shape`); the crop box and geometry are in original pixels all the same.
    `box`: the crop when the caller has it already (`crop_of`; img must then be the image it returned).
    """
    if box is None:
        img, box = crop_of(img, spec, scale, original_shape)
    y0, x0, y1, x1 = box
    axes: tuple[Axis, Axis] = ((0.0, 0.0), (0.0, 0.0))
    if scale > 1:
        r0, r1, rows = _reduced_axis(y0, y1, scale, img.shape[0])
        c0, c1, cols = _reduced_axis(x0, x1, scale, img.shape[1])
        crop, axes = img[r0:r1, c0:c1], (rows, cols)
    else:
        crop = img[y0:y1, x0:x1]
    lo, hi = _intensity_range(crop)

    size = spec.size
    ch, cw = y1 - y0, x1 - x0
    if spec.resize == "stretch":
        rh = rw = size
    else:
        factor = size / max(ch, cw)
        rh, rw = max(1, min(size, round(ch * factor))), max(1, min(size, round(cw * factor)))
    pad_top, pad_left = (size - rh) // 2, (size - rw) // 2
    plain = np.empty((size, size), dtype=np.float32) if out is None else out
    plain.fill(-1.0)
    window = plain[pad_top : pad_top + rh, pad_left : pad_left + rw]
    if hi - lo > 0:
        _resample(crop, lo, hi, rh, rw, window, axes)
    else:
        window.fill(0.0)  # flat image: mid-gray
    return plain, Geometry(y0, x0, y1, x1, rh, rw, pad_top, pad_left, size)


def normalize_frame(plain: NDArray[Any], spec: PreprocessSpec) -> NDArray[Any]:
    """The pixel half: plain [S, S] -> [channels, S, S], the members' input: plain, LCN (plain only if lcn = false)."""
    pixels = np.empty((spec.channels, *np.shape(plain)), dtype=np.float32)
    pixels[0] = plain
    if spec.lcn:
        local_contrast_normalize(pixels[0], spec, out=pixels[1])
    return pixels


def preprocess(img: NDArray[Any], spec: PreprocessSpec) -> tuple[NDArray[Any], Geometry]:
    """Both halves: crop, resize, pad, LCN; return ([channels, S, S], geometry)."""
    pixels = np.empty((spec.channels, spec.size, spec.size), dtype=np.float32)
    _, geometry = preprocess_frame(img, spec, out=pixels[0])
    if spec.lcn:
        local_contrast_normalize(pixels[0], spec, out=pixels[1])
    return pixels, geometry
