"""Decode radiograph bytes (DICOM Part-10, PNG/JPEG/TIFF, NumPy .npy) to a grayscale array.

One home for decoding: the server's `preprocess` model, the in-process reference and the
client's optional client-side decoding all call `decode_image`. Errors are `DecodeError`
with a message that says what is wrong with the input (never patient identifiers, never a
pydicom element repr or traceback). Hostile input is refused before it costs memory: the pixel
count each format declares is checked before decoding, and a deflated DICOM is
inflated only up to what its declared image needs.
The attributes read besides the pixels (region terms, UIDs, stated laterality / body part) and
the safe wording of pydicom errors live in `fracscan.dicom_attributes`.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import ImageFile, Jpeg2KImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.tag import BaseTag
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
)

from fracscan import jpeg2000, settings
from fracscan.dicom_attributes import dicom_error_reason, instance_uids, region_terms, stated_labels

__all__ = [
    "DecodeError",
    "DecodedImage",
    "check_dicom_image",
    "decode_image",
    "max_pixels",
    "read_dicom_header",
    "sniff_kind",
]

DICOM_PREAMBLE = 128  # a Part-10 file: 128 bytes of preamble, then the magic "DICM"
SNIFF_BYTES = DICOM_PREAMBLE + 4  # enough to recognise every container `sniff_kind` knows
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FIRST_PIXEL_TAG = 0x7FE00008  # FloatPixelData; DoubleFloatPixelData and PixelData follow
# The elements before the pixel data of a deflated DICOM are inflated up to this size to read the
# declared image; real headers are a few KiB (a large private block or icon image: a few hundred).
DEFLATED_HEADER_LIMIT = 16 << 20
DEFLATED_TRAILER_SLACK = 1 << 20  # elements after the pixel data (e.g. trailing padding)

# The smallest side accepted: below it there is no radiograph to score (a 1 x 1 "image" is a mistake).
MIN_SIDE = 8
# JPEG frame headers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS's SOF55: all declare height, then width.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"
# JPEG 2000 in DICOM (Part 1 and High-Throughput): decodable at a reduced resolution level (fracscan.jpeg2000).
JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})


class DecodeError(ValueError):
    """The bytes are not a decodable single-frame grayscale radiograph."""


def max_pixels() -> int:
    """The pixel limit (fracscan.settings: FRACSCAN_MAX_PIXELS, else 100 MP); SettingError naming it when bad."""
    return settings.current().max_pixels


# Pillow's classes for the formats it decodes here. They are called directly, not through Image.open:
# its decompression-bomb check reads Pillow's process-wide MAX_IMAGE_PIXELS, which fracscan leaves alone
# (it belongs to the application); open_pillow applies fracscan's own limit to the size the header declares.
_PILLOW_FORMATS: dict[str, Callable[[IO[bytes]], ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "jpeg2000": Jpeg2KImagePlugin.Jpeg2KImageFile,
}
_NAMES = {"npy": ".npy", "jpeg2000": "JPEG 2000"}


def open_pillow(data: bytes, kind: str) -> ImageFile.ImageFile:
    """The image `data` holds, opened lazily (header only) and checked against the pixel limit before any
    pixel is decoded; Pillow's errors (SyntaxError, OSError, ...) pass through."""
    img = _PILLOW_FORMATS[kind](io.BytesIO(data))
    try:
        check_dimensions(img.size[0], img.size[1], _NAMES.get(kind, kind.upper()))
    except BaseException:
        img.close()
        raise
    return img


def check_dimensions(width: int, height: int, what: str) -> None:
    """Refuse an image too large (above the pixel limit) or too small to be a radiograph, from its size alone."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"{what}: the image has no pixels ({width} x {height})")
    limit = max_pixels()
    if width * height > limit:
        raise DecodeError(
            f"{what} image too large: {width} x {height} = {width * height / 1e6:.0f} megapixels, above the "
            f"limit of {limit / 1e6:g} megapixels ({settings.MAX_PIXELS_ENV})"
        )
    if min(width, height) < MIN_SIDE:
        raise DecodeError(f"{what} image too small: {width} x {height} pixels, at least {MIN_SIDE} a side expected")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first JPEG / JPEG-LS frame header, walking the markers before it."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _JPEG_SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _j2k_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ marker, or a JP2 file's image header box."""
    if data[:4] == _J2K_CODESTREAM and len(data) >= 24:
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", data[8:24])
        return xsiz - x0, ysiz - y0
    if data.startswith(_JP2_SIGNATURE) and (at := data.find(b"ihdr", 0, 4096)) >= 0 and len(data) >= at + 12:
        height, width = struct.unpack(">II", data[at + 4 : at + 12])
        return width, height
    return None


# numpy's stubs leave these untyped; the signatures are those numpy documents.
_read_magic = cast(Callable[[IO[bytes]], tuple[int, int]], np.lib.format.read_magic)
_ReadHeader = Callable[[IO[bytes]], tuple[tuple[int, ...], bool, np.dtype[Any]]]


def _npy_size(data: bytes) -> tuple[int, int] | None:
    fp = io.BytesIO(data)
    try:
        version = _read_magic(fp)
        read_header = cast(
            _ReadHeader,
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0,
        )
        shape = read_header(fp)[0]
    except (ValueError, OSError, EOFError):
        return None  # np.load reports it
    return (shape[1], shape[0]) if len(shape) == 2 else None


def declared_dimensions(data: bytes, kind: str) -> tuple[int, int] | None:
    """Check the (width, height) an encoded PNG, JPEG, TIFF or .npy declares, before decoding; return it.

    PNG's IHDR and JPEG's frame header are read here; TIFF through Pillow's lazy open (which reads
    only the directory). None when the header cannot be read (the decoder then says why).
    """
    size: tuple[int, int] | None = None
    if kind == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif kind == "jpeg":
        size = _jpeg_size(data)
    elif kind == "npy":
        size = _npy_size(data)
    elif kind == "jpeg2000":
        size = _j2k_size(data)
    elif kind == "tiff":
        try:
            with open_pillow(data, kind) as img:  # reads only the directory, and checks the size it declares
                return img.size
        except (DecodeError, settings.SettingError):
            raise
        except (OSError, ValueError, SyntaxError, struct.error):
            return None
    if size is not None:
        check_dimensions(size[0], size[1], _NAMES.get(kind, kind.upper()))
    return size


def check_encapsulated_frame(pixel_data: bytes) -> None:
    """The size the first compressed frame of DICOM pixel data declares (JPEG, JPEG-LS, JPEG 2000): its
    codec allocates that, whatever Rows and Columns say."""
    try:
        fragment = next(generate_fragments(pixel_data[8 + int.from_bytes(pixel_data[4:8], "little") :]), b"")
    except (ValueError, StopIteration, struct.error):
        return  # pydicom's decoder reports a broken encapsulation
    size = _jpeg_size(fragment) if fragment.startswith(b"\xff\xd8") else _j2k_size(fragment)
    if size is not None:
        check_dimensions(size[0], size[1], "DICOM compressed frame")


@dataclass(frozen=True)
class DecodedImage:
    pixels: NDArray[np.float32]  # 2-D float32, larger = brighter
    kind: str  # "dicom", "png", "jpeg", "tiff", "jpeg2000" or "npy"
    region_terms: tuple[str, ...] = ()  # DICOM values that may name the region
    uids: dict[str, str] = field(default_factory=dict)  # sop / series / study instance UIDs
    stated: tuple[str, str] = ("", "")  # ("ImageLaterality=L", "BodyPartExamined=WRIST"); "" when absent
    # JPEG 2000 decoded at a reduced resolution level: original pixels per decoded pixel (2**level), and the
    # original (rows, columns); 1 and the pixels' own shape otherwise.
    scale: int = 1
    original_shape: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the original image, whatever resolution was decoded."""
        return self.original_shape or (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def sniff_kind(data: bytes) -> str | None:
    """Recognise the container by its magic bytes (not by file name)."""
    if len(data) >= SNIFF_BYTES and data[DICOM_PREAMBLE:SNIFF_BYTES] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith((_J2K_CODESTREAM, _JP2_SIGNATURE)):
        return "jpeg2000"
    return None


def _int_attr(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    """An integer attribute, or DecodeError naming it (pydicom keeps an invalid IS such as "1A" as text)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            if default is None:
                raise DecodeError(f"DICOM attribute {keyword} is missing")
            return default
        number = int(value)
        if number != float(value):
            raise ValueError
    except DecodeError:
        raise
    except MemoryError:
        raise
    except Exception:  # text, several values, wrong length...: never quote it
        raise DecodeError(f"DICOM attribute {keyword} is not a valid integer") from None
    return number


def _float_attr(ds: pydicom.Dataset, keyword: str) -> float:
    try:
        return float(ds.get(keyword))
    except MemoryError:
        raise
    except Exception:
        raise DecodeError(f"DICOM attribute {keyword} is not a valid number") from None


def check_dicom_image(ds: pydicom.Dataset, has_pixels: bool | None = True) -> None:
    """Raise DecodeError unless ds is a single-frame image SOP class within the pixel limit (and, if
    asked, carries pixel data). Rows / Columns are checked when present (required with has_pixels)."""
    try:
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", str(sop)) if sop else "missing"
    except Exception:
        raise DecodeError("DICOM attribute SOPClassUID is not a valid UID") from None
    if sop is not None and "Image Storage" not in sop_name and sop_name != str(sop):
        raise DecodeError(f"DICOM is not an image: SOP Class '{sop_name}' carries no pixels to score")
    if has_pixels and not any(tag in ds for tag in PIXEL_DATA_TAGS):
        raise DecodeError(f"DICOM has no pixel data (SOP Class '{sop_name}')")
    frames = _int_attr(ds, "NumberOfFrames", default=1)
    if frames > 1:
        raise DecodeError(f"DICOM has {frames} frames; one radiograph per file is expected")
    if frames < 1:
        raise DecodeError(f"DICOM attribute NumberOfFrames is {frames}; one frame is expected")
    if has_pixels or ("Rows" in ds and "Columns" in ds):
        check_dimensions(_int_attr(ds, "Columns"), _int_attr(ds, "Rows"), "DICOM")


def _file_meta(data: bytes) -> tuple[pydicom.Dataset, int]:
    """The file meta group (always explicit VR little endian) and the offset where the data set starts."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    return meta, fp.tell()


def _inflate(deflated: bytes, max_length: int) -> bytes:
    """Raw-deflate `deflated` to at most max_length + 1 bytes (so a caller can see it would not stop)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        return inflater.decompress(deflated, max_length + 1)
    except zlib.error:
        raise DecodeError("deflated DICOM: the compressed data set is corrupt") from None


def _declared_pixel_bytes(ds: pydicom.Dataset) -> int:
    """What the declared native image occupies: rows x columns x samples x bits allocated."""
    samples = _int_attr(ds, "SamplesPerPixel", default=1)
    bits = _int_attr(ds, "BitsAllocated", default=16)
    pixels = _int_attr(ds, "Rows") * _int_attr(ds, "Columns") * max(samples, 1)
    return (pixels * max(bits, 1) + 7) // 8


def _deflated_header(deflated: bytes) -> tuple[pydicom.Dataset, int, list[int]]:
    """The elements before the pixel data, inflating 64 KiB, then 1 MiB, then DEFLATED_HEADER_LIMIT
    until they fit; returns them, their inflated length and the pixel data tag found (if any)."""
    seen: list[int] = []

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag >= _FIRST_PIXEL_TAG and tag.group == 0x7FE0:
            seen.append(int(tag))
            return True
        return False

    for size in (1 << 16, 1 << 20, DEFLATED_HEADER_LIMIT):
        head = _inflate(deflated, size)
        fp = io.BytesIO(head[:size])
        try:
            ds = read_dataset(fp, False, True, stop_when=at_pixels, defer_size=1024)
        except MemoryError:
            raise
        except Exception as exc:
            if len(head) > size:
                continue  # cut short by the step: inflate more
            raise DecodeError(f"unreadable DICOM header: {dicom_error_reason(exc)}") from None
        if seen or len(head) <= size:
            return ds, fp.tell(), seen
    raise DecodeError(f"deflated DICOM: more than {DEFLATED_HEADER_LIMIT >> 20} MiB before the pixel data")


def _read_deflated(data: bytes, meta: pydicom.Dataset, offset: int, header_only: bool) -> pydicom.Dataset:
    """Deflated Explicit VR Little Endian, inflated in bounded steps (pydicom inflates it all at once).

    The elements up to the pixel data are inflated first (at most DEFLATED_HEADER_LIMIT), the declared
    image is checked against the pixel limit, and the whole data set is then inflated only up to what
    that image needs: a stream that would inflate further is refused, whatever its ratio.
    """
    ds, header_bytes, seen = _deflated_header(data[offset:])
    check_dicom_image(ds, has_pixels=False)
    if not seen:
        raise DecodeError("DICOM has no pixel data")
    check_dimensions(_int_attr(ds, "Columns"), _int_attr(ds, "Rows"), "DICOM")
    if header_only:
        ds.file_meta = FileMetaDataset(meta)  # what pydicom's setter would convert it to
        return ds
    bound = header_bytes + 12 + _declared_pixel_bytes(ds) + DEFLATED_TRAILER_SLACK
    full = _inflate(data[offset:], bound)
    if len(full) > bound:
        raise DecodeError("deflated DICOM inflates beyond the size its declared image needs: refused")
    try:
        ds = read_dataset(io.BytesIO(full), False, True)
    except MemoryError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable DICOM: {dicom_error_reason(exc)}") from None
    ds.file_meta = FileMetaDataset(meta)  # what pydicom's setter would convert it to
    ds.set_original_encoding(False, True)
    return ds


def _read_dicom(data: bytes, header_only: bool) -> pydicom.Dataset:
    """Parse Part-10 bytes; `header_only` defers large values (the pixel data) without copying them."""
    try:
        meta, offset = _file_meta(data)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        if not deflated:
            ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024 if header_only else None)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types on a broken header
        what = "DICOM header" if header_only else "DICOM"
        raise DecodeError(f"unreadable {what}: {dicom_error_reason(exc)}") from None
    if deflated:
        return _read_deflated(data, meta, offset, header_only)
    check_dicom_image(ds, has_pixels=True)
    return ds


def read_dicom_header(data: bytes) -> pydicom.Dataset:
    """Parse DICOM Part-10 bytes without decoding the pixels; check they are one image with pixel data
    within the pixel limit.

    The client's cheap check before sending: `defer_size` skips large values (the pixel data)
    without copying them but keeps their tags, so "PixelData" in ds still works
    (`stop_before_pixels` would drop the tag itself).
    """
    return _read_dicom(data, header_only=True)


def _to_gray(arr: NDArray[Any], what: str, copy: bool = True) -> NDArray[np.float32]:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour, e.g. a screenshot of a radiograph
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim != 2:
        raise DecodeError(f"{what}: expected a 2-D grayscale image, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise DecodeError(f"{what}: the image has no pixels")
    check_dimensions(arr.shape[1], arr.shape[0], what)
    return arr.astype(np.float32, copy=copy)


def _rescale(arr: NDArray[Any], ds: pydicom.Dataset) -> NDArray[Any]:
    """The modality LUT: pydicom's `apply_modality_lut`, in float32 for integer slope and intercept.

    pydicom rescales in float64, a third of the decoding time of a large radiograph; with
    integer slope and intercept float32 gives the same values (exact below 2**24).
    """
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return apply_modality_lut(arr, ds)
    slope, intercept = _float_attr(ds, "RescaleSlope"), _float_attr(ds, "RescaleIntercept")
    if not (slope.is_integer() and intercept.is_integer()):
        return apply_modality_lut(arr, ds)
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


MaxScale = Callable[[tuple[int, int]], int]  # (rows, columns) of the original -> the largest scale to decode at


def _level(header: jpeg2000.CodestreamHeader, min_side: int, max_scale: MaxScale | None) -> int:
    limit = None if max_scale is None else max_scale((header.height, header.width))
    return jpeg2000.choose_level(header, min_side, limit)


def _reduced_j2k(
    data: bytes, min_side: int, max_scale: MaxScale | None, columns: int, rows: int
) -> tuple[NDArray[Any], int] | None:
    """A grayscale JPEG 2000 decoded at the coarsest level with a short side >= min_side: (stored values,
    scale); None when the full size is needed or the codestream does not say what it holds (then the
    full decode runs, and reports any problem)."""
    header = jpeg2000.read_header(data)
    if header is None or header.side(0) != (columns, rows):
        return None
    level = _level(header, min_side, max_scale)
    if level == 0:
        return None
    try:
        return jpeg2000.decode_at_level(data, header, level), 1 << level
    except MemoryError:
        raise
    except Exception:  # OpenJPEG refused the reduced decode: the full decode below tries and explains
        return None


def _stored_pixels(
    ds: pydicom.Dataset, syntax: Any, photometric: str, min_side: int, max_scale: MaxScale | None
) -> tuple[NDArray[Any], int]:
    """The stored values and their scale: a grayscale JPEG 2000 at a reduced level when min_side allows."""
    if (
        min_side > 0
        and syntax in JPEG2000_SYNTAXES
        and photometric in ("MONOCHROME1", "MONOCHROME2")
        and _int_attr(ds, "SamplesPerPixel", default=1) == 1
        and _int_attr(ds, "PixelRepresentation", default=0) == 0
        and "PixelData" in ds
    ):
        try:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        except (ValueError, StopIteration, struct.error):
            frame = b""  # a broken encapsulation: pydicom's decoder says what is wrong
        reduced = _reduced_j2k(frame, min_side, max_scale, _int_attr(ds, "Columns"), _int_attr(ds, "Rows"))
        if reduced is not None:
            return reduced
    return ds.pixel_array, 1


def _dicom_pixels(
    ds: pydicom.Dataset, min_side: int = 0, max_scale: MaxScale | None = None
) -> tuple[NDArray[np.float32], int]:
    """The stored pixels as brightness: palette applied, modality LUT applied, MONOCHROME1 inverted; and
    their scale (original pixels per decoded pixel: > 1 for a JPEG 2000 decoded at a reduced level)."""
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    if "PixelData" in ds and syntax is not None and syntax.is_encapsulated:
        check_encapsulated_frame(ds.PixelData)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        arr, scale = _stored_pixels(ds, syntax, photometric, min_side, max_scale)
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises many types for broken / unsupported pixel data
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise DecodeError(f"DICOM pixel data cannot be decoded ({name}): {dicom_error_reason(exc, ds)}") from None
    if photometric == "PALETTE COLOR":  # the stored values are indices into the palette, not brightness
        arr = apply_color_lut(arr, ds)
    elif photometric.startswith("MONOCHROME"):
        arr = _rescale(arr, ds)
    arr = _to_gray(np.asarray(arr), "DICOM", copy=False)  # ds is ours: its pixels need no copy
    if photometric == "MONOCHROME1":  # stored inverted: low values are bright
        arr = np.subtract(
            np.float32(float(arr.max()) + float(arr.min())), arr, out=arr if arr.flags.writeable else None
        )
    return arr, scale


def _decode_dicom(data: bytes, min_side: int = 0, max_scale: MaxScale | None = None) -> DecodedImage:
    ds = _read_dicom(data, header_only=False)
    try:
        arr, scale = _dicom_pixels(ds, min_side, max_scale)
        terms, uids, stated = region_terms(ds), instance_uids(ds), stated_labels(ds)
        shape = (_int_attr(ds, "Rows"), _int_attr(ds, "Columns")) if scale > 1 else None
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # a malformed attribute (LUT, photometric, description...): 400, never 500
        raise DecodeError(f"DICOM attributes cannot be used: {dicom_error_reason(exc, ds)}") from None
    return DecodedImage(arr, "dicom", terms, uids, stated, scale, shape)


def _decode_npy(data: bytes) -> DecodedImage:
    try:
        declared_dimensions(data, "npy")  # refuses a bomb declared in the header before np.load allocates
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except DecodeError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"unreadable .npy array: {exc}") from None
    if arr.dtype.kind not in "uif" or arr.ndim != 2:
        raise DecodeError(f".npy must hold a 2-D numeric array, got dtype {arr.dtype} shape {arr.shape}")
    return DecodedImage(_to_gray(arr, ".npy"), "npy")


def _decode_pillow(data: bytes, kind: str) -> DecodedImage:
    try:
        declared_dimensions(data, kind)  # PNG IHDR / JPEG SOF / TIFF IFD, before Pillow parses anything
        with open_pillow(data, kind) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
                arr = np.asarray(img)
            else:  # palette, LA, RGB(A), CMYK... -> RGB, then luminance
                arr = np.asarray(img.convert("RGB"))
    except (DecodeError, settings.SettingError):
        raise
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise DecodeError(f"unreadable {kind.upper()} image: {exc}") from None
    return DecodedImage(_to_gray(arr, kind.upper()), kind)


def _decode_jpeg2000(data: bytes, min_side: int, max_scale: MaxScale | None) -> DecodedImage:
    """A JPEG 2000 file (codestream or JP2): grayscale at the coarsest level min_side allows, else via Pillow."""
    declared_dimensions(data, "jpeg2000")
    header = jpeg2000.read_header(data)
    if header is None or not header.reducible:
        return _decode_pillow(data, "jpeg2000")
    level = _level(header, min_side, max_scale)
    try:
        arr = jpeg2000.decode_at_level(data, header, level)
    except MemoryError:
        raise
    except Exception as exc:  # OpenJPEG's errors (OSError, SyntaxError, ValueError)
        raise DecodeError(f"unreadable JPEG 2000 image: {exc}") from None
    shape = header.side(0)[::-1] if level else None
    return DecodedImage(_to_gray(arr, "JPEG 2000"), "jpeg2000", scale=1 << level, original_shape=shape)


def _unbase64(data: bytes) -> bytes | None:
    """Plain JSON clients (curl) can only send text: accept base64 of a recognised file."""
    try:
        raw = base64.b64decode(bytes(data).strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if sniff_kind(raw[:SNIFF_BYTES]) else None


def decode_image(data: bytes, min_side: int = 0, max_scale: MaxScale | None = None) -> DecodedImage:
    """Decode encoded image bytes (or their base64 text); raise DecodeError naming the problem.

    `min_side` > 0: a grayscale JPEG 2000 (DICOM or file) is decoded at the coarsest resolution level whose
    short side is still >= min_side (DecodedImage.scale says how much coarser; never below min_side), and
    whose scale is at most max_scale(original rows, columns) when given.
    """
    if not data:
        raise DecodeError("empty input: no bytes were sent")
    kind = sniff_kind(bytes(data[:SNIFF_BYTES]))
    if kind is None and (raw := _unbase64(data)) is not None:
        data, kind = raw, sniff_kind(raw[:SNIFF_BYTES])
    if kind == "dicom":
        return _decode_dicom(bytes(data), min_side, max_scale)
    if kind == "jpeg2000":
        return _decode_jpeg2000(bytes(data), min_side, max_scale)
    if kind == "npy":
        return _decode_npy(bytes(data))
    if kind in ("png", "jpeg", "tiff"):
        return _decode_pillow(bytes(data), kind)
    raise DecodeError(
        "unrecognised image format: expected a DICOM Part-10 file (with 'DICM' preamble), "
        "a PNG, JPEG, JPEG 2000 or TIFF image, or a NumPy .npy array (raw bytes or base64 text)"
    )
