"""Olczak et al. 2017 pre-processing: stretch to S x S, crops that keep burned-in markers, no LCN channel."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fracscan.demo.synthetic import make_case, png_bytes
from fracscan.preprocess import find_crop, normalize_frame, preprocess, preprocess_frame
from fracscan.spec import PreprocessSpec, builtin_spec_path, load_spec

STRETCH = PreprocessSpec(size=128, resize="stretch", lcn=False, crop="keep_markers")
MARKER_SEEDS = range(40)


def _glyph(case) -> tuple[float, float, float, float]:
    """The marker's ink: the generator draws the letter into the inner 80% of `case.marker`."""
    x0, y0, x1, y1 = case.marker
    dx, dy = (x1 - x0) / 10, (y1 - y0) / 10
    return x0 + dx, y0 + dy, x1 - dx, y1 - dy


def _inside(box: tuple[int, int, int, int], glyph: tuple[float, float, float, float]) -> bool:
    y0, x0, y1, x1 = box
    gx0, gy0, gx1, gy1 = glyph
    return x0 <= gx0 and y0 <= gy0 and x1 >= gx1 and y1 >= gy1


def _overlap(box: tuple[int, int, int, int], marker: tuple[int, int, int, int]) -> float:
    """The fraction of the marker box inside the crop."""
    y0, x0, y1, x1 = box
    mx0, my0, mx1, my1 = marker
    w = max(0, min(x1, mx1) - max(x0, mx0))
    h = max(0, min(y1, my1) - max(y0, my0))
    return w * h / ((mx1 - mx0) * (my1 - my0))


@pytest.mark.parametrize("shape", [(420, 300), (300, 420), (997, 611), (96, 200)])
def test_stretch_fills_the_frame_and_maps_back(shape):
    case = make_case(3, shape=shape)
    plain, geometry = preprocess_frame(case.pixels, STRETCH)
    size = STRETCH.size
    assert plain.shape == (size, size)
    assert (geometry.resized_h, geometry.resized_w, geometry.pad_top, geometry.pad_left) == (size, size, 0, 0)
    assert plain.min() >= -1.0 and plain.max() <= 1.0
    # frame corners are the crop's corners; x and y have their own scales
    corners = geometry.frame_to_original(np.array([[0.0, 0.0], [size, size]]))
    np.testing.assert_allclose(corners, [[geometry.x0, geometry.y0], [geometry.x1, geometry.y1]])
    assert geometry.scale_x == pytest.approx(size / (geometry.x1 - geometry.x0))
    assert geometry.scale_y == pytest.approx(size / (geometry.y1 - geometry.y0))
    points = np.random.default_rng(0).uniform([geometry.x0, geometry.y0], [geometry.x1, geometry.y1], (50, 2))
    np.testing.assert_allclose(geometry.frame_to_original(geometry.original_to_frame(points)), points, atol=1e-9)


def test_stretch_is_pillows_bilinear_resize_of_the_crop():
    """Each axis is resampled on its own with Pillow's anti-aliased bilinear weights (no padding)."""
    case = make_case(8, shape=(610, 377))
    plain, g = preprocess_frame(case.pixels, STRETCH)
    crop = case.pixels[g.y0 : g.y1, g.x0 : g.x1].astype(np.float32)
    lo, hi = np.percentile(crop, [0.5, 99.5])
    clipped = (np.clip(crop, lo, hi) - lo) / (hi - lo)
    resized = Image.fromarray(clipped).resize((STRETCH.size, STRETCH.size), Image.Resampling.BILINEAR)
    expected = np.clip(np.asarray(resized) * 2 - 1, -1, 1)
    assert np.abs(plain - expected).max() <= 1e-5


def test_pad_geometry_is_unchanged():
    """resize = "pad" (the default, Jones) still keeps the aspect and pads."""
    plain, g = preprocess_frame(make_case(3, shape=(420, 300)).pixels, replace(STRETCH, resize="pad"))
    assert g.resized_h == STRETCH.size and g.resized_w < STRETCH.size and g.pad_left > 0
    assert (plain[:, : g.pad_left] == -1).all()


def test_keep_markers_keeps_the_marker_in_the_crop():
    """Today's crop drops a marker separated from the anatomy (on purpose); keep_markers never does."""
    dropped = 0
    for seed in MARKER_SEEDS:
        case = make_case(seed)
        kept = find_crop(case.pixels, keep_markers=True)
        anatomy = find_crop(case.pixels)
        assert _inside(kept, _glyph(case)), (seed, case.marker, kept)
        # the marker crop grows the anatomy crop, never shrinks it
        assert kept[0] <= anatomy[0] and kept[1] <= anatomy[1] and kept[2] >= anatomy[2] and kept[3] >= anatomy[3]
        dropped += _overlap(anatomy, case.marker) < 0.5
    assert dropped >= len(MARKER_SEEDS) // 3  # the anatomy crop leaves many markers (mostly) outside


def _within(box: tuple[int, int, int, int], area: tuple[int, int, int, int], slack: float) -> bool:
    y0, x0, y1, x1 = box
    ax0, ay0, ax1, ay1 = area
    return x0 >= ax0 - slack and y0 >= ay0 - slack and x1 <= ax1 + slack and y1 <= ay1 + slack


def test_keep_markers_still_removes_the_collimation_border():
    """Beyond the marker, borders go: the crop stays within the collimated field grown to include the marker.

    Only where today's crop removes the border too: a noisy border that the content test takes for
    content in places is kept by both (and keep_markers, which counts content however little, keeps more).
    """
    checked = 0
    for seed in MARKER_SEEDS:
        case = make_case(seed)
        slack = 0.03 * max(case.shape) + 8
        if not _within(find_crop(case.pixels), case.field, slack):
            continue
        fx0, fy0, fx1, fy1 = case.field
        mx0, my0, mx1, my1 = case.marker
        grown = (min(fx0, mx0), min(fy0, my0), max(fx1, mx1), max(fy1, my1))
        assert _within(find_crop(case.pixels, keep_markers=True), grown, slack), seed
        checked += 1
    assert checked >= len(MARKER_SEEDS) // 3


def test_crop_setting_reaches_preprocess_frame():
    case = make_case(4)
    _, kept = preprocess_frame(case.pixels, STRETCH)
    _, anatomy = preprocess_frame(case.pixels, replace(STRETCH, crop="anatomy"))
    assert (kept.y0, kept.x0, kept.y1, kept.x1) == find_crop(case.pixels, keep_markers=True)
    assert (anatomy.y0, anatomy.x0, anatomy.y1, anatomy.x1) == find_crop(case.pixels)


def test_without_lcn_the_members_input_is_the_plain_frame():
    case = make_case(5, shape=(420, 300))
    plain, geometry = preprocess_frame(case.pixels, STRETCH)
    pixels = normalize_frame(plain, STRETCH)
    assert pixels.shape == (1, STRETCH.size, STRETCH.size) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], plain)
    both, geometry_both = preprocess(case.pixels, STRETCH)
    assert geometry_both == geometry
    np.testing.assert_array_equal(both, pixels)
    with_lcn = normalize_frame(plain, replace(STRETCH, lcn=True))
    assert with_lcn.shape == (2, STRETCH.size, STRETCH.size)


def test_the_olczak_spec_prepares_a_plain_stretched_frame():
    from fracscan.pipeline import prepare

    spec = load_spec(builtin_spec_path("olczak2017"))
    prepared = prepare(png_bytes(make_case(6, shape=(420, 300))), None, spec)
    assert prepared.pixels.shape == (1, 256, 256)
    assert (prepared.geometry.resized_h, prepared.geometry.resized_w) == (256, 256)
    assert prepared.stated == ("", "")  # a PNG states no laterality or body part


def test_normalize_graph_without_lcn_is_the_identity():
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from fracscan.export.normalize import normalize_graph
    from fracscan.pipeline import normalize

    spec = load_spec(builtin_spec_path("olczak2017"))
    session = ort.InferenceSession(normalize_graph(spec.preprocess).SerializeToString())
    frames = np.random.default_rng(1).uniform(-1, 1, (3, 1, 256, 256)).astype(np.float32)
    (served,) = session.run(None, {"FRAME": frames})
    assert served.shape == (3, 1, 256, 256)
    np.testing.assert_array_equal(served, normalize(frames, spec))
