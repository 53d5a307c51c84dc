"""The DICOM Structured Report: a Comprehensive 3D SR following TID 1500 (Measurement Report).

One image-level measurement group (TID 1501) carries the finding (fracture present / absent,
coded), the score, the operating point applied and, when positive, the level (suspicious /
definite); one planar-ROI group (TID 1410) per box carries the box as a closed SCOORD polyline in
the source image's pixel coordinates (corners: (0, 0) is the top left corner of the top left
pixel, as in the JSONL answer) and its confidence. Every group names the algorithm (spec name,
members' hash) and lists the operating point, the region and, for a demo, the demo notice.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fracscan.pacs import uids
from fracscan.pacs.context import MANUFACTURER, ScoredImage

KIND = "sr"
SERIES_NUMBER = 9101

FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
SCORE = hd.sr.CodedConcept("FS-SCORE", "99FRACSCAN", "Fracture score")
BOX_CONFIDENCE = hd.sr.CodedConcept("FS-BOXCONF", "99FRACSCAN", "Box confidence")
DEFINITE_THRESHOLD = hd.sr.CodedConcept("FS-DEFTHR", "99FRACSCAN", "Definite threshold value")
LEVELS = {
    "suspicious": hd.sr.CodedConcept("FS-SUSPICIOUS", "99FRACSCAN", "Suspicious"),
    "definite": hd.sr.CodedConcept("FS-DEFINITE", "99FRACSCAN", "Definite"),
}
NO_UNITS = codes.UCUM.NoUnits
REGION_SITES = {
    "ankle": codes.SCT.AnkleJoint,
    "clavicle": codes.SCT.Clavicle,
    "elbow": codes.SCT.ElbowJoint,
    "femur": codes.SCT.Femur,
    "foot": codes.SCT.Foot,
    "forearm": codes.SCT.Forearm,
    "hand": codes.SCT.Hand,
    "hip": codes.SCT.HipJoint,
    "humerus": codes.SCT.Humerus,
    "knee": codes.SCT.KneeJoint,
    "pelvis": codes.SCT.BoneStructureOfPelvis,
    "ribs": codes.SCT.Rib,
    "shoulder": codes.SCT.Shoulder,
    "spine": codes.SCT.Spine,
    "tibia_fibula": codes.SCT.LowerLeg,
    "wrist": codes.SCT.WristJoint,
}


def build(scored: ScoredImage) -> Dataset:
    """The SR for one scored image, in the source's study, in the SR series of these weights."""
    source, algorithm = scored.dataset, scored.algorithm
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(scored),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=[_image_group(scored), *_box_groups(scored)],
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, scored.series_key),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, scored.result_key),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=algorithm.series_description("fracture SR"),
    )


def _algorithm_id(scored: ScoredImage) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=scored.algorithm.name, version=scored.algorithm.version, parameters=scored.parameters()
    )


def _observation_context(scored: ScoredImage) -> hd.sr.ObservationContext:
    algorithm = scored.algorithm
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.derived_uid("device", algorithm.name, algorithm.version),
        name="fracscan",
        manufacturer_name=MANUFACTURER,
        model_name=f"{algorithm.name} {algorithm.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _finding_sites(scored: ScoredImage) -> list[hd.sr.FindingSite]:
    site = REGION_SITES.get(scored.prediction.region)
    return [hd.sr.FindingSite(anatomic_location=site)] if site else []


def _level_evaluations(scored: ScoredImage) -> list[hd.sr.QualitativeEvaluation]:
    level = LEVELS.get(scored.level)
    return [hd.sr.QualitativeEvaluation(name=codes.DCM.CertaintyOfFinding, value=level)] if level else []


def _image_group(scored: ScoredImage) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 over the whole image: the finding, the score and the operating point."""
    p = scored.prediction
    measurements = [
        hd.sr.Measurement(name=SCORE, value=p.score, unit=NO_UNITS),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=p.threshold, unit=NO_UNITS),
    ]
    definite = getattr(p, "definite_threshold", None)
    if definite is not None:
        measurements.append(hd.sr.Measurement(name=DEFINITE_THRESHOLD, value=definite, unit=NO_UNITS))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.derived_uid("image-group", scored.result_key),
            identifier="fracscan image finding",
        ),
        finding_type=FRACTURE,
        algorithm_id=_algorithm_id(scored),
        finding_sites=_finding_sites(scored),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(scored.dataset)],
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=FRACTURE, value=PRESENT if p.fracture else ABSENT),
            *_level_evaluations(scored),
        ],
    )


def _box_groups(scored: ScoredImage) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 per box: the box as a closed polyline on the source image, with its confidence."""
    groups = []
    for number, box in enumerate(scored.prediction.boxes, start=1):
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1), (box.x0, box.y0)]
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(corners, dtype=np.float64),
            source_image=hd.sr.SourceImageForRegion.from_source_image(scored.dataset),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.derived_uid("box", scored.result_key, str(number)),
                    identifier=f"fracscan box {number}",
                ),
                referenced_region=region,
                finding_type=FRACTURE,
                algorithm_id=_algorithm_id(scored),
                finding_sites=_finding_sites(scored),
                measurements=[hd.sr.Measurement(name=BOX_CONFIDENCE, value=box.confidence, unit=NO_UNITS)],
                qualitative_evaluations=_level_evaluations(scored),
            )
        )
    return groups
