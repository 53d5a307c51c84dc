"""The Grayscale Softcopy Presentation State: the boxes as graphic annotations on the original image.

A viewer shows the source image through this presentation state, with the boxes on their own
graphic layer (suspicious and definite findings on separate layers with distinct colours, so a
reader can switch either off) and the decision, the score and any demo notice on a text layer.

A presentation state replaces the image's own display pipeline, so it restates it: the source's
Modality LUT (highdicom copies it), its first window and VOI LUT function (or its VOI LUT, or a window
over the 0.5 - 99.5 percentiles when it has neither), and its Presentation LUT Shape, which for a
MONOCHROME1 source without one is INVERSE (the GSPS pipeline ends in P-Values, where larger is
brighter; a MONOCHROME1 image is displayed with larger values darker). The image therefore looks the
same with and without the presentation state.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

from fracscan.pacs import filing, uids
from fracscan.pacs.context import MANUFACTURER, ScoredImage

KIND = "gsps"
SERIES_NUMBER = 9102

LAYERS = {  # level -> (layer name, order, description, display colour)
    "suspicious": ("SUSPICIOUS", 2, "fracscan: suspected fracture boxes", "orange"),
    "definite": ("DEFINITE", 3, "fracscan: definite fracture boxes", "red"),
}
TEXT_LAYER = ("DECISION", 1, "fracscan: decision, score and notices", "yellow")


def build(scored: ScoredImage) -> Dataset:
    """The presentation state for one scored image, in the source's study, in the GSPS series of these weights."""
    source, algorithm = scored.dataset, scored.algorithm
    text_layer = _layer(TEXT_LAYER)
    annotations = [
        hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=text_layer, text_objects=_texts(scored))
    ]
    layers = [text_layer]
    if scored.prediction.boxes and scored.level in LAYERS:
        box_layer = _layer(LAYERS[scored.level])
        layers.append(box_layer)
        annotations.append(
            hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=box_layer, graphic_objects=_boxes(scored))
        )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, scored.series_key),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, scored.result_key),
        instance_number=filing.instance_number(source),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number="0",
        content_label="FRACSCAN",
        content_description=(scored.decision_text() + (f" {algorithm.banner}" if algorithm.banner else ""))[:64],
        graphic_annotations=annotations,
        graphic_layers=layers,
        voi_lut_transformations=_window(scored),
        presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=lut_shape(source)),
        series_description=algorithm.series_description("fracture boxes (GSPS)"),
    )
    filing.carry_series(state, source)
    return state


def lut_shape(source: Dataset) -> str:
    """The source's own Presentation LUT Shape, else INVERSE for MONOCHROME1 and IDENTITY otherwise."""
    shape = str(source.get("PresentationLUTShape") or "").strip().upper()
    if shape in ("IDENTITY", "INVERSE"):
        return shape
    return "INVERSE" if str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1" else "IDENTITY"


def _layer(spec: tuple[str, int, str, str]) -> hd.pr.GraphicLayer:
    name, order, description, colour = spec
    return hd.pr.GraphicLayer(name, order, description, display_color=hd.color.CIELabColor.from_string(colour))


def _boxes(scored: ScoredImage) -> list[hd.pr.GraphicObject]:
    """Each box as a closed polyline in image pixels: corners as in the JSONL answer."""
    objects = []
    for box in scored.prediction.boxes:
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1), (box.x0, box.y0)]
        objects.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(corners, dtype=np.float64),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        )
    return objects


def _texts(scored: ScoredImage) -> list[hd.pr.TextObject]:
    """The decision (and the demo banner) across the top, and each box's confidence above it."""
    lines = [scored.decision_text()] + ([scored.algorithm.banner] if scored.algorithm.banner else [])
    texts = [
        hd.pr.TextObject(
            text_value=line[:1024],
            units=hd.pr.AnnotationUnitsValues.DISPLAY,
            bounding_box=(0.01, 0.01 + 0.05 * i, 0.99, 0.05 + 0.05 * i),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
        for i, line in enumerate(lines)
    ]
    rows, columns = scored.dataset.Rows, scored.dataset.Columns
    for box in scored.prediction.boxes:
        texts.append(
            hd.pr.TextObject(
                text_value=f"{box.confidence:.2f}",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                anchor_point=(min(max(box.x0, 0.0), float(columns)), min(max(box.y0, 0.0), float(rows))),
                anchor_point_visible=False,
            )
        )
    return texts


def _window(scored: ScoredImage) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The source's first window (with its VOI LUT function); None to let highdicom copy the source's VOI LUT;
    else a window over the bulk of its (modality) values."""
    source = scored.dataset
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is not None and width is not None:
        function = str(source.get("VOILUTFunction") or "").strip().upper() or None
        window = hd.pr.SoftcopyVOILUTTransformation(
            window_center=_first(center), window_width=max(_first(width), 1.0), voi_lut_function=function
        )
        return [window]
    if "VOILUTSequence" in source:
        return None
    values = apply_modality_lut(source.pixel_array, source)
    lo, hi = np.percentile(values, [0.5, 99.5])
    window = hd.pr.SoftcopyVOILUTTransformation(window_center=float(lo + hi) / 2, window_width=max(float(hi - lo), 1.0))
    return [window]


def _first(value: object) -> float:
    """The first of several windows (a VOI attribute may hold one value or many)."""
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)  # type: ignore[arg-type]  # pydicom types DS values as Any-ish unions
