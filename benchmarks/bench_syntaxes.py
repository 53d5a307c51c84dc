"""`prepare` of the 3000 x 2500 12-bit DX in every transfer syntax fracscan decodes, beside the frozen path.

For each syntax, on one core (`time.thread_time`, median of reps): fracscan's decode (`decode_image`,
full size), fracscan's `prepare` (decode at the resolution the frame needs + pre-processing at
S = 1024), and the frozen path: pydicom's full decode (`Dataset.pixel_array`) + the scipy reference
pre-processing, in the same run. The ratio frozen / prepare is the figure that counts.
HTJ2K is written with imagecodecs (OpenJPH) when it has the encoder; a syntax without an installed
encoder is listed as skipped.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
from bench_base import log
from bench_inputs import CACHE_VERSION, DX_SHAPE, _atomic_dir
from reference_preprocess import reference_preprocess

from fracscan.decode import decode_image
from fracscan.pipeline import decode_for_frame, prepare
from fracscan.spec import EnsembleSpec

SYNTAXES = (  # name in fracscan.demo.synthetic.TRANSFER_SYNTAXES (or "htj2k_lossless"), label
    ("explicit_vr_little_endian", "uncompressed (Explicit VR LE)"),
    ("rle_lossless", "RLE lossless"),
    ("jpeg_lossless_sv1", "JPEG lossless (SV1)"),
    ("jpegls_lossless", "JPEG-LS lossless"),
    ("jpeg2000_lossless", "JPEG 2000 lossless"),
    ("jpeg2000_lossy", "JPEG 2000 lossy"),
    ("htj2k_lossless", "HTJ2K lossless"),
)


def _htj2k(uncompressed: Path, target: Path) -> None:
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    ds = pydicom.dcmread(uncompressed)
    ds.PixelData = encapsulate([bytes(imagecodecs.htj2k_encode(ds.pixel_array, level=0))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.save_as(target, enforce_file_format=True)


def syntax_inputs(cache: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The DX in each syntax (written once into the cache); (name -> path, name -> why skipped)."""
    from fracscan.demo.synthetic import TRANSFER_SYNTAXES, can_write, make_case, write_dicom

    def build(tmp: Path) -> None:
        case = make_case(7, region="wrist", fracture=True, shape=DX_SHAPE)
        for name, _ in SYNTAXES:
            if name in TRANSFER_SYNTAXES and can_write(TRANSFER_SYNTAXES[name]):
                write_dicom(case, tmp / f"{name}.dcm", transfer_syntax=TRANSFER_SYNTAXES[name])
        try:
            _htj2k(tmp / "explicit_vr_little_endian.dcm", tmp / "htj2k_lossless.dcm")
        except Exception as exc:  # no imagecodecs / no HTJ2K encoder
            (tmp / "htj2k_lossless.skipped").write_text(f"{type(exc).__name__}: {exc}")

    folder = _atomic_dir(cache / CACHE_VERSION / f"syntaxes-{DX_SHAPE[0]}x{DX_SHAPE[1]}", build)
    files = {name: folder / f"{name}.dcm" for name, _ in SYNTAXES if (folder / f"{name}.dcm").exists()}
    skipped = {name: "no encoder installed" for name, _ in SYNTAXES if name not in files}
    return files, skipped


def _cpu_ms(fn) -> float:
    start = time.thread_time()
    fn()
    return 1000 * (time.thread_time() - start)


def _frozen(data: bytes, spec: EnsembleSpec) -> None:
    """pydicom's full decode + modality LUT, then the frozen scipy pre-processing."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    reference_preprocess(pixels, spec.preprocess)


def bench_syntaxes(cache: Path, spec: EnsembleSpec, reps: int, names: tuple[str, ...] | None = None) -> dict:
    files, skipped = syntax_inputs(cache)
    rows = {}
    for name, label in SYNTAXES:
        if name not in files or (names is not None and name not in names):
            continue
        log.print(f"  prepare per syntax: {label} ...")
        data = files[name].read_bytes()
        prepare(data, None, spec)  # warm-up
        times: dict[str, list[float]] = {"decode": [], "prepare": [], "frozen": []}
        for _ in range(reps):
            times["decode"].append(_cpu_ms(lambda d=data: decode_image(d)))
            times["prepare"].append(_cpu_ms(lambda d=data: prepare(d, None, spec)))
            times["frozen"].append(_cpu_ms(lambda d=data: _frozen(d, spec)))
        ms = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
        rows[name] = {
            "label": label,
            "bytes": len(data),
            **ms,
            "decode_scale": decode_for_frame(data, spec.preprocess)[0].scale,
            "ratio": ms["frozen_ms"] / ms["prepare_ms"],
        }
    return {"shape": list(DX_SHAPE), "reps": reps, "syntaxes": rows, "skipped": skipped}
