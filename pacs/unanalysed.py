"""The "not analysed" report: an SR in the source's study saying the image was not analysed, and why.

    dataset = build(source_header, "DICOM has no pixel data", version)      # a Comprehensive SR, no score

For an image of a scored SOP class that fracscan could not analyse (too large, corrupt, no pixel
data, refused by the server), so that a reader looking for fracscan's answer finds one instead of a
silence. The report carries no finding and no score: a coded title, the reason as text, the source
image, and the observing device. Its UIDs follow `uids` (kind "unanalysed"), so a repeat replaces it.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fracscan.pacs import uids
from fracscan.pacs.context import MANUFACTURER

KIND = "unanalysed"
SERIES_NUMBER = 9104
NOT_ANALYSED = hd.sr.CodedConcept("FS-NOTANALYSED", "99FRACSCAN", "Image not analysed for fracture")
REASON = codes.DCM.Comment


def build(source: Dataset, reason: str, version: str, name: str = "fracscan") -> Dataset:
    """The report for one source image (its header suffices: no pixel is read); `version` names the weights."""
    sop_uid, study_uid = str(source.SOPInstanceUID), str(source.StudyInstanceUID)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.derived_uid("device", name, version), name="fracscan", manufacturer_name=MANUFACTURER
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    root = hd.sr.ContainerContentItem(name=NOT_ANALYSED, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(
        [
            *hd.sr.ObservationContext(observer_device_context=observer),
            hd.sr.TextContentItem(
                name=REASON,
                value=f"not analysed: {reason}"[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.ImageContentItem(
                name=codes.DCM.SourceImage,
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=sop_uid,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
        ],
        is_root=False,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=uids.series_uid(KIND, study_uid, version),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, sop_uid, version),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="fracscan: image not analysed",
    )
