"""The overlay drawing (`fracscan.client.overlay`): text that fits any width, and what it says.

Pillow's own font metrics decide what fits; the pixels are checked for text reaching the right edge.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fracscan.client import overlay
from fracscan.client.models import Box, HeadResult

LONG = "FRACTURE suspected  score 0.712 / threshold 0.500  region forearm"


def _yellow(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image).astype(int)
    return np.all(np.abs(pixels - np.array(overlay.TEXT_COLOUR)) < 40, axis=2)


@pytest.mark.parametrize("width", [90, 160, 300, 1200])
def test_the_text_is_wrapped_to_the_image_width_and_nothing_is_lost(width):
    image = Image.new("RGB", (width, 600))
    text = "\n".join([LONG, "QC WARNING: DICOM ImageLaterality is L but the laterality head says right (0.97)"])
    size = overlay.font_size_for(image)
    wrapped = overlay.wrap(ImageDraw.Draw(image), text, size, width - 2 * overlay.MARGIN)
    draw = ImageDraw.Draw(image)
    assert all(draw.textlength(line, font_size=size) <= width - 2 * overlay.MARGIN for line in wrapped.splitlines())
    assert "".join(wrapped.split()) == "".join(text.split())  # every character kept, in order
    overlay.draw_text(image, text)
    text_pixels = _yellow(image)
    assert text_pixels.any()
    assert not text_pixels[:, -overlay.MARGIN // 2 :].any(), "text runs into the right edge"
    if width <= 300:
        assert len(wrapped.splitlines()) > 2  # the long lines were broken


def test_a_small_image_gets_smaller_type_rather_than_text_over_all_of_it():
    text = "\n".join([LONG, "heads: laterality left 0.93, body part wrist 0.80, view lateral 0.66"])
    width, height = 220, 150
    size, draw = overlay.font_size_for(Image.new("RGB", (width, height))), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    at_full_size = overlay.wrap(draw, text, size, width - 2 * overlay.MARGIN)
    box = draw.multiline_textbbox((0, 0), at_full_size, font_size=size, stroke_width=2)
    assert box[3] - box[1] > 0.45 * height  # at the usual size it would cover half the image
    image = Image.new("RGB", (width, height))
    overlay.draw_text(image, text)
    rows = np.flatnonzero(_yellow(image).any(axis=1))
    assert rows.max() <= overlay.MARGIN + 0.45 * height


def test_the_answer_lines_name_the_heads_the_qc_warning_and_the_box_legend():
    heads = {
        "laterality": HeadResult("left", {"left": 0.93, "right": 0.07}),
        "body_part": HeadResult("wrist", {"ankle": 0.1, "wrist": 0.8, "hand": 0.1}),
    }
    qc = ("DICOM ImageLaterality is R but the laterality head says left (0.93)",)
    lines = overlay.answer_lines(heads, qc, (Box(1, 2, 30, 40, 0.8),))
    assert lines[0] == "heads: laterality left 0.93, body part wrist 0.80"
    assert lines[1] == f"QC WARNING: {qc[0]}"
    assert lines[2] == overlay.BOX_LEGEND and "not the fracture score" in lines[2]
    assert overlay.answer_lines({}, (), ()) == []  # a Jones answer without boxes: nothing besides the decision
