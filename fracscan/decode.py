"""Decode radiograph bytes (DICOM Part-10, PNG/JPEG/TIFF, NumPy .npy) to a grayscale array.

One home for decoding: the server's `preprocess` model, the in-process reference and the
client's optional client-side decoding all call `decode_image`. Errors are `DecodeError`
with a message that says what is wrong with the input (never patient identifiers).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

# DICOM tags whose values may name the anatomical region, most specific first.
REGION_TAGS = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")

Image.MAX_IMAGE_PIXELS = 20000 * 20000  # radiographs can be large, but not a decompression bomb


class DecodeError(ValueError):
    """The bytes are not a decodable single-frame grayscale radiograph."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # 2-D float32, larger = brighter
    kind: str  # "dicom", "png", "jpeg", "tiff" or "npy"
    region_terms: tuple[str, ...] = ()  # DICOM values that may name the region
    uids: dict[str, str] = field(default_factory=dict)  # sop / series / study instance UIDs


def sniff_kind(data: bytes) -> str | None:
    """Recognise the container by its magic bytes (not by file name)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    return None


def read_dicom_header(data: bytes) -> pydicom.Dataset:
    """Parse DICOM Part-10 bytes without decoding the pixels; check they are one image with pixel data.

    The client's cheap check before sending: `defer_size` skips large values (the pixel data)
    without copying them but keeps their tags, so "PixelData" in ds still works
    (`stop_before_pixels` would drop the tag itself).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
    except Exception as exc:  # pydicom raises many types on a broken header
        raise DecodeError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from None
    check_dicom_image(ds, has_pixels=True)
    return ds


def check_dicom_image(ds: pydicom.Dataset, has_pixels: bool | None = True) -> None:
    """Raise DecodeError unless ds is an image SOP class (and, if asked, carries pixel data)."""
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop)) if sop else "missing"
    if sop is not None and "Image Storage" not in sop_name and sop_name != str(sop):
        raise DecodeError(f"DICOM is not an image: SOP Class '{sop_name}' carries no pixels to score")
    if has_pixels and "PixelData" not in ds:
        raise DecodeError(f"DICOM has no pixel data (SOP Class '{sop_name}')")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DecodeError(f"DICOM has {frames} frames; one radiograph per file is expected")


def _to_gray(arr: np.ndarray, what: str, copy: bool = True) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour, e.g. a screenshot of a radiograph
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim != 2:
        raise DecodeError(f"{what}: expected a 2-D grayscale image, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise DecodeError(f"{what}: the image has no pixels")
    return arr.astype(np.float32, copy=copy)


def _rescale(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The modality LUT: pydicom's `apply_modality_lut`, in float32 for integer slope and intercept.

    pydicom rescales in float64, a third of the decoding time of a large radiograph; with
    integer slope and intercept float32 gives the same values (exact below 2**24).
    """
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return apply_modality_lut(arr, ds)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if not (slope.is_integer() and intercept.is_integer()):
        return apply_modality_lut(arr, ds)
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _decode_dicom(data: bytes) -> DecodedImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"unreadable DICOM: {exc}") from None
    check_dicom_image(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken / unsupported pixel data
        syntax = getattr(ds.file_meta.get("TransferSyntaxUID", None), "name", "unknown transfer syntax")
        raise DecodeError(f"DICOM pixel data cannot be decoded ({syntax}): {exc}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        arr = _rescale(arr, ds)
    arr = _to_gray(np.asarray(arr), "DICOM", copy=False)  # ds is ours: its pixels need no copy
    if photometric == "MONOCHROME1":  # stored inverted: low values are bright
        arr = np.subtract(
            np.float32(float(arr.max()) + float(arr.min())), arr, out=arr if arr.flags.writeable else None
        )
    terms = tuple(str(ds.get(t, "")).strip() for t in REGION_TAGS if str(ds.get(t, "")).strip())
    uids = {
        key: str(ds.get(tag))
        for key, tag in (("sop", "SOPInstanceUID"), ("series", "SeriesInstanceUID"), ("study", "StudyInstanceUID"))
        if ds.get(tag)
    }
    return DecodedImage(arr, "dicom", terms, uids)


def _decode_npy(data: bytes) -> DecodedImage:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"unreadable .npy array: {exc}") from None
    if arr.dtype.kind not in "uif" or arr.ndim != 2:
        raise DecodeError(f".npy must hold a 2-D numeric array, got dtype {arr.dtype} shape {arr.shape}")
    return DecodedImage(_to_gray(arr, ".npy"), "npy")


def _decode_pillow(data: bytes, kind: str) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                arr = np.asarray(img)
            else:  # palette, LA, RGB(A), CMYK... -> RGB, then luminance
                arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"unreadable {kind.upper()} image: {exc}") from None
    return DecodedImage(_to_gray(arr, kind.upper()), kind)


def _unbase64(data: bytes) -> bytes | None:
    """Plain JSON clients (curl) can only send text: accept base64 of a recognised file."""
    try:
        raw = base64.b64decode(bytes(data).strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if sniff_kind(raw[:132]) else None


def decode_image(data: bytes) -> DecodedImage:
    """Decode encoded image bytes (or their base64 text); raise DecodeError naming the problem."""
    if not data:
        raise DecodeError("empty input: no bytes were sent")
    kind = sniff_kind(bytes(data[:132]))
    if kind is None and (raw := _unbase64(data)) is not None:
        data, kind = raw, sniff_kind(raw[:132])
    if kind == "dicom":
        return _decode_dicom(bytes(data))
    if kind == "npy":
        return _decode_npy(bytes(data))
    if kind in ("png", "jpeg", "tiff"):
        return _decode_pillow(bytes(data), kind)
    raise DecodeError(
        "unrecognised image format: expected a DICOM Part-10 file (with 'DICM' preamble), "
        "a PNG, JPEG or TIFF image, or a NumPy .npy array (raw bytes or base64 text)"
    )
