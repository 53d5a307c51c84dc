"""The Secondary Capture: a copy of the radiograph with the boxes and the decision burned in.

For viewers that do not apply presentation states. Definite findings are drawn solid red,
suspicious ones dashed orange; the decision line sits at the top, and an ensemble without clinical
meaning (demo, random weights) gets a red banner across the image that no viewer can switch off.
"""

from __future__ import annotations

import itertools
import textwrap

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fracscan.client.results import uids
from fracscan.client.results.context import MANUFACTURER, ScoredImage

KIND = "sc"
SERIES_NUMBER = 9103

COLOURS = {"definite": (255, 40, 40), "suspicious": (255, 165, 0)}
TEXT_COLOUR, BANNER_COLOUR = (255, 220, 0), (200, 0, 0)


def build(scored: ScoredImage) -> Dataset:
    """The burned-in copy for one scored image, in the source's study, in the SC series of these weights."""
    source, algorithm = scored.dataset, scored.algorithm
    image = render(scored)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.asarray(image),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, algorithm.version),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, algorithm.version),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=algorithm.series_description("fracture overlay (SC)"),
    )
    capture.BurnedInAnnotation = "YES"
    reference = Dataset()  # a derived image names its source (General Image module), so a PACS can link them
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture


def render(scored: ScoredImage) -> Image.Image:
    """The radiograph windowed over its 0.5 - 99.5 percentiles, with the boxes, the decision and any banner."""
    pixels = scored.pixels
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    gray = (np.clip((pixels - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(gray).convert("RGB")
    draw = ImageDraw.Draw(image)
    scale = max(image.size)
    width = max(2, round(scale / 300))
    font_size = max(12, image.size[0] // 40)
    colour = COLOURS.get(scored.level, COLOURS["suspicious"])
    for box in scored.prediction.boxes:
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1), (box.x0, box.y0)]
        if scored.level == "definite":
            draw.line(corners, fill=colour, width=width)
        else:
            _dashed(draw, corners, colour, width, dash=max(6, scale // 60))
        draw.text((box.x0, max(0, box.y0 - font_size)), f"{box.confidence:.2f}", fill=colour, font_size=font_size)
    text = "\n".join(textwrap.wrap(scored.decision_text(), width=max(16, int(image.size[0] / (0.6 * font_size)))))
    draw.multiline_text((8, 8), text, fill=TEXT_COLOUR, font_size=font_size, stroke_width=2, stroke_fill=(0, 0, 0))
    if scored.algorithm.banner:
        top = image.size[1] - 2 * font_size - 8
        draw.rectangle([0, top, image.size[0], image.size[1]], fill=BANNER_COLOUR)
        draw.text((8, top + font_size // 2), scored.algorithm.banner, fill=(255, 255, 255), font_size=font_size)
    return image


def _dashed(
    draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: tuple[int, int, int], width: int, dash: int
) -> None:
    """A dashed polyline (PIL draws solid lines only): dash, gap, dash along every segment."""
    for (xa, ya), (xb, yb) in itertools.pairwise(points):
        length = float(np.hypot(xb - xa, yb - ya))
        steps = max(1, int(length // dash))
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min(1.0, (i + 1) / steps)
            draw.line(
                [(xa + (xb - xa) * t0, ya + (yb - ya) * t0), (xa + (xb - xa) * t1, ya + (yb - ya) * t1)],
                fill=colour,
                width=width,
            )


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it has a valid one (required by the SC patient coordinate system)."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return None
