"""What a DICOM says besides its pixels, and how to speak of its attributes without quoting them.

The region terms, instance UIDs and stated laterality / body part that `fracscan.decode` returns with
the pixels (`DecodedImage`) and the client reads for itself; and the reasons given for a pydicom error,
which name an attribute but never its value, with identifying values scrubbed (no patient identifiers in
any message).
"""

from __future__ import annotations

import re

import pydicom

# DICOM tags whose values may name the anatomical region, most specific first.
REGION_TAGS = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")
# What DICOM states that classification heads can contradict (fracscan.heads): the image's laterality
# (ImageLaterality, else the series' Laterality) and the body part.
LATERALITY_TAGS = ("ImageLaterality", "Laterality")
BODY_PART_TAG = "BodyPartExamined"
UID_TAGS = {"sop": "SOPInstanceUID", "series": "SeriesInstanceUID", "study": "StudyInstanceUID"}

# Values that identify the patient or the study: scrubbed from any message that could quote them.
IDENTIFYING_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "StudyID", "InstitutionName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "AdmissionID",
)  # fmt: skip

_TAG_IN_TEXT = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def dicom_error_reason(exc: BaseException, ds: pydicom.Dataset | None = None) -> str:
    """What a pydicom exception says, safe to show: its type, the attribute it concerns and at most
    the first line of its text with quoted values removed and identifying values scrubbed.

    pydicom's messages can quote whole elements (`(0008,0050) Accession Number US: 'ACC999'`) and
    append a traceback, so the text is never passed on as it is.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if match := _TAG_IN_TEXT.search(text):
        tag = int(match.group(1) + match.group(2), 16)
        keyword = pydicom.datadict.keyword_for_tag(tag) or f"({match.group(1)},{match.group(2)})"
        return f"{type(exc).__name__} in attribute {keyword}"
    text = _QUOTED.sub("'…'", text)[:160]
    text = scrub_identifiers(text, ds) if ds is not None else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def scrub_identifiers(message: str, ds: pydicom.Dataset) -> str:
    """Replace every identifying value of `ds` (patient, accession, study ID...) found in `message` by ***."""
    for keyword in IDENTIFYING_TAGS:
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception:  # a malformed value cannot be quoted by us either
            continue
        for part in sorted({value, *value.split("^")}, key=len, reverse=True):
            if len(part.strip()) >= 2:
                message = message.replace(part.strip(), "***")
    return message


def region_terms(ds: pydicom.Dataset) -> tuple[str, ...]:
    """The non-empty values of REGION_TAGS, most specific first: what may name the region."""
    return tuple(str(ds.get(t, "")).strip() for t in REGION_TAGS if str(ds.get(t, "")).strip())


def instance_uids(ds: pydicom.Dataset) -> dict[str, str]:
    """{"sop" | "series" | "study": the instance UID} for those the dataset has."""
    return {key: str(ds.get(tag)) for key, tag in UID_TAGS.items() if ds.get(tag)}


def stated_labels(ds: pydicom.Dataset) -> tuple[str, str]:
    """("ImageLaterality=L" (else "Laterality=R") or "", "BodyPartExamined=WRIST" or ""): what the heads' QC
    checks against (fracscan.heads), keyword and upper-cased value."""
    laterality = next((f"{t}={v}" for t in LATERALITY_TAGS if (v := str(ds.get(t, "")).strip().upper())), "")
    body_part = str(ds.get(BODY_PART_TAG, "")).strip().upper()
    return laterality, f"{BODY_PART_TAG}={body_part}" if body_part else ""
