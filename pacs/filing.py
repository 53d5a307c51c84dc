"""What a result copies from its source so that a PACS files it with the source, and shows it honestly.

Every result (SR, GSPS, SC) gets the study's description and the source's de-identification
record (a de-identified study must not gain an object that looks identified). The GSPS and SC series
get the source's Body Part Examined and Laterality (General Series, Type 2C: required, empty when the
source states neither Laterality nor a left / right Image Laterality, for a paired body part; absent
for any other unless the source states a side). The SC, whose
pixels are the source's, also says when those pixels went through lossy compression.

Instance Numbers: a result series holds one result per source image of the study, and the
sources' own numbers repeat across their series, so a result's number is derived from the source's
Series Number and Instance Number (series * 100000 + instance), unique within the result series
while sources number their series below 21474 and their instances below 100000.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

STUDY_ATTRIBUTES = ("StudyDescription",)
DEIDENTIFICATION = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")
LOSSY_METHODS = {  # transfer syntax -> Lossy Image Compression Method (C.7.6.1.1.5.1)
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.201": "ISO_15444_15",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}
PAIRED_BODY_PARTS = frozenset(  # Body Part Examined defined terms of paired structures
    [
        "ANKLE",
        "ARM",
        "BREAST",
        "CALCANEUS",
        "CALF",
        "CLAVICLE",
        "EAR",
        "ELBOW",
        "EXTREMITY",
        "EYE",
        "FEMUR",
        "FIBULA",
        "FINGER",
        "FOOT",
        "FOREARM",
        "HAND",
        "HEEL",
        "HIP",
        "HUMERUS",
        "KIDNEY",
        "KNEE",
        "LEG",
        "LOWERLIMB",
        "ORBIT",
        "PAROTID",
        "RADIUS",
        "SCAPULA",
        "SHOULDER",
        "SUBMANDIBULAR",
        "THIGH",
        "THUMB",
        "TIBIA",
        "TOE",
        "ULNA",
        "UPPERLIMB",
        "UPRLIMB",
        "WRIST",
    ]
)
INSTANCE_SPAN = 100_000
MAX_INSTANCE_NUMBER = 2**31 - 1  # IS


def carry_study(result: Dataset, source: Dataset) -> None:
    """The study description and the de-identification record, copied into any result."""
    for keyword in STUDY_ATTRIBUTES + DEIDENTIFICATION:
        if keyword in source and keyword not in result:
            result[keyword] = source[keyword]


def laterality(source: Dataset) -> str:
    """The General Series Laterality for a result of this source: R, L or "" (unknown, Type 2 empty)."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def carry_series(result: Dataset, source: Dataset) -> None:
    """Study attributes, then the series' Body Part Examined and Laterality (GSPS and SC series)."""
    carry_study(result, source)
    body_part = str(source.get("BodyPartExamined") or "").strip()
    if body_part:
        result.BodyPartExamined = body_part
    side = laterality(source)
    if side or body_part.upper() in PAIRED_BODY_PARTS:
        result.Laterality = side


def carry_lossy(result: Dataset, source: Dataset) -> None:
    """Lossy Image Compression (with its ratio and method) when the source's pixels were lossy compressed."""
    syntax = str(getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", "") or "")
    if str(source.get("LossyImageCompression", "")) != "01" and syntax not in LOSSY_METHODS:
        result.LossyImageCompression = "00"
        return
    result.LossyImageCompression = "01"
    ratio, methods = source.get("LossyImageCompressionRatio"), source.get("LossyImageCompressionMethod")
    if methods:  # the source's own history (ratio and method have matching multiplicity)
        result.LossyImageCompressionMethod = methods
        if ratio is not None:
            result.LossyImageCompressionRatio = ratio
    elif syntax in LOSSY_METHODS:  # the history is the transfer syntax itself; its ratio is not known
        result.LossyImageCompressionMethod = LOSSY_METHODS[syntax]


def instance_number(source: Dataset) -> int:
    """The result's Instance Number: unique within a result series (see the module docstring)."""
    series, instance = _number(source, "SeriesNumber"), _number(source, "InstanceNumber")
    number = series * INSTANCE_SPAN + (instance % INSTANCE_SPAN)
    return max(1, min(number, MAX_INSTANCE_NUMBER))


def _number(source: Dataset, keyword: str) -> int:
    try:
        return max(0, int(source.get(keyword) or 0))
    except (TypeError, ValueError):
        return 0
