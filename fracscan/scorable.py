"""Which DICOM instances fracscan scores: projection radiographs, and nothing else.

    reason = not_a_radiograph(dataset)     # None: score it; else why not, naming SOP class and modality

The rule, from four attributes (the header alone: no pixel is decoded):

1. SOP Class: Computed Radiography Image Storage, Digital X-Ray Image Storage (for presentation or for
   processing), or Secondary Capture Image Storage (a radiograph captured by a secondary device);
2. Modality: CR or DX (a Secondary Capture only counts when its Modality says it shows a radiograph;
   mammography, intra-oral, CT, MR, US, a test pattern's OT are not what the regions mean);
3. Photometric Interpretation: MONOCHROME1 or MONOCHROME2, and
4. Samples per Pixel: 1 (grayscale).

Everything else (CT, MR, US, colour, non-image objects such as SR or presentation states) is not
scored. The SDK's DICOM reading, `predict --dicomweb` and `fracscan listen` all ask this function.
"""

from __future__ import annotations

import pydicom
from pydicom.uid import UID

COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RADIOGRAPH_CLASSES = frozenset({COMPUTED_RADIOGRAPHY, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # a malformed value: treated as absent, never quoted
        return ""


def describe(ds: pydicom.Dataset) -> str:
    """ "SOP Class 'CT Image Storage', Modality CT": how log lines name what an instance is."""
    sop = _text(ds, "SOPClassUID")
    name = UID(sop).name if sop else "missing"
    return f"SOP Class '{name}', Modality {_text(ds, 'Modality') or 'missing'}"


def not_a_radiograph(ds: pydicom.Dataset) -> str | None:
    """Why `ds` is not a projection radiograph fracscan scores, or None when it is (see the module's rule)."""
    what = describe(ds)
    sop = _text(ds, "SOPClassUID")
    if sop not in RADIOGRAPH_CLASSES:
        image = "Image Storage" in UID(sop).name if sop else False
        return f"not a projection radiograph: {what}" if image else f"not an image: {what}"
    if _text(ds, "Modality").upper() not in RADIOGRAPH_MODALITIES:
        return f"not a projection radiograph (Modality must be CR or DX): {what}"
    photometric, samples = _text(ds, "PhotometricInterpretation").upper(), _text(ds, "SamplesPerPixel") or "1"
    if photometric not in GRAYSCALE or samples != "1":
        shown = photometric or "missing"
        return f"not a grayscale radiograph (Photometric Interpretation {shown}, {samples} sample(s) a pixel): {what}"
    return None
