"""The Grayscale Softcopy Presentation State: the boxes as graphic annotations on the original image.

A viewer shows the source image through this presentation state, with the boxes on their own
graphic layer (suspicious and definite findings on separate layers with distinct colours, so a
reader can switch either off) and the decision, the score and any demo notice on a text layer. The
window of the source is kept (its VOI LUT, or a window over the 0.5 - 99.5 percentiles when it has
none), so the image looks as it does without the presentation state.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

from fracscan.pacs import uids
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
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, scored.series_key),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, scored.result_key),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number="0",
        content_label="FRACSCAN",
        content_description=(scored.decision_text() + (f" {algorithm.banner}" if algorithm.banner else ""))[:64],
        graphic_annotations=annotations,
        graphic_layers=layers,
        voi_lut_transformations=[_window(scored)],
        series_description=algorithm.series_description("fracture boxes (GSPS)"),
    )


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


def _window(scored: ScoredImage) -> hd.pr.SoftcopyVOILUTTransformation:
    """The source's own window when it has one, else one over the bulk of its (modality) values."""
    source = scored.dataset
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is not None and width is not None:
        return hd.pr.SoftcopyVOILUTTransformation(window_center=_first(center), window_width=max(_first(width), 1.0))
    values = apply_modality_lut(source.pixel_array, source)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return hd.pr.SoftcopyVOILUTTransformation(window_center=float(lo + hi) / 2, window_width=max(float(hi - lo), 1.0))


def _first(value: object) -> float:
    """The first of several windows (a VOI attribute may hold one value or many)."""
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)  # type: ignore[arg-type]  # pydicom types DS values as Any-ish unions
