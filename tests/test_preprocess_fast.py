"""The fast pre-processing computes what the frozen scipy version computed, up to round-off.

`benchmarks/reference_preprocess.py` is the scipy code `fracscan.preprocess` replaced; the
product must stay the paper's pre-processing: per channel mean absolute difference <= 0.005
on the [-1, 1] channels, and the same crop and geometry (within 2 pixels).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import ROOT
from PIL import Image, ImageDraw

from fracscan.decode import decode_image
from fracscan.preprocess import EmptyImageError, find_crop, percentiles, preprocess
from fracscan.spec import PreprocessSpec

sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_preprocess import find_crop as reference_find_crop
from reference_preprocess import reference_preprocess

FULL = PreprocessSpec()  # S = 1024, sigma 16: LCN's moments on the coarse grid
DEMO = PreprocessSpec(size=128, lcn_sigma=2.0)  # the demo's frame: LCN at full resolution
MAD_LIMIT = 0.005
NEMA = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm")


def assert_parity(img: np.ndarray, spec: PreprocessSpec, px: int = 2) -> tuple[np.ndarray, np.ndarray]:
    expected, expected_geometry = reference_preprocess(img, spec)
    pixels, geometry = preprocess(img, spec)
    assert pixels.shape == expected.shape == (2, spec.size, spec.size) and pixels.dtype == np.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    mad = np.abs(pixels - expected).mean(axis=(1, 2))
    assert mad[0] <= MAD_LIMIT and mad[1] <= MAD_LIMIT, mad
    got, want = np.array(geometry.to_array()), np.array(expected_geometry.to_array())
    assert np.all(np.abs(got - want) <= px), (geometry, expected_geometry)
    return pixels, expected


def radiograph(h: int, w: int, seed: int = 0, border: str = "black", bits: int = 12) -> np.ndarray:
    """Smooth soft tissue, two bright bones with a lucent line, quantum noise, a collimation border
    and a burned-in marker, as integers of `bits` bits (what a detector stores)."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 0.02 * top, np.float32) if border != "bright" else np.full((h, w), top, np.float32)
    y0, x0, y1, x1 = h // 10, w // 8, h - h // 12, w - w // 9
    inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    tissue = 0.35 * top + 0.08 * top * np.sin(yy / (h / 9)) * np.cos(xx / (w / 7))
    for cx, r in ((0.4 * w, 0.07 * w), (0.62 * w, 0.05 * w)):
        tissue += 0.3 * top * np.clip(1 - ((xx - cx) / r) ** 2, 0, None) ** 0.5
    tissue -= 0.15 * top * (np.abs(yy - 0.55 * h - 0.1 * (xx - w / 2)) < max(2, h // 400))
    img = np.where(inside, tissue, img)
    img += rng.normal(0, 0.01 * top, (h, w)).astype(np.float32) * (1 if border != "bright" else inside)
    pil = Image.fromarray(np.zeros((h, w), np.uint8))
    ImageDraw.Draw(pil).text((w - w // 10, h // 40), "R", fill=255, font_size=max(12, h // 30))
    img = np.where(np.asarray(pil) > 0, 0.9 * top, img)
    return np.clip(np.rint(img), 0, top).astype(np.uint16)


@pytest.mark.parametrize("name", NEMA)
def test_parity_on_nema_radiographs(name):
    path = pydicom.data.get_testdata_file(name)
    if path is None:
        pytest.skip("the NEMA WG04 images come with the pydicom-data package")
    img = decode_image(Path(path).read_bytes()).pixels
    for spec in (FULL, DEMO):
        assert_parity(img, spec)


def test_parity_on_a_3000_x_2500_12_bit_radiograph():
    img = radiograph(3000, 2500, seed=3)
    pixels, expected = assert_parity(img, FULL)
    # the plain channel is the same resampling, exactly up to float round-off
    assert np.abs(pixels[0] - expected[0]).max() <= 1e-4


@pytest.mark.parametrize("shape", [(700, 500), (500, 700), (1400, 3000), (3000, 1100)])
@pytest.mark.parametrize("border", ["black", "bright"])
def test_parity_landscape_portrait_and_borders(shape, border):
    img = radiograph(*shape, seed=shape[0], border=border)
    assert_parity(img, FULL)
    assert_parity(img, DEMO)
    assert find_crop(img) == reference_find_crop(img.astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 1), (20, 20), (40, 700), (127, 129), (300, 90)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_parity_on_small_images_and_dtypes(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    img = rng.random(shape) if dtype == np.float32 else rng.integers(0, np.iinfo(dtype).max, shape)
    for spec in (FULL, DEMO, PreprocessSpec(size=256, lcn_sigma=4.0)):
        assert_parity(img.astype(dtype), spec)


def test_parity_on_flat_negative_and_non_finite_images():
    rng = np.random.default_rng(7)
    assert_parity(np.full((400, 300), 777, np.uint16), FULL)
    assert_parity(rng.integers(-1000, 3000, (600, 500)).astype(np.float32), FULL)  # histogram fallback
    img = radiograph(900, 700).astype(np.float32)
    img[10:20, 30:40], img[500, 500], img[-1, -1] = np.nan, np.inf, -np.inf  # the last row escapes the block mean
    assert_parity(img, FULL)
    with pytest.raises(EmptyImageError):
        preprocess(np.zeros((3001, 2999), np.float32), FULL)
    with pytest.raises(EmptyImageError):
        preprocess(np.full((50, 50), np.nan, np.float32), FULL)
    cancelling = np.zeros((2000, 2000), np.float32)
    cancelling[0, 0], cancelling[0, 1] = 5.0, -5.0  # a zero block mean, not an empty image
    assert_parity(cancelling, FULL)


@pytest.mark.parametrize(
    "sample",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.random.default_rng(0).integers(0, 4096, (999, 777)).astype(np.float32)[::2, ::3],
        np.random.default_rng(1).integers(0, 65536, (300, 300)).astype(np.float32),
        np.random.default_rng(2).normal(size=(200, 100)).astype(np.float32),  # not integers
        np.array([[65536.0, 0.0, 3.0]], np.float32),  # beyond 16 bits
        np.array([[-2.0, 0.0, 3.0]], np.float32),  # negative
    ],
)
def test_histogram_percentiles_equal_numpy(sample):
    for q in ((0.5, 99.5), (1.0, 99.5), (0.0, 100.0), (50.0,)):
        assert percentiles(sample, q) == pytest.approx(tuple(np.percentile(sample, q)), abs=1e-9)


def test_resampling_equals_pillow_bilinear():
    """The sparse-matrix resize has Pillow's weights: shrinking (anti-aliased) and enlarging."""
    from fracscan.preprocess import _resample

    rng = np.random.default_rng(5)
    for (h, w), (rh, rw) in (((997, 1503), (300, 452)), ((40, 31), (128, 99)), ((512, 512), (512, 512))):
        img = rng.random((h + 10, w + 6)).astype(np.float32)[5 : 5 + h, 3 : 3 + w]  # a strided crop
        expected = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((rw, rh), Image.Resampling.BILINEAR))
        window = np.empty((rh, rw), np.float32)
        _resample(img, 0.0, 1.0, rh, rw, window)  # scaled to [-1, 1]
        assert np.abs((window + 1) / 2 - np.clip(expected, 0, 1)).max() <= 2e-6
