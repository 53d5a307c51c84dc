"""The numpy algorithm core: cropping, resize geometry, LCN, thresholds, boxes, spec, decoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from fracscan.decode import DecodeError, decode_image
from fracscan.postprocess import decide, extract_boxes
from fracscan.preprocess import EmptyImageError, Geometry, find_crop, preprocess
from fracscan.spec import PreprocessSpec, SpecError, builtin_spec_path, load_spec, parse_spec
from fracscan.thresholds import OperatingPoint, Thresholds, ThresholdsError

SPEC = PreprocessSpec(size=256, lcn_sigma=4.0)


def radiograph(h=700, w=500, box=(120, 90, 600, 420), border="noisy", marker=True, seed=0):
    """Anatomy (soft tissue + a bright bone) inside a border; returns (image, anatomy box y0,x0,y1,x1)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    if border == "noisy":
        img += rng.normal(60, 25, (h, w)).clip(0)
    elif border == "bright":
        img += 4000
    y0, x0, y1, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    tissue = 1200 + 300 * np.sin(yy / 37.0) + rng.normal(0, 40, yy.shape)
    bone = np.abs(xx - (x0 + x1) / 2) < (x1 - x0) / 6
    img[y0:y1, x0:x1] = tissue + bone * 1500
    if marker:  # burned-in "R" in the border, bright like the bone
        pil = Image.fromarray(np.zeros((h, w), np.uint8))
        ImageDraw.Draw(pil).text((w - 60, 20), "R", fill=255, font_size=36)
        img = np.where(np.asarray(pil) > 0, 3500, img)
    return img, box


@pytest.mark.parametrize("border", ["black", "noisy", "bright"])
def test_crop_finds_anatomy_inside_borders_with_marker(border):
    img, (y0, x0, y1, x1) = radiograph(border=border)
    cy0, cx0, cy1, cx1 = find_crop(img)
    tol = 12  # "within a few pixels": the crop keeps a small safety margin
    assert cy0 <= y0 and cx0 <= x0 and cy1 >= y1 and cx1 >= x1, "crop cut into the anatomy"
    assert y0 - cy0 <= tol and x0 - cx0 <= tol and cy1 - y1 <= tol and cx1 - x1 <= tol, (cy0, cx0, cy1, cx1)


def test_crop_keeps_faint_edge_of_anatomy():
    img, (y0, x0, _y1, _x1) = radiograph(border="black", marker=False)
    img[y0 - 20 : y0, x0 + 100 : x0 + 140] = 900  # a fingertip: few pixels per row, but anatomy
    cy0, *_ = find_crop(img)
    assert cy0 <= y0 - 20


@pytest.mark.parametrize(
    "shape,dtype",
    [((1, 1), np.uint16), ((16, 16), np.uint8), ((5, 300), np.float32), ((300, 5), np.uint16), ((256, 256), np.uint8)],
)
def test_degenerate_images_give_finite_frames(shape, dtype):
    rng = np.random.default_rng(1)
    img = (rng.random(shape) * 200 + 1).astype(dtype)
    pixels, geometry = preprocess(img, SPEC)
    assert pixels.shape == (2, 256, 256) and np.all(np.isfinite(pixels))
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert max(geometry.resized_h, geometry.resized_w) == 256


def test_flat_and_low_bit_depth_images():
    flat, _ = preprocess(np.full((400, 300), 777, np.uint16), SPEC)
    assert np.all(np.isfinite(flat)) and np.all(np.abs(flat) <= 1)
    binary = (np.indices((300, 300)).sum(0) % 2).astype(np.uint8)  # 1-bit checkerboard
    pixels, _ = preprocess(binary, SPEC)
    assert np.all(np.isfinite(pixels))


def test_black_image_is_a_clear_error():
    with pytest.raises(EmptyImageError, match="entirely black"):
        preprocess(np.zeros((100, 100), np.uint16), SPEC)


@pytest.mark.slow
def test_very_large_image():
    img, _ = radiograph(8000, 8000, box=(1000, 1500, 7000, 6500), marker=False)
    pixels, geometry = preprocess(img, SPEC)
    assert np.all(np.isfinite(pixels)) and geometry.y1 - geometry.y0 >= 6000


def test_aspect_ratio_preserved_and_centred():
    img, _ = radiograph(800, 400, box=(0, 0, 800, 400), border="black", marker=False)
    _, g = preprocess(img, SPEC)
    assert (g.resized_h, g.resized_w) == (256, 128)
    assert (g.pad_top, g.pad_left) == (0, 64)


def test_lcn_channel_range_and_contrast():
    img, _ = radiograph()
    pixels, _ = preprocess(img, SPEC)
    plain, lcn = pixels
    assert -1 <= lcn.min() < -0.3 and 0.3 < lcn.max() <= 1  # uses the range
    assert np.all(plain[:, :5] == -1)  # the padding is black in the plain channel


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(20, 3000),
    w=st.integers(20, 3000),
    y0=st.integers(0, 500),
    x0=st.integers(0, 500),
    size=st.sampled_from([64, 256, 1024]),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_geometry_round_trip_within_one_pixel(h, w, y0, x0, size, fx, fy):
    y1, x1 = y0 + h, x0 + w
    scale = size / max(h, w)
    rh, rw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    g = Geometry(y0, x0, y1, x1, rh, rw, (size - rh) // 2, (size - rw) // 2, size)
    original = np.array([x0 + fx * w, y0 + fy * h])
    back = g.frame_to_original(g.original_to_frame(original))
    assert np.all(np.abs(back - original) <= 1.0)
    # a box in the frame maps back inside the crop, within 1 original pixel of its exact preimage
    frame_box = g.original_to_frame(np.array([[x0, y0], [x1, y1]]))
    assert np.allclose(g.frame_to_original(frame_box), [[x0, y0], [x1, y1]], atol=1.0)
    assert g == Geometry.from_array(g.to_array())


def test_boxes_from_map_land_on_the_hot_spot():
    g = Geometry(100, 50, 612, 306, 256, 128, 0, 64, 256)  # crop 512 x 256 -> scale 0.5
    prob = np.zeros((32, 32), np.float32)
    prob[10:12, 12:14] = 0.9  # frame x 96..112, y 80..96
    prob[20, 20] = 0.6
    boxes = extract_boxes(prob, 0.5, g)
    assert boxes.shape == (2, 5) and boxes[0, 4] == pytest.approx(0.9)
    # frame x 96 -> original 50 + (96 - 64) / 0.5 = 114; y 80 -> 100 + 160 = 260
    assert np.allclose(boxes[0, :4], [114, 260, 146, 292])
    assert len(extract_boxes(prob, 0.95, g)) == 0


def test_box_edges_fall_inside_map_cells():
    """The map is upsampled before binarising: a box edge need not lie on the stride-8 grid."""
    identity = Geometry(0, 0, 128, 128, 128, 128, 0, 0, 128)
    prob = np.zeros((16, 16), np.float32)
    prob[5, 5], prob[5, 6] = 1.0, 0.6  # cell centres at x = 44 and 52 (frame = original here)
    # bilinear between the centres: 0.5 is crossed at x = 40 (left), 53.3 (right), y = 40 and 48
    (box,) = extract_boxes(prob, 0.5, identity)
    assert np.allclose(box[:4], [40, 40, 53, 48])
    assert 0.9 < box[4] <= 1.0  # the peak of the upsampled map inside the region


def test_threshold_decision_per_region_and_fallback():
    t = Thresholds({"wrist": OperatingPoint(0.3, 0.5)}, OperatingPoint(0.6, 0.5))
    g = Geometry(0, 0, 256, 256, 256, 256, 0, 0, 256)
    assert decide(0.3, None, "wrist", g, t).fracture  # score >= threshold
    assert not decide(0.29, None, "wrist", g, t).fracture
    d = decide(0.5, None, "unknown", g, t)
    assert not d.fracture and d.fallback and d.threshold == 0.6


def test_thresholds_file_round_trip_and_errors(tmp_path):
    t = Thresholds({"hand": OperatingPoint(0.4, 0.3)}, OperatingPoint(0.5, 0.5), {"target_sensitivity": 0.925})
    t.save(tmp_path / "t.json")
    assert Thresholds.load(tmp_path / "t.json") == t
    (tmp_path / "bad.json").write_text(
        json.dumps({"regions": {"hand": {"threshold": 2}}, "fallback": {"threshold": 0.5}})
    )
    with pytest.raises(ThresholdsError, match=r"bad.json: region 'hand' thresholds must lie in \[0, 1\]"):
        Thresholds.load(tmp_path / "bad.json")


def test_builtin_specs_and_region_resolution():
    spec = load_spec(builtin_spec_path("jones2020"))
    assert len(spec.members) == 10 and len(spec.regions) == 16 and spec.preprocess.size == 1024
    assert spec.map_members and len(spec.map_members) < 10
    assert spec.resolve_region(None, ("LOWER LEG",)) == ("tibia_fibula", "dicom")
    assert spec.resolve_region(None, ("", "XR WRIST 3 VIEWS LT")) == ("wrist", "dicom")
    assert spec.resolve_region("Hand", ("KNEE",)) == ("hand", "user")
    assert spec.resolve_region("skull") == ("unknown", "user")
    assert spec.resolve_region(None, ("CHEST",)) == ("unknown", "unknown")


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(SpecError, match=r"member #0 .*arch = 'resnet'"):
        parse_spec({"regions": {"hand": ["HAND"]}, "members": [{"name": "a", "arch": "resnet"}]})
    with pytest.raises(SpecError, match="unique"):
        parse_spec({"regions": {"hand": []}, "members": [{"name": "a", "arch": "drn_d_22"}] * 2})
    (tmp_path / "s.toml").write_text("name = [")
    with pytest.raises(SpecError, match=r"s\.toml: not valid TOML"):
        load_spec(tmp_path / "s.toml")


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_png_8_16_bit_and_colour():
    arr16 = (np.arange(64 * 48).reshape(64, 48) * 13).astype(np.uint16)
    assert np.array_equal(decode_image(_png(arr16)).pixels, arr16.astype(np.float32))
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 1] = 200
    gray = decode_image(_png(rgb)).pixels
    assert gray.shape == (10, 12) and np.allclose(gray, 200 * 0.587, atol=0.01)


def _dicom(arr, photometric="MONOCHROME2", slope=1.0, intercept=0.0, body_part="WRIST") -> bytes:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PatientName, ds.Modality, ds.BodyPartExamined = "TEST^PATIENT", "DX", body_part
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_decode_dicom_modality_lut_and_monochrome1():
    arr = (np.arange(40 * 30).reshape(40, 30) % 4000).astype(np.uint16)
    d2 = decode_image(_dicom(arr, slope=2.0, intercept=-100))
    assert d2.kind == "dicom" and d2.region_terms[0] == "WRIST" and "sop" in d2.uids
    assert np.allclose(d2.pixels, arr * 2.0 - 100)
    d1 = decode_image(_dicom(arr.max() - arr, photometric="MONOCHROME1"))
    assert np.allclose(d1.pixels - d1.pixels.min(), arr - arr.min())  # inverted back: larger = brighter


def test_decode_errors_are_specific():
    with pytest.raises(DecodeError, match="empty input"):
        decode_image(b"")
    with pytest.raises(DecodeError, match="unrecognised image format"):
        decode_image(b"hello world" * 20)
    with pytest.raises(DecodeError, match="unreadable PNG"):
        decode_image(_png(np.ones((50, 50), np.uint8))[:60])
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4, 5)))
    with pytest.raises(DecodeError, match="2-D numeric array"):
        decode_image(buf.getvalue())
    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    sr.save_as(out, enforce_file_format=True)
    with pytest.raises(DecodeError, match="not an image: SOP Class 'Basic Text SR Storage'"):
        decode_image(out.getvalue())
