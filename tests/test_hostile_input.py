"""Hostile and malformed input is refused cheaply and specifically.

Decompression bombs are real files (a 20000 x 20000 PNG and a deflated DICOM of 20000 x 20000 pixels,
a few hundred KiB each); their refusal is timed and its peak memory measured in a fresh process.
DICOM files carry patient and study identifiers, none of which may appear in any error.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from fracscan import settings
from fracscan.client import InvalidInput
from fracscan.client.sources import read_source
from fracscan.decode import MIN_SIDE, DecodeError, decode_image, max_pixels, read_dicom_header

IDENTIFIERS = {"PatientName": "SECRETNAME^JANE", "PatientID": "PID77731", "PatientBirthDate": "19420101"}
ACCESSION = "ACC99917"
BOMB_SIDE = 20000


def image_dataset(rows: int, cols: int, bits: int = 8, syntax=uid.ExplicitVRLittleEndian) -> Dataset:
    """A DX image header carrying patient and study identifiers (no pixel data yet)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.AccessionNumber, ds.Modality, ds.BodyPartExamined = ACCESSION, "DX", "WRIST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def small_image() -> np.ndarray:
    return (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid 8-bit gray PNG of side x side black pixels: ~0.4 MB on disk, 400 MB decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate, row = zlib.compressobj(9), b"\x00" * (side + 1)  # filter byte + one row
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def deflated_dicom(rows: int, cols: int, pixel_bytes: int) -> bytes:
    """Deflated Explicit VR Little Endian Part-10 whose pixel data is `pixel_bytes` zeros, streamed
    through the deflater (pydicom would need them all in memory to write it)."""
    ds = image_dataset(rows, cols, syntax=uid.DeflatedExplicitVRLittleEndian)
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflate.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes))]
    block = bytes(1 << 20)
    parts += [deflate.compress(block) for _ in range(pixel_bytes // len(block))]
    parts += [deflate.compress(bytes(pixel_bytes % len(block))), deflate.flush()]
    return meta.getvalue() + b"".join(parts)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    files = {
        "png": (root / "bomb.png", png_bomb()),
        "dicom": (root / "bomb.dcm", deflated_dicom(BOMB_SIDE, BOMB_SIDE, BOMB_SIDE * BOMB_SIDE)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {kind: path for kind, (path, _) in files.items()}


MEASURE = """
import json, resource, sys, time
from fracscan.decode import DecodeError, decode_image
data = open(sys.argv[1], "rb").read()
decode_image(open(sys.argv[2], "rb").read())  # warm-up: codec imports are not the refusal's cost
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    decode_image(data)
    error = None
except DecodeError as exc:
    error = str(exc)
ms = (time.perf_counter() - start) * 1e3
print(json.dumps({"ms": ms, "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "error": error}))
"""


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_decompression_bomb_refused_fast_without_allocating_the_pixels(bombs, kind, tmp_path):
    """20000 x 20000 = 400 MP: refused from the declared size in milliseconds; the peak memory of the
    refusal stays far below the 400 MB one decoded 8-bit plane would take."""
    warm = tmp_path / "warm.dcm"
    warm.write_bytes(deflated_dicom(64, 64, 64 * 64) if kind == "dicom" else png_bomb(64))
    env = {**os.environ}
    env.pop("FRACSCAN_MAX_PIXELS", None)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bombs[kind]), str(warm)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["error"] and "too large: 20000 x 20000 = 400 megapixels" in result["error"], result
    assert "above the limit of 100 megapixels (FRACSCAN_MAX_PIXELS)" in result["error"]
    assert result["ms"] < 250 and result["peak_mib"] < 32, result  # measured: < 2 ms, < 2 MiB


@pytest.fixture
def environment(monkeypatch):
    """monkeypatch for environment variables, with fracscan's settings read again after each change is undone."""
    yield monkeypatch
    monkeypatch.undo()
    settings.refresh()


def test_the_limit_is_configurable_and_pillows_own_is_left_alone(environment):
    pillows = Image.MAX_IMAGE_PIXELS
    png = io.BytesIO()
    Image.fromarray(small_image()).save(png, format="PNG")
    assert decode_image(png.getvalue()).pixels.shape == (64, 80)
    environment.setenv("FRACSCAN_MAX_PIXELS", "5000")  # 64 x 80 = 5120
    assert decode_image(png.getvalue()).pixels.shape == (64, 80)  # read once: a change needs refresh()
    settings.refresh()
    with pytest.raises(DecodeError, match="PNG image too large: 80 x 64"):
        decode_image(png.getvalue())
    tiff, npy = io.BytesIO(), io.BytesIO()
    Image.fromarray(small_image()).save(tiff, format="TIFF")
    np.save(npy, small_image())
    with pytest.raises(DecodeError, match="TIFF image too large: 80 x 64"):  # Pillow's lazy open: no pixel read
        decode_image(tiff.getvalue())
    with pytest.raises(DecodeError, match=r"\.npy image too large: 80 x 64"):
        decode_image(npy.getvalue())
    assert pillows == Image.MAX_IMAGE_PIXELS
    environment.setenv("FRACSCAN_MAX_PIXELS", "lots")
    settings.refresh()
    with pytest.raises(settings.SettingError, match="FRACSCAN_MAX_PIXELS must be a positive number of pixels"):
        max_pixels()


def test_pillows_limit_does_not_bind_fracscan_above_it(environment):
    """An application's own (lower) Pillow limit is its business: fracscan decodes up to its own limit."""
    environment.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png = io.BytesIO()
    Image.fromarray(small_image()).save(png, format="PNG")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png.getvalue()))  # the application's limit, for its own use of Pillow
    assert decode_image(png.getvalue()).pixels.shape == (64, 80)


BAD_SETTING = """
import PIL.Image, json, sys
before = PIL.Image.MAX_IMAGE_PIXELS
import fracscan.client, fracscan.decode, fracscan.server
after = PIL.Image.MAX_IMAGE_PIXELS
try:
    fracscan.decode.decode_image(open(sys.argv[1], "rb").read())
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"before": before, "after": after, "error": error}))
"""


def test_a_bad_pixel_limit_does_not_break_the_import_and_fails_the_decode_naming_it(tmp_path):
    png = tmp_path / "small.png"
    Image.fromarray(small_image()).save(png, format="PNG")
    done = subprocess.run(
        [sys.executable, "-c", BAD_SETTING, str(png)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FRACSCAN_MAX_PIXELS": "bogus"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["after"] == result["before"]  # Pillow's own limit, untouched by importing fracscan
    assert result["error"] == "SettingError: FRACSCAN_MAX_PIXELS must be a positive number of pixels, got 'bogus'"


def test_deflated_dicom_decodes_and_one_that_inflates_beyond_its_image_is_refused():
    ds = image_dataset(64, 80, syntax=uid.DeflatedExplicitVRLittleEndian)
    ds.PixelData = small_image().tobytes()
    decoded = decode_image(part10(ds))
    assert decoded.kind == "dicom" and np.array_equal(decoded.pixels, small_image().astype(np.float32))
    assert decoded.region_terms == ("WRIST",) and read_dicom_header(part10(ds)).Rows == 64
    lying = deflated_dicom(64, 80, 300 << 20)  # declares 5120 pixels, inflates to 300 MB
    with pytest.raises(DecodeError, match="inflates beyond the size its declared image needs"):
        decode_image(lying)


def _jpeg(side_declared: int | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(small_image()).save(buf, format="JPEG")
    data = buf.getvalue()
    if side_declared is None:
        return data
    sof = data.find(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", side_declared, side_declared) + data[sof + 9 :]


def test_jpeg_and_jpeg2000_frame_headers_are_checked_also_inside_dicom():
    with pytest.raises(DecodeError, match="JPEG image too large: 60000 x 60000"):
        decode_image(_jpeg(60000))
    ds = image_dataset(64, 80, syntax=uid.JPEGBaseline8Bit)
    ds.PixelData = encapsulate([_jpeg()])
    assert decode_image(part10(ds)).pixels.shape == (64, 80)
    ds.PixelData = encapsulate([_jpeg(60000)])  # Rows / Columns say 64 x 80; the codec would allocate 3.6 GP
    with pytest.raises(DecodeError, match="DICOM compressed frame image too large: 60000 x 60000"):
        decode_image(part10(ds))
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, 50000, 40000, 0, 0) + bytes(40)
    ds = image_dataset(64, 80, syntax=uid.JPEG2000Lossless)
    ds.PixelData = encapsulate([siz])
    with pytest.raises(DecodeError, match="DICOM compressed frame image too large: 50000 x 40000"):
        decode_image(part10(ds))


def _with_number_of_frames(value: bytes) -> bytes:
    ds = image_dataset(64, 80)
    ds.PixelData, ds.NumberOfFrames = small_image().tobytes(), 1
    return part10(ds).replace(b"\x28\x00\x08\x00IS\x02\x001 ", b"\x28\x00\x08\x00IS\x02\x00" + value)


def _with_bad_rows() -> bytes:
    ds = image_dataset(64, 80)
    ds.PixelData = small_image().tobytes()
    data = part10(ds)
    at = data.find(b"\x28\x00\x10\x00US")
    return data[: at + 6] + b"\x03\x00\x40\x00\x00" + data[at + 10 :]  # a 3-byte US value


def _no_identifier_in(text: str) -> None:
    for value in (*IDENTIFIERS.values(), "SECRETNAME", ACCESSION):
        assert value not in text, text
    assert "Traceback" not in text and "Accession Number" not in text


@pytest.mark.parametrize(
    ("data", "attribute"), [(_with_number_of_frames(b"1A"), "NumberOfFrames"), (_with_bad_rows(), "Rows")]
)
def test_malformed_dicom_value_is_a_specific_error_naming_file_and_attribute(data, attribute, tmp_path):
    with pytest.raises(DecodeError, match=f"DICOM attribute {attribute} is not a valid integer") as decoding:
        decode_image(data)
    path = tmp_path / "IM0001"
    path.write_bytes(data)
    for client_decode in (False, True):
        with pytest.raises(InvalidInput) as refused:
            read_source(str(path), decode_on_client=client_decode)
        assert str(refused.value) == f"{path}: DICOM attribute {attribute} is not a valid integer"
    _no_identifier_in(str(decoding.value) + str(refused.value))


def test_no_identifier_in_the_message_of_a_dataset_pydicom_cannot_write():
    ds = image_dataset(64, 80)
    ds.PixelData = small_image().tobytes()
    del ds.AccessionNumber
    with pytest.warns(UserWarning, match="cannot be assigned to a tag with VR US"):
        ds.add(DataElement(0x00080050, "US", ACCESSION))  # pydicom's write error quotes the element, with a traceback
    with pytest.raises(InvalidInput) as refused:
        read_source(ds)
    assert "cannot write the dataset as DICOM Part-10" in str(refused.value)
    assert "AccessionNumber" in str(refused.value)  # the attribute is named, its value is not
    _no_identifier_in(str(refused.value))


def test_palette_colour_is_scored_on_the_palette_not_on_its_indices():
    ds = image_dataset(64, 80)
    ds.PhotometricInterpretation, ds.PixelData = "PALETTE COLOR", small_image().tobytes()
    inverted = (65535 - np.linspace(0, 65535, 256)).astype(np.uint16)  # index 0 is white
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", inverted.tobytes())
    pixels = decode_image(part10(ds)).pixels
    assert np.allclose(pixels, inverted[small_image()].astype(np.float32), atol=1)


@pytest.mark.parametrize(
    ("keyword", "bits", "dtype"), [("FloatPixelData", 32, np.float32), ("DoubleFloatPixelData", 64, np.float64)]
)
def test_float_pixel_data_is_decoded(keyword, bits, dtype):
    ds = image_dataset(64, 80)
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = bits
    setattr(ds, keyword, (small_image() / 7).astype(dtype).tobytes())
    read_dicom_header(part10(ds))
    assert np.allclose(decode_image(part10(ds)).pixels, small_image() / 7, atol=1e-5)


def test_images_smaller_than_the_minimum_side_are_refused():
    png = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(png, format="PNG")
    with pytest.raises(DecodeError, match=f"PNG image too small: 1 x 1 pixels, at least {MIN_SIDE} a side"):
        decode_image(png.getvalue())
    ds = image_dataset(1, 1)
    ds.PixelData = b"\x00\x00"
    with pytest.raises(DecodeError, match="DICOM image too small: 1 x 1"):
        decode_image(part10(ds))
    with pytest.raises(InvalidInput, match="too small"):
        read_source(np.zeros((2, 300)))


HEAD_FIRST = """
import resource, sys
from fracscan.client import InvalidInput
from fracscan.client.sources import read_source
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_source(sys.argv[1])
except InvalidInput as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_a_large_file_of_unknown_format_costs_its_head_only(tmp_path):
    big = tmp_path / "scan.raw"
    with open(big, "wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MB of zeros, no DICM magic
    done = subprocess.run([sys.executable, "-c", HEAD_FIRST, str(big)], capture_output=True, text=True, timeout=60)
    message, peak_mib = done.stdout.strip().splitlines()
    assert "unrecognised image format" in message and int(peak_mib) < 16, done.stdout


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    outcome: list[InvalidInput] = []

    def read() -> None:
        with pytest.raises(InvalidInput) as refused:
            read_source(str(fifo))
        outcome.append(refused.value)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "read_source blocked on a FIFO"
    assert str(outcome[0]) == f"{fifo}: not a regular file (a FIFO, socket or device cannot be scored)"


def _infer_http(url: str, data: bytes):
    import tritonclient.http as httpclient

    image = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
    with httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=120) as client:
        return client.infer("fracscan", [image])


def test_server_refuses_bombs_and_malformed_dicom_with_400_and_no_identifier(server, bombs):
    import time

    from tritonclient.utils import InferenceServerException

    cases = {
        "png": (bombs["png"].read_bytes(), "PNG image too large: 20000 x 20000"),
        "dicom": (bombs["dicom"].read_bytes(), "DICOM image too large: 20000 x 20000"),
        "frames": (_with_number_of_frames(b"1A"), "DICOM attribute NumberOfFrames is not a valid integer"),
        "rows": (_with_bad_rows(), "DICOM attribute Rows is not a valid integer"),
    }
    for name, (data, message) in cases.items():
        start = time.perf_counter()
        with pytest.raises(InferenceServerException) as refused:
            _infer_http(server.http_url, data)
        assert refused.value.status() == "400" and message in refused.value.message(), (name, refused.value)
        assert time.perf_counter() - start < 10, name
        _no_identifier_in(refused.value.message())
    good = _infer_http(
        server.http_url, Path(__file__).parent.parent.joinpath("examples", "wrist_fracture.dcm").read_bytes()
    )
    assert 0 <= float(good.as_numpy("SCORE").reshape(-1)[0]) <= 1  # the server stayed healthy


def test_malformed_json_is_refused_by_triton_itself_with_500_as_the_readme_says(server):
    """Triton's HTTP frontend parses the body before any model runs; docs/contract.md documents
    the 500 it answers. Should a Triton upgrade answer 400, this test says to update that page."""
    import httpx

    for body, message in (
        ('{"inputs": [', "failed to parse the request JSON buffer"),
        ("{}", "Unable to parse 'inputs'"),
    ):
        answer = httpx.post(f"{server.http_url}/v2/models/fracscan/infer", content=body, timeout=30)
        assert answer.status_code == 500 and message in answer.json()["error"], answer.text
