"""Tests of the synthetic radiograph generator (DEMO data, not clinical)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from fracscan.demo import synthetic as syn
from fracscan.demo.synthetic import (
    LOSSLESS,
    REGIONS,
    TRANSFER_SYNTAXES,
    SyntheticCase,
    can_write,
    cases,
    dataset,
    make_case,
    scenes,
    write_dicom,
    write_examples,
    write_non_image_dicom,
    write_png,
)

SMALL = (288, 232)  # rows, cols: fast, still large enough for every layout


def _seed_with_bits(bits: int, region: str = "wrist") -> int:
    for s in range(10_000):
        if scenes.choose(s, region, True, SMALL)[5] == bits:
            return s
    raise AssertionError(f"no seed gives {bits} bits")


@pytest.fixture(scope="module")
def case12() -> SyntheticCase:
    return make_case(_seed_with_bits(12), "wrist", True, SMALL)


@pytest.fixture(scope="module")
def case16() -> SyntheticCase:
    return make_case(_seed_with_bits(16), "knee", True, SMALL)


# ----------------------------------------------------------------------------- generator


def test_regions_are_the_sixteen_defaults():
    assert REGIONS == (
        "ankle",
        "clavicle",
        "elbow",
        "femur",
        "foot",
        "forearm",
        "hand",
        "hip",
        "humerus",
        "knee",
        "pelvis",
        "ribs",
        "shoulder",
        "spine",
        "tibia_fibula",
        "wrist",
    )
    assert set(syn.BODY_PART) == set(REGIONS)
    assert all(v == v.upper() for v in syn.BODY_PART.values())


def test_same_seed_same_case_and_different_seed_differs():
    a = make_case(1234, shape=SMALL)
    b = make_case(1234, shape=SMALL)
    assert np.array_equal(a.pixels, b.pixels)
    assert (a.box, a.region, a.fracture, a.laterality, a.bits_stored) == (
        b.box,
        b.region,
        b.fracture,
        b.laterality,
        b.bits_stored,
    )
    c = make_case(1235, shape=SMALL)
    assert not np.array_equal(a.pixels, c.pixels) or a.region != c.region


def test_default_shape_is_a_small_nonsquare_radiograph():
    shapes = [make_case(s).shape for s in (0, 1)]
    for h, w in shapes:
        assert min(h, w) >= 550 and max(h, w) <= 1000
        assert h != w


def test_case_is_12_to_16_bit_monochrome2():
    bits = set()
    for s in range(12):
        c = make_case(s, "forearm", False, (160, 128))
        assert c.pixels.dtype == np.uint16 and c.pixels.ndim == 2 and c.shape == (160, 128)
        assert 12 <= c.bits_stored <= 16
        assert int(c.pixels.max()) <= c.max_value
        assert c.laterality in ("R", "L") and c.box is None and c.fracture is False
        bits.add(c.bits_stored)
    assert len(bits) >= 2  # the bit depth varies with the seed


@pytest.mark.parametrize("region", REGIONS)
def test_fracture_box_is_inside_the_field_and_on_bone(region):
    seed = 7 + REGIONS.index(region)
    frac, _, layers_f = cases.build(seed, region, True, SMALL)
    norm, _, layers_n = cases.build(seed, region, False, SMALL)
    assert frac.fracture and frac.region == region and frac.box is not None and norm.box is None
    x0, y0, x1, y1 = frac.box
    h, w = frac.shape
    # inside the image, inside the collimated field, off the burned-in marker
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    fx0, fy0, fx1, fy1 = frac.field
    assert fx0 <= x0 and fy0 <= y0 and x1 <= fx1 and y1 <= fy1
    mx0, my0, mx1, my1 = frac.marker
    assert not (x0 < mx1 and mx0 < x1 and y0 < my1 and my0 < y1)
    # the same seed without the fracture: the box lies on bone, brighter than soft tissue
    bone = layers_n["bone"][y0:y1, x0:x1] > 0
    assert bone.mean() >= 0.3
    field_mask = np.zeros(frac.shape, bool)
    field_mask[fy0:fy1, fx0:fx1] = True
    field_mask[my0:my1, mx0:mx1] = False
    soft_only = field_mask & (layers_n["bone"] == 0) & (layers_n["soft"] > 0.5)
    soft_level = np.median(norm.pixels[soft_only])
    assert norm.pixels[y0:y1, x0:x1][bone].mean() > soft_level
    # the fracture changes the box visibly; bone is removed along the line
    f_box = frac.pixels[y0:y1, x0:x1].astype(float)
    n_box = norm.pixels[y0:y1, x0:x1].astype(float)
    assert np.abs(f_box - n_box).mean() > 0.01 * frac.max_value
    removed = layers_n["bone"][y0:y1, x0:x1] - layers_f["bone"][y0:y1, x0:x1]
    assert removed.max() > 0
    if frac.fracture_kind == "undisplaced":
        # a lucent line: darker with the fracture than without
        assert f_box.mean() < n_box.mean()
        # only the pixels around the line change (MTF blur reaches a few pixels)
        diff = frac.pixels.astype(int) != norm.pixels.astype(int)
        m = 8
        diff[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = False
        assert not diff.any()


def test_fracture_kinds_and_box_geometry_in_final_coordinates():
    kinds = set()
    for s in range(40):
        c = make_case(s, "tibia_fibula", True, SMALL)
        kinds.add(c.fracture_kind)
        x0, y0, x1, y1 = c.box
        assert x1 - x0 >= 2 and y1 - y0 >= 2
    assert kinds == {"undisplaced", "displaced", "angulated"}


def test_fracture_is_not_an_intensity_statistic():
    # the whole-image mean varies far more between seeds than the fracture changes it
    deltas, spread = [], []
    for s in range(8):
        f = make_case(s, "forearm", True, SMALL)
        n = make_case(s, "forearm", False, SMALL)
        deltas.append(abs(f.pixels.mean() - n.pixels.mean()) / f.max_value)
        spread.append(n.pixels.mean() / n.max_value)
    assert max(deltas) < 0.1 * np.std(spread)


def test_dataset_is_deterministic_and_reproducible():
    a = list(dataset(6, seed=3, shape=SMALL))
    b = list(dataset(6, seed=3, shape=SMALL))
    assert [c.seed for c in a] == [c.seed for c in b]
    assert all(np.array_equal(x.pixels, y.pixels) and x.box == y.box for x, y in zip(a, b, strict=True))
    again = make_case(a[2].seed, a[2].region, a[2].fracture, SMALL)
    assert np.array_equal(again.pixels, a[2].pixels)
    assert len({c.seed for c in a}) == 6
    assert all(c.fracture for c in dataset(3, 1, fracture_rate=1.0, shape=SMALL))
    none = list(dataset(3, 1, fracture_rate=0.0, regions=("hand", "knee"), shape=SMALL))
    assert not any(c.fracture for c in none) and {c.region for c in none} <= {"hand", "knee"}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown region"):
        make_case(1, "skull")
    with pytest.raises(ValueError, match="seed"):
        make_case(-1)
    with pytest.raises(ValueError, match="shape"):
        make_case(1, shape=(20, 20))
    with pytest.raises(ValueError, match="fracture_rate"):
        next(dataset(1, 1, fracture_rate=2.0))


# ----------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("bits", [8, 16])
def test_png_round_trip(tmp_path, case12, bits):
    from PIL import Image

    p = write_png(case12, tmp_path / f"x{bits}.png", bits=bits)
    with Image.open(p) as im:
        arr = np.asarray(im)
    expect = np.rint(case12.pixels.astype(float) * ((1 << bits) - 1) / case12.max_value)
    assert arr.shape == case12.shape
    assert np.array_equal(arr.astype(np.int64), expect.astype(np.int64))


# ----------------------------------------------------------------------------- DICOM


def _expected(case: SyntheticCase, name: str) -> np.ndarray:
    ref = case.pixels.astype(np.float64)
    if name == "jpeg_baseline_8bit":
        return np.rint(ref * 255 / case.max_value)
    if name == "jpeg_extended_12bit" and case.bits_stored > 12:
        return np.rint(ref * 4095 / case.max_value)
    return ref


def _as_monochrome2(ds) -> np.ndarray:
    arr = ds.pixel_array.astype(np.int64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = (1 << int(ds.BitsStored)) - 1 - arr
    return arr


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("name", list(TRANSFER_SYNTAXES))
def test_dicom_round_trip_every_transfer_syntax(tmp_path, case12, case16, name, photometric):
    ts = TRANSFER_SYNTAXES[name]
    if not can_write(ts):
        pytest.skip(f"no encoder installed for {ts.name}")
    for case in (case12, case16):
        p = write_dicom(case, tmp_path / f"{name}_{case.bits_stored}.dcm", transfer_syntax=ts, photometric=photometric)
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ts
        assert ds.PhotometricInterpretation == photometric
        assert int(ds.HighBit) == int(ds.BitsStored) - 1 and ds.PixelRepresentation == 0
        got = _as_monochrome2(ds)
        want = _expected(case, name)
        assert got.shape == case.shape
        if ts in LOSSLESS:
            assert ds.BitsAllocated == 16 and ds.BitsStored == case.bits_stored
            assert np.array_equal(got, want.astype(np.int64))
            assert ds.LossyImageCompression == "00"
        else:
            peak = float((1 << int(ds.BitsStored)) - 1)
            err = np.abs(got - want)
            assert err.mean() < 0.01 * peak
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
            assert ds.LossyImageCompression == "01"


def test_uncompressed_syntaxes_always_writable():
    for name in (
        "explicit_vr_little_endian",
        "implicit_vr_little_endian",
        "explicit_vr_big_endian",
        "deflated_explicit_vr_little_endian",
        "rle_lossless",
        "jpeg2000_lossless",
        "jpeg2000_lossy",
    ):
        assert can_write(TRANSFER_SYNTAXES[name]), name
    assert set(LOSSLESS) <= set(TRANSFER_SYNTAXES.values())
    assert TRANSFER_SYNTAXES["jpeg2000_lossy"] not in LOSSLESS


@pytest.mark.parametrize(
    "modality,sop", [("DX", DigitalXRayImageStorageForPresentation), ("CR", ComputedRadiographyImageStorage)]
)
def test_dicom_header(tmp_path, case12, modality, sop):
    p1 = write_dicom(case12, tmp_path / "a.dcm", modality=modality)
    p2 = write_dicom(case12, tmp_path / "b.dcm", modality=modality)
    assert p1.read_bytes()[128:132] == b"DICM"
    a, b = pydicom.dcmread(p1), pydicom.dcmread(p2)
    assert a.SOPClassUID == sop == a.file_meta.MediaStorageSOPClassUID
    assert a.Modality == modality
    assert a.BodyPartExamined == "WRIST"
    assert a.StudyDescription == "XR WRIST 2 VIEWS"
    assert str(a.PatientName) == "SYNTHETIC^DEMO" and a.PatientID == f"DEMO-{case12.seed}"
    lat = a.get("ImageLaterality") if modality == "DX" else a.get("Laterality")
    assert lat == case12.laterality
    assert a.BitsAllocated == 16 and a.BitsStored == case12.bits_stored and a.SamplesPerPixel == 1
    assert float(a.RescaleSlope) == 1.0 and float(a.WindowWidth) > 0
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[kw].value == b[kw].value  # deterministic from the seed
    other = write_dicom(make_case(case12.seed + 1, "wrist", False, SMALL), tmp_path / "c.dcm", modality=modality)
    assert pydicom.dcmread(other).StudyInstanceUID != a.StudyInstanceUID
    assert syn.DEMO_NOTICE in a.ImageComments


def test_dicom_options(tmp_path, case16):
    p = write_dicom(
        case16,
        tmp_path / "x",
        photometric="MONOCHROME1",
        body_part="leg",
        patient_name="A^B",
        patient_id="P1",
        rescale_intercept=-1024,
    )
    ds = pydicom.dcmread(p)
    assert ds.BodyPartExamined == "LEG" and str(ds.PatientName) == "A^B" and ds.PatientID == "P1"
    assert float(ds.RescaleIntercept) == -1024
    assert np.array_equal(_as_monochrome2(ds), case16.pixels.astype(np.int64))
    assert (
        pydicom.dcmread(write_dicom(make_case(2, "tibia_fibula", False, SMALL), tmp_path / "t.dcm")).BodyPartExamined
        == "LEG"
    )
    spine = pydicom.dcmread(write_dicom(make_case(2, "spine", False, SMALL), tmp_path / "s.dcm"))
    assert spine.ImageLaterality == "U"
    with pytest.raises(ValueError, match="photometric"):
        write_dicom(case16, tmp_path / "y.dcm", photometric="RGB")
    with pytest.raises(ValueError, match="transfer syntax"):
        write_dicom(case16, tmp_path / "y.dcm", transfer_syntax="1.2.3.4")


def test_non_image_dicom_has_no_pixels(tmp_path):
    p = write_non_image_dicom(tmp_path / "report.dcm")
    ds = pydicom.dcmread(p)
    assert ds.SOPClassUID == pydicom.uid.BasicTextSRStorage
    assert ds.Modality == "SR"
    assert "PixelData" not in ds
    with pytest.raises(AttributeError):
        ds.pixel_array  # noqa: B018


# ----------------------------------------------------------------------------- examples


def test_write_examples(tmp_path):
    files = write_examples(tmp_path / "examples")
    out = tmp_path / "examples"
    total = sum(f.stat().st_size for f in out.iterdir())
    assert total < 3_000_000
    with (out / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["source", "fracture", "region", "x0", "y0", "x1", "y1"]
    assert len(rows) >= 12 and all((out / r["source"]).exists() for r in rows)
    assert len({r["region"] for r in rows}) >= 6
    assert {r["fracture"] for r in rows} == {"0", "1"}
    names = [r["source"] for r in rows]
    assert any(not Path(n).suffix for n in names)  # a DICOM without .dcm
    photometrics, syntaxes, png_bits = set(), set(), set()
    for r in rows:
        p = out / r["source"]
        if p.suffix == ".png":
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im)
            png_bits.add(arr.dtype.itemsize * 8)
            shape = arr.shape
        else:
            ds = pydicom.dcmread(p)
            photometrics.add(ds.PhotometricInterpretation)
            syntaxes.add(ds.file_meta.TransferSyntaxUID)
            shape = (ds.Rows, ds.Columns)
        if r["fracture"] == "1":
            x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]
        else:
            assert r["x0"] == r["y1"] == ""
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert syntaxes & {TRANSFER_SYNTAXES["jpeg2000_lossless"], TRANSFER_SYNTAXES["jpeg2000_lossy"]}
    assert png_bits == {8, 16}
    assert (out / "labels.csv") in files
