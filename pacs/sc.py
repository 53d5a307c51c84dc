"""The Secondary Capture: a copy of the radiograph with the boxes and the decision burned in.

For viewers that do not apply presentation states. The findings are drawn as the CLI's overlays
draw them (`fracscan.client.overlay`: definite solid red, suspicious dashed orange); the decision, the
classification heads' answers, any quality-control warning and the box legend sit at the top, and every
flag of the answering model (DEMO, RANDOM WEIGHTS, UNCALIBRATED) is a red banner across the image that no
viewer can switch off (`overlay.draw_banner`).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fracscan.client import overlay
from fracscan.pacs import filing, uids
from fracscan.pacs.context import MANUFACTURER, ScoredImage

KIND = "sc"
SERIES_NUMBER = 9103

BANNER_COLOUR = overlay.BANNER_COLOUR


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
        series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, scored.series_key),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, scored.result_key),
        instance_number=filing.instance_number(source),
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
    filing.carry_series(capture, source)
    filing.carry_lossy(capture, source)  # burned-in copy of lossy pixels is itself lossy
    return capture


def render(scored: ScoredImage) -> Image.Image:
    """The radiograph windowed over its 0.5 - 99.5 percentiles, with the boxes, the decision and any banner."""
    image = overlay.windowed(scored.pixels)
    overlay.draw_findings(image, scored.prediction.boxes, scored.level)
    p = scored.prediction
    overlay.draw_text(image, "\n".join([scored.decision_text(), *overlay.answer_lines(p.heads, p.qc, p.boxes)]))
    overlay.draw_banner(image, scored.algorithm.banner)
    return image


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it has a valid one (required by the SC patient coordinate system)."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return None
