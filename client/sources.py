"""Sources -> the bytes to send, plus what the client knows about them; cheap checks before sending.

A source is a path (str / PathLike: DICOM with or without a suffix, PNG, JPEG, TIFF, .npy —
recognised by content), encoded bytes, a `pydicom.Dataset` (sent as Part-10 bytes) or a
2-D numpy array (sent as .npy). Files are read when their request is about to be sent, never
up front. Anything that cannot be scored raises `InvalidInput` naming the source and the
problem, before a byte goes over the network.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray

from fracscan.acquisition import Acquisition, from_dataset, from_size
from fracscan.client.errors import InvalidInput
from fracscan.decode import SNIFF_BYTES, DecodeError, declared_dimensions, decode_image, read_dicom_header, sniff_kind
from fracscan.dicom_attributes import dicom_error_reason, instance_uids
from fracscan.scorable import not_a_radiograph

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | NDArray[Any] | pydicom.Dataset

HEAD_BYTES = SNIFF_BYTES  # enough to recognise every format
UNRECOGNISED = "unrecognised image format: expected DICOM Part-10 (with 'DICM' preamble), PNG, JPEG, TIFF or .npy"


@dataclass(frozen=True)
class Payload:
    """One input, ready to send."""

    label: str  # the path, or "<bytes>", "<array>", "<dataset>"
    data: bytes  # encoded image bytes as sent (DICOM, PNG, JPEG, TIFF or .npy)
    kind: str  # sniffed kind of `data`
    uids: dict[str, str] = field(default_factory=dict)  # sop / series / study instance UIDs (DICOM only)
    dicom_region: str | None = None  # decoded on the client: the DICOM region term to send as REGION
    acquisition: Acquisition = field(
        default_factory=Acquisition
    )  # the input's non-identifying acquisition facts (fracscan.acquisition)


def source_label(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, pydicom.Dataset):
        return "<dataset>"
    return f"<{type(source).__name__}>"


def read_source(source: Source, decode_on_client: bool = False, send_dicom: bool = False) -> Payload:
    """Read and check one source; raise InvalidInput(source label, problem).

    decode_on_client: send decoded pixels (.npy), with the DICOM region term as `dicom_region`;
    send_dicom: but a DICOM as it is (an ensemble with heads reads ImageLaterality / BodyPartExamined).
    """
    label = source_label(source)
    data = _raw_bytes(source, label)
    kind, uids, facts = check_encoded(data, label)
    if not decode_on_client or (send_dicom and kind == "dicom"):
        return Payload(label, data, kind, uids, acquisition=facts)
    try:
        decoded = decode_image(data)
    except DecodeError as exc:
        raise InvalidInput(str(exc), source=label) from None
    region = decoded.region_terms[0] if decoded.region_terms else None
    return Payload(label, _npy(compact_pixels(decoded.pixels)), "npy", uids, region, facts)


def compact_pixels(pixels: NDArray[np.float32]) -> NDArray[Any]:
    """The decoded float32 pixels as uint16 / int16 when that holds them exactly (half the bytes).

    Radiographs are integers of at most 16 bits stored, so this is the usual case; the server
    casts back to float32, so the answer cannot change.
    """
    lo, hi = float(pixels.min()), float(pixels.max())
    for dtype in (np.uint16, np.int16):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            packed = pixels.astype(dtype)
            if np.array_equal(packed, pixels):
                return packed
    return pixels


def check_encoded(data: bytes, label: str) -> tuple[str, dict[str, str], Acquisition]:
    """Cheap checks on encoded bytes: known format by magic bytes; the declared size within the pixel
    limit (PNG / JPEG / TIFF / .npy headers); for DICOM, a readable header of a single-frame image SOP
    class with pixel data and Rows / Columns within the limit, and a projection radiograph
    (`fracscan.scorable`). Returns (kind, DICOM UIDs, acquisition facts)."""
    if not data:
        raise InvalidInput("empty input: no bytes to send", source=label)
    kind = sniff_kind(data[:HEAD_BYTES])
    if kind is None:
        raise InvalidInput(UNRECOGNISED, source=label)
    try:
        if kind != "dicom":
            size = declared_dimensions(data, kind)
            return kind, {}, from_size(*size) if size else Acquisition()
        ds = read_dicom_header(data)
    except DecodeError as exc:
        raise InvalidInput(str(exc), source=label) from None
    reason = not_a_radiograph(ds)
    if reason:
        raise InvalidInput(reason, source=label)
    return kind, instance_uids(ds), from_dataset(ds)


def _raw_bytes(source: Source, label: str) -> bytes:
    if isinstance(source, str | os.PathLike):
        return _read_file(Path(source), label)
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, np.ndarray):
        if source.ndim != 2 or source.dtype.kind not in "uif" or source.size == 0:
            raise InvalidInput(
                f"expected a non-empty 2-D numeric array, got dtype {source.dtype} shape {source.shape}", source=label
            )
        return _npy(source)
    if isinstance(source, pydicom.Dataset):
        return _dataset_bytes(source, label)
    raise InvalidInput(
        f"unsupported source type {type(source).__name__}: pass a path, bytes, a pydicom Dataset or a 2-D numpy array",
        source=label,
    )


def _read_file(path: Path, label: str) -> bytes:
    """The file's bytes: its head first, and the rest only when the head is a known format.

    Opened without blocking and checked to be a regular file, so a FIFO or a device named as an
    input is refused instead of hanging the run; a large file of another kind costs SNIFF_BYTES (132) bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput("file not found", source=label) from None
    except PermissionError:
        raise InvalidInput("file is not readable (permission denied)", source=label) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read file: {exc.strerror or exc}", source=label) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InvalidInput("is a directory, not a file", source=label)
        raise InvalidInput("not a regular file (a FIFO, socket or device cannot be scored)", source=label)
    with open(fd, "rb") as f:
        try:
            head = f.read(HEAD_BYTES)
            if head and sniff_kind(head) is None:
                raise InvalidInput(UNRECOGNISED, source=label)
            return head + f.read()
        except OSError as exc:
            raise InvalidInput(f"cannot read file: {exc.strerror or exc}", source=label) from None


def _npy(array: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _dataset_bytes(ds: pydicom.Dataset, label: str) -> bytes:
    """Serialize to DICOM Part-10; a dataset built in memory without a transfer syntax gets explicit VR little endian."""
    meta = getattr(ds, "file_meta", None)
    encoding = {} if meta is not None and "TransferSyntaxUID" in meta else {"implicit_vr": False, "little_endian": True}
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True, **encoding)
    except Exception as exc:  # missing SOP Class / Instance UID, inconsistent encoding, bad values...
        # The reason names the exception and the attribute, never a value (pydicom quotes the element).
        raise InvalidInput(
            f"cannot write the dataset as DICOM Part-10: {dicom_error_reason(exc, ds)}", source=label
        ) from None
    return buf.getvalue()
