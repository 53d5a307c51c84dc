"""Boxes drawn on a radiograph as a person reviews it: one drawing for the CLI's PNG overlays and the
Secondary Capture (`fracscan.pacs.sc`).

Definite findings are drawn solid red, suspicious ones dashed orange (the two-level answer), each
labelled with its box confidence; the text (the decision, the classification heads' answers, any
quality-control warning and the legend of the box label) sits at the top left, wrapped to the image's
width and made smaller when it would cover too much of a small image; the answering model's flags (DEMO,
RANDOM WEIGHTS, UNCALIBRATED) are a red banner across the bottom. Pillow and numpy only, so a client-only
install can draw.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from fracscan.client.models import Box, HeadResult

COLOURS = {"definite": (255, 40, 40), "suspicious": (255, 165, 0)}
TEXT_COLOUR = (255, 220, 0)
BOX_LEGEND = "box label: the box's confidence, not the fracture score"
MARGIN = 8
MAX_TEXT_SHARE = 0.45  # of the image height; past it the text is made smaller (down to MIN_FONT)
MIN_FONT = 8
BANNER_COLOUR = (200, 0, 0)


def windowed(pixels: npt.NDArray[np.floating[Any] | np.integer[Any]]) -> Image.Image:
    """The radiograph windowed over its 0.5 - 99.5 percentiles, as RGB to draw on."""
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    gray = (np.clip((pixels - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def font_size_for(image: Image.Image) -> int:
    return max(12, image.size[0] // 40)


def draw_findings(image: Image.Image, boxes: Iterable[Box], level: str) -> None:
    """Each box with its confidence: solid for a definite finding, dashed for a suspicious one."""
    draw = ImageDraw.Draw(image)
    scale = max(image.size)
    width = max(2, round(scale / 300))
    font_size = font_size_for(image)
    colour = COLOURS.get(level, COLOURS["suspicious"])
    for box in boxes:
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1), (box.x0, box.y0)]
        if level == "definite":
            draw.line(corners, fill=colour, width=width)
        else:
            _dashed(draw, corners, colour, width, dash=max(6, scale // 60))
        draw.text((box.x0, max(0, box.y0 - font_size)), f"{box.confidence:.2f}", fill=colour, font_size=font_size)


def answer_lines(heads: Mapping[str, HeadResult], qc: Sequence[str], boxes: Sequence[Box]) -> list[str]:
    """What the overlay says besides the decision: the heads' top classes, the QC warnings, the box legend."""
    lines = []
    if heads:
        lines.append(
            "heads: " + ", ".join(f"{n.replace('_', ' ')} {h.label} {h.confidence:.2f}" for n, h in heads.items())
        )
    lines.extend(f"QC WARNING: {warning}" for warning in qc)
    if boxes:
        lines.append(BOX_LEGEND)
    return lines


def draw_text(image: Image.Image, text: str) -> None:
    """The text at the top left, every line wrapped to the image's width (smaller type when it is long)."""
    draw = ImageDraw.Draw(image)
    size = font_size_for(image)
    wrapped = wrap(draw, text, size, image.size[0] - 2 * MARGIN)
    while size > MIN_FONT and _height(draw, wrapped, size) > MAX_TEXT_SHARE * image.size[1]:
        size -= 1
        wrapped = wrap(draw, text, size, image.size[0] - 2 * MARGIN)
    draw.multiline_text(
        (MARGIN, MARGIN), wrapped, fill=TEXT_COLOUR, font_size=size, stroke_width=2, stroke_fill=(0, 0, 0)
    )


def wrap(draw: ImageDraw.ImageDraw, text: str, font_size: int, width: float) -> str:
    """Each line broken at spaces (a word wider than `width` at its characters) so that it fits `width` pixels."""

    def fits(candidate: str) -> bool:
        return draw.textlength(candidate, font_size=font_size) <= width

    out: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line:
                out.append(line)
            while word and not fits(word):
                cut = max(1, next((i for i in range(len(word), 0, -1) if fits(word[:i])), 1))
                out.append(word[:cut])
                word = word[cut:]
            line = word
        out.append(line)
    return "\n".join(out)


def _height(draw: ImageDraw.ImageDraw, text: str, font_size: int) -> float:
    box = draw.multiline_textbbox((0, 0), text, font_size=font_size, stroke_width=2)
    return float(box[3] - box[1])


def draw_banner(image: Image.Image, text: str) -> None:
    """A red band across the bottom with `text` in white ("" draws nothing)."""
    if not text:
        return
    font_size = font_size_for(image)
    draw = ImageDraw.Draw(image)
    top = image.size[1] - 2 * font_size - 8
    draw.rectangle([0, top, image.size[0], image.size[1]], fill=BANNER_COLOUR)
    draw.text((8, top + font_size // 2), text, fill=(255, 255, 255), font_size=font_size)


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
