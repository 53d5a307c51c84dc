"""Deterministic UIDs for the result objects, so a repeated run replaces rather than duplicates.

Every UID is pydicom's hash-derived `generate_uid` over what names a result: its kind (sr, gsps,
sc), the source it describes (the SOP Instance UID, or the Study Instance UID for a series) and the
members' content hash (the weights that answered). The same image scored by the same weights gets
the same SR UID on every run and every machine, so a PACS that receives it again overwrites (or
ignores) the copy; new weights give new UIDs, so their answers sit beside the old ones.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

NAMESPACE = "fracscan-results-v1"  # changing this re-issues every result UID: do it only on purpose


def instance_uid(kind: str, source_sop_instance_uid: str, members_hash: str) -> str:
    """The SOP Instance UID of the `kind` result for one source image."""
    return generate_uid(entropy_srcs=[NAMESPACE, kind, "instance", source_sop_instance_uid, members_hash])


def series_uid(kind: str, study_instance_uid: str, members_hash: str) -> str:
    """The series the `kind` results of one study share (one series each for SR, GSPS and SC)."""
    return generate_uid(entropy_srcs=[NAMESPACE, kind, "series", study_instance_uid, members_hash])


def derived_uid(purpose: str, *parts: str) -> str:
    """Any other UID the results carry (tracking identifiers, the device observer): stable across runs."""
    return generate_uid(entropy_srcs=[NAMESPACE, purpose, *parts])
