"""The committed `examples/` folder: a dozen radiographs in several formats, labels.csv and a README."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .cases import DEMO_NOTICE, make_case
from .scenes import choose
from .writers import TRANSFER_SYNTAXES, write_dicom, write_png

# (file name, region, fracture, seed, writer, options). Images are ~0.55x the default size.
_EXAMPLES: tuple[tuple[str, str, bool, int, str, dict[str, Any]], ...] = (
    ("wrist_fracture.dcm", "wrist", True, 101, "dicom", {}),
    ("hand_normal_mono1.dcm", "hand", False, 102, "dicom", {"photometric": "MONOCHROME1", "ts": "jpeg2000_lossless"}),
    ("ankle_fracture_j2k.dcm", "ankle", True, 103, "dicom", {"ts": "jpeg2000_lossless"}),
    ("knee_normal_j2k_lossy.dcm", "knee", False, 104, "dicom", {"ts": "jpeg2000_lossy"}),
    ("IM000105", "forearm", True, 105, "dicom", {"ts": "rle_lossless", "modality": "CR"}),
    ("tibia_fibula_fracture.png", "tibia_fibula", True, 106, "png16", {}),
    ("elbow_normal.png", "elbow", False, 107, "png8", {}),
    (
        "femur_fracture_cr_mono1.dcm",
        "femur",
        True,
        108,
        "dicom",
        {"photometric": "MONOCHROME1", "modality": "CR", "ts": "jpeg2000_lossless"},
    ),
    ("pelvis_normal.dcm", "pelvis", False, 114, "dicom", {"ts": "deflated_explicit_vr_little_endian"}),
    ("foot_fracture.png", "foot", True, 110, "png8", {}),
    (
        "clavicle_fracture_mono1.dcm",
        "clavicle",
        True,
        128,
        "dicom",
        {"photometric": "MONOCHROME1", "ts": "jpeg2000_lossless"},
    ),
    ("hip_fracture.dcm", "hip", True, 118, "dicom", {"ts": "implicit_vr_little_endian"}),
)
_EXAMPLE_SCALE = 0.55

_EXAMPLES_README = f"""\
{DEMO_NOTICE}

These radiographs were made by fracscan.demo.synthetic.write_examples(): simple shapes, a
physical-ish exposure model and noise. They are not anatomy and not patients. They exist
to demonstrate the pipeline (the DEMO ensemble was trained on the same generator).

labels.csv: source = file name, fracture = 1/0, region, and the fracture box x0,y0,x1,y1
in pixel coordinates of the stored image, half-open (pixels[y0:y1, x0:x1]); empty when
there is no fracture. Regenerate with:
    python -c "from fracscan.demo.synthetic import write_examples; write_examples('examples')"
"""


def write_examples(out_dir: str | Path) -> list[Path]:
    """Write a dozen example radiographs, ``labels.csv`` and a README into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for name, region, frac, seed, writer, opt in _EXAMPLES:
        _, _, _, H, W, _ = choose(seed, region, frac, None)
        shape = (int(H * _EXAMPLE_SCALE), int(W * _EXAMPLE_SCALE))
        case = make_case(seed, region, frac, shape)
        p = out / name
        if writer == "dicom":
            write_dicom(
                case,
                p,
                transfer_syntax=TRANSFER_SYNTAXES[opt.get("ts", "explicit_vr_little_endian")],
                photometric=opt.get("photometric", "MONOCHROME2"),
                modality=opt.get("modality", "DX"),
            )
        else:
            write_png(case, p, bits=16 if writer == "png16" else 8)
        written.append(p)
        box = case.box if case.box is not None else ("", "", "", "")
        rows.append([name, int(case.fracture), case.region, *box])
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "fracture", "region", "x0", "y0", "x1", "y1"])
        w.writerows(rows)
    readme = out / "README.txt"
    readme.write_text(_EXAMPLES_README)
    return [*written, labels, readme]
