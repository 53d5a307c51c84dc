"""Draw docs/gsps-mono1-cr.png: a MONOCHROME1 CR through its GSPS, as dcmp2pgm renders it, beside its SC.

    python docs/gsps_picture.py          # scores the example on the embedded demo server (about a minute)

dcmp2pgm renders the image through the presentation state's pipeline (Modality LUT, VOI window,
Presentation LUT Shape INVERSE) but burns no graphics into its bitmap; it lists the graphic objects
it read (`-v`), and those polylines are drawn on its rendering here, in their layer's colour.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "examples" / "femur_fracture_cr_mono1.dcm"
OUT = ROOT / "docs" / "gsps-mono1-cr.png"
HEIGHT = 360  # each panel, to keep the picture small
LAYER_COLOURS = {"SUSPICIOUS": (255, 165, 0), "DEFINITE": (255, 40, 40)}  # as the GSPS layers recommend


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "source.dcm"
        ds = pydicom.dcmread(SOURCE)
        ds.decompress(generate_instance_uid=False)  # dcmp2pgm reads no JPEG 2000; the GSPS names this UID
        ds.save_as(source)
        results = work / "results"
        command = ["predict", str(SOURCE), "--embedded", "--format", "jsonl", "--sr-dir", str(results)]
        subprocess.run(
            [sys.executable, "-m", "fracscan.cli", *command],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        state = next(results.glob("*.gsps.dcm"))
        capture = next(results.glob("*.sc.dcm"))
        pgm = work / "gsps.pgm"
        listing = subprocess.run(
            ["dcmp2pgm", "-v", "-p", str(state), str(source), str(pgm)], capture_output=True, text=True, check=True
        )
        rendered = Image.open(pgm).convert("RGB")
        draw = ImageDraw.Draw(rendered)
        colour = LAYER_COLOURS["SUSPICIOUS"]
        for line in (listing.stdout + listing.stderr).splitlines():
            if layer := re.search(r"Graphic Layer #\d+ \[(\w+)\]", line):
                colour = LAYER_COLOURS.get(layer.group(1), colour)
            elif match := re.search(r"coordinates: ([-0-9.\\, ]+)", line):
                points = [tuple(float(v) for v in p.split("\\")) for p in match.group(1).split(",") if p.strip()]
                draw.line(points, fill=colour, width=2)
        sc = Image.fromarray(np.asarray(pydicom.dcmread(capture).pixel_array))
        panels = [im.resize((round(im.width * HEIGHT / im.height), HEIGHT)) for im in (rendered, sc)]
        picture = Image.new("RGB", (sum(p.width for p in panels) + 8, HEIGHT), (255, 255, 255))
        picture.paste(panels[0], (0, 0))
        picture.paste(panels[1], (panels[0].width + 8, 0))
        picture.quantize(colors=96, method=Image.Quantize.FASTOCTREE).save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
