"""Deterministic UIDs for the result objects: the same answer gets the same UIDs, a different one never does.

Every UID is pydicom's hash-derived `generate_uid` over what decides a result's content:

- an instance (SR, GSPS, SC): its kind, the source SOP Instance UID, and `result_key`: the members'
  hash, the thresholds hash, the region and the operating point applied, and the writers' SCHEMA_VERSION;
- a series (one per kind and study): its kind, the Study Instance UID, and `series_key` (the members'
  and the thresholds' hashes, the schema version).

So a rerun with the same weights and thresholds gives the same UIDs on every run and machine (a PACS
that receives them again replaces or ignores the copy), while new weights, a recalibration, another
region (`--region`) or a new writer schema give new UIDs: their results sit beside the old ones and
never pass for them.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

NAMESPACE = "fracscan-results-v1"  # changing this re-issues every result UID: do it only on purpose
SCHEMA_VERSION = "2"  # the SR / GSPS / SC writers' content layout: raise it when what they write changes


def result_key(
    source_sop_instance_uid: str,
    members_hash: str,
    thresholds_hash: str,
    region: str,
    threshold: float,
    definite_threshold: float | None,
) -> str:
    """Everything that decides one result's content, as one string (repr keeps every float exact)."""
    point = f"{threshold!r}/{definite_threshold!r}"
    return "|".join((SCHEMA_VERSION, source_sop_instance_uid, members_hash, thresholds_hash, region, point))


def series_key(members_hash: str, thresholds_hash: str) -> str:
    return "|".join((SCHEMA_VERSION, members_hash, thresholds_hash))


def instance_uid(kind: str, source_sop_instance_uid: str, key: str) -> str:
    """The SOP Instance UID of the `kind` result for one source image (`key`: its `result_key`)."""
    return generate_uid(entropy_srcs=[NAMESPACE, kind, "instance", source_sop_instance_uid, key])


def series_uid(kind: str, study_instance_uid: str, key: str) -> str:
    """The series the `kind` results of one study share (`key`: `series_key` of the model that answered)."""
    return generate_uid(entropy_srcs=[NAMESPACE, kind, "series", study_instance_uid, key])


def derived_uid(purpose: str, *parts: str) -> str:
    """Any other UID the results carry (tracking identifiers, the device observer): stable across runs."""
    return generate_uid(entropy_srcs=[NAMESPACE, purpose, *parts])
