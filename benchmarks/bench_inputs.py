"""The benchmark's inputs: the demo radiographs, real-size DICOM, many small PNGs; generated once into a cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench_base import ROOT

CACHE_VERSION = "v1"  # bump when the generated inputs change
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fracscan" / "bench"


def _atomic_dir(target: Path, build) -> Path:
    """Build a folder in a temp dir beside `target`, then rename it into place (safe to interrupt)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def demo_inputs(cache: Path) -> tuple[list[Path], str]:
    """The repository's examples/ (the demo inputs), else the same files made by write_examples."""
    examples = ROOT / "examples"
    files = sorted(p for p in examples.glob("*") if p.is_file() and _is_image(p)) if examples.is_dir() else []
    if files:
        return files, str(examples)
    from fracscan.demo.synthetic import write_examples

    folder = _atomic_dir(cache / CACHE_VERSION / "examples", write_examples)
    return sorted(
        p for p in folder.glob("*") if p.is_file() and _is_image(p)
    ), f"{folder} (fracscan.demo.synthetic.write_examples)"


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def large_dicoms(cache: Path, shape: tuple[int, int]) -> dict[str, Path]:
    """Real-size radiographs: uncompressed (16-bit words, 12 bits stored) and JPEG 2000 lossless."""
    from fracscan.demo.synthetic import TRANSFER_SYNTAXES, can_write, make_case, write_dicom

    wanted = {"uncompressed": "explicit_vr_little_endian", "jpeg2000": "jpeg2000_lossless"}
    wanted = {k: v for k, v in wanted.items() if can_write(TRANSFER_SYNTAXES[v])}

    def build(tmp: Path) -> None:
        case = make_case(7, region="wrist", fracture=True, shape=shape)
        for name, ts in wanted.items():
            write_dicom(case, tmp / f"{name}.dcm", transfer_syntax=TRANSFER_SYNTAXES[ts])

    folder = _atomic_dir(cache / CACHE_VERSION / f"large-{shape[0]}x{shape[1]}", build)
    return {name: folder / f"{name}.dcm" for name in wanted}


def memory_inputs(cache: Path, count: int) -> Path:
    """`count` small PNG files (hard links to 8 distinct synthetic radiographs)."""
    from fracscan.demo.synthetic import make_case, write_png

    originals = _atomic_dir(
        cache / CACHE_VERSION / "small-png",
        lambda tmp: [
            write_png(make_case(100 + i, shape=(256, 208)), tmp / f"small_{i}.png", bits=16) for i in range(8)
        ],
    )
    sources = sorted(originals.glob("*.png"))

    def build(tmp: Path) -> None:
        for i in range(count):
            src, dst = sources[i % len(sources)], tmp / f"img_{i:05d}.png"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    return _atomic_dir(cache / CACHE_VERSION / f"small-x{count}", build)


NEMA_FILES = {  # NEMA WG04 computed radiographs shipped by pydicom-data (MONOCHROME1)
    "nema_rg1_uncompressed": "RG1_UNCR.dcm",  # 1955 x 1841, 15 bits stored
    "nema_rg3_uncompressed": "RG3_UNCR.dcm",  # 1760 x 1760, 10 bits stored
    "nema_rg3_jpeg2000": "RG3_J2KR.dcm",  # the same, JPEG 2000 lossless
}
DX_SHAPE = (3000, 2500)  # a large detector's full field


def prepare_inputs(cache: Path, quick: bool = False) -> tuple[dict[str, Path], str | None]:
    """Real-size radiographs for timing `prepare`: the NEMA CRs (if pydicom-data is installed) and a
    3000 x 2500 12-bit synthetic DX as uncompressed DICOM, JPEG 2000 lossless DICOM and 16-bit PNG.

    Returns (name -> path, a note about what is missing or None).
    """
    from pydicom.data import get_testdata_file

    from fracscan.demo.synthetic import TRANSFER_SYNTAXES, can_write, make_case, write_dicom, write_png

    files: dict[str, Path] = {}
    note = None
    for name, file in NEMA_FILES.items():
        if quick and "jpeg2000" in name:
            continue
        try:
            path = get_testdata_file(file)
        except Exception:
            path = None
        if path is None:
            note = "NEMA WG04 images not found: pip install pydicom-data"
            break
        files[name] = Path(path)
    j2k = can_write(TRANSFER_SYNTAXES["jpeg2000_lossless"])

    def build(tmp: Path) -> None:
        case = make_case(7, region="wrist", fracture=True, shape=DX_SHAPE)
        write_dicom(case, tmp / "dx_uncompressed.dcm")
        if j2k:
            write_dicom(case, tmp / "dx_jpeg2000.dcm", transfer_syntax=TRANSFER_SYNTAXES["jpeg2000_lossless"])
        write_png(case, tmp / "dx.png", bits=16)

    folder = _atomic_dir(cache / CACHE_VERSION / f"dx-{DX_SHAPE[0]}x{DX_SHAPE[1]}", build)
    for name, file in (
        ("dx_uncompressed", "dx_uncompressed.dcm"),
        ("dx_jpeg2000", "dx_jpeg2000.dcm"),
        ("dx_png", "dx.png"),
    ):
        if (folder / file).exists() and not (quick and "jpeg2000" in name):
            files[name] = folder / file
    return files, note
