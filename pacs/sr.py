"""The DICOM Structured Report: a Comprehensive 3D SR following TID 1500 (Measurement Report).

The answer as the template places it:

- Qualitative Evaluations (TID 1500 rows 12-14), the image-level answer: the finding (Fracture of
  bone: Present / Absent) and, when present, its certainty (Certainty of Finding: Suspected /
  definite); for an ensemble with classification heads, each head's top class as a coded
  evaluation (Laterality, Target Region, Image View) with every class's probability beside it
  (Probability, text), and each quality-control warning (Quality Control, text).
- One image-level measurement group (TID 1501): the score, the operating point (and the definite
  one), the finding site with the laterality DICOM states, the source image and the algorithm.
- One planar-ROI group (TID 1410) per box: the box as a closed SCOORD polyline in the source image's
  pixel coordinates (corners: (0, 0) is the top left corner of the top left pixel, as in the JSONL
  answer) and its confidence.

Codes are SNOMED CT or DICOM wherever one exists; the few left in the private scheme 99FRACSCAN are
declared in the Coding Scheme Identification Sequence. The procedure is (363679005, SCT, "Imaging
procedure"), the member of CID 100 that fits a radiograph. Every group names the algorithm (spec
name, members' hash) and lists the operating point, the region and, for a demo, the demo notice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fracscan.client.models import Box, HeadResult
from fracscan.pacs import filing, uids
from fracscan.pacs.context import MANUFACTURER, Algorithm, ScoredImage

KIND = "sr"
SERIES_NUMBER = 9101

PRIVATE_SCHEME = "99FRACSCAN"
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
SCORE = hd.sr.CodedConcept("246262008", "SCT", "Score")
PROCEDURE = codes.SCT.ImagingProcedure  # CID 100
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PROBABILITY = codes.DCM.Probability
QUALITY_CONTROL = codes.DCM.QualityControl
BOX_CONFIDENCE = hd.sr.CodedConcept("FS-BOXCONF", PRIVATE_SCHEME, "Box confidence")
DEFINITE_THRESHOLD = hd.sr.CodedConcept("FS-DEFTHR", PRIVATE_SCHEME, "Definite threshold value")
LEVELS = {
    "suspicious": codes.SCT.Suspected,
    "definite": hd.sr.CodedConcept("FS-DEFINITE", PRIVATE_SCHEME, "Definite"),
}
NO_UNITS = codes.UCUM.NoUnits
LATERALITY = {"L": codes.SCT.Left, "R": codes.SCT.Right, "left": codes.SCT.Left, "right": codes.SCT.Right}
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
VIEWS = {  # CID 4010 (DX View)
    "ap": codes.SCT.AnteroPosterior,
    "pa": codes.SCT.PosteroAnterior,
    "lateral": codes.SCT.LateralProjection,
    "oblique": codes.SCT.ObliqueProjection,
}
HEADS = {  # head -> (the evaluation's concept name, its classes' codes)
    "laterality": (codes.SCT.Laterality, LATERALITY),
    "body_part": (codes.DCM.TargetRegion, REGION_SITES),
    "view": (codes.DCM.ImageView, VIEWS),
}


def build(scored: ScoredImage) -> Dataset:
    """The SR for one scored image, in the source's study, in the SR series of these weights."""
    source, algorithm = scored.dataset, scored.algorithm
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(algorithm),
        procedure_reported=PROCEDURE,
        imaging_measurements=[_image_group(scored), *_box_groups(scored)],
        title=codes.DCM.ImagingMeasurementReport,
    )
    add_qualitative_evaluations(report, _evaluations(scored))
    return finish(
        hd.sr.Comprehensive3DSR(
            evidence=[source],
            content=report,
            series_instance_uid=uids.series_uid(KIND, scored.study_instance_uid, scored.series_key),
            series_number=SERIES_NUMBER,
            sop_instance_uid=uids.instance_uid(KIND, scored.sop_instance_uid, scored.result_key),
            instance_number=filing.instance_number(source),
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=algorithm.series_description("fracture SR"),
        ),
        source,
    )


def finish(sr: Dataset, source: Dataset) -> Dataset:
    """The study attributes of the source, and the declaration of the private coding scheme."""
    filing.carry_study(sr, source)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "fracscan result concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def algorithm_id(algorithm: Algorithm, parameters: Sequence[str]) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version, parameters=list(parameters))


def observation_context(algorithm: Algorithm) -> hd.sr.ObservationContext:
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


def add_qualitative_evaluations(report: hd.sr.MeasurementReport, items: Sequence[hd.sr.ContentItem]) -> None:
    """TID 1500 row 12: the Qualitative Evaluations container under the report's root."""
    container = hd.sr.ContainerContentItem(QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    report[0].ContentSequence.append(container)


def finding(present: bool, level: str) -> list[hd.sr.CodeContentItem]:
    """Fracture of bone = Present / Absent and, when present, its certainty (row 13, one item each)."""
    items = [hd.sr.CodeContentItem(FRACTURE, PRESENT if present else ABSENT, relationship_type="CONTAINS")]
    if present and level in LEVELS:
        items.append(hd.sr.CodeContentItem(codes.DCM.CertaintyOfFinding, LEVELS[level], relationship_type="CONTAINS"))
    return items


def head_code(head: str, label: str) -> hd.sr.CodedConcept:
    """A head class as a code: the standard one when there is one, else the private scheme's."""
    known = HEADS.get(head, (None, {}))[1].get(label)
    if known is not None:
        return hd.sr.CodedConcept(known.value, known.scheme_designator, known.meaning)
    return hd.sr.CodedConcept(f"FS-{label}".upper()[:16], PRIVATE_SCHEME, label)


def head_items(heads: Mapping[str, HeadResult], qc: Sequence[str]) -> list[hd.sr.ContentItem]:
    """Each head's top class (coded) and its classes' probabilities (text), then the QC warnings (rows 13-14)."""
    items: list[hd.sr.ContentItem] = []
    for name, head in heads.items():
        concept = HEADS.get(name, (None, {}))[0] or hd.sr.CodedConcept(
            f"FS-{name}".upper()[:16], PRIVATE_SCHEME, f"{name} head"
        )
        items.append(hd.sr.CodeContentItem(concept, head_code(name, head.label), relationship_type="CONTAINS"))
        probabilities = ", ".join(f"{label} {p:.3f}" for label, p in head.probs.items())
        items.append(hd.sr.TextContentItem(PROBABILITY, f"{name}: {probabilities}", relationship_type="CONTAINS"))
    items.extend(hd.sr.TextContentItem(QUALITY_CONTROL, w[:1024], relationship_type="CONTAINS") for w in qc)
    return items


def _evaluations(scored: ScoredImage) -> list[hd.sr.ContentItem]:
    p = scored.prediction
    return [*finding(p.fracture, scored.level), *head_items(p.heads, p.qc)]


def _image_group(scored: ScoredImage) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 over the whole image: the score and the operating point."""
    p = scored.prediction
    return measurement_group(
        uids.derived_uid("image-group", scored.result_key),
        "fracscan image finding",
        algorithm_id(scored.algorithm, scored.parameters()),
        finding_sites(p.region, scored.dataset),
        [scored.dataset],
        (p.score, p.threshold, getattr(p, "definite_threshold", None)),
    )


def _box_groups(scored: ScoredImage) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    p = scored.prediction
    algorithm = algorithm_id(scored.algorithm, scored.parameters())
    return box_groups(p.boxes, scored.dataset, algorithm, finding_sites(p.region, scored.dataset), scored.result_key)


def finding_sites(region: str, source: Dataset) -> list[hd.sr.FindingSite]:
    """The region as a SNOMED CT site, with the laterality the source states (none for an unknown region)."""
    site = REGION_SITES.get(region)
    side = LATERALITY.get(filing.laterality(source))
    return [hd.sr.FindingSite(anatomic_location=site, laterality=side)] if site else []


def measurement_group(
    uid: str,
    identifier: str,
    algorithm: hd.sr.AlgorithmIdentification,
    sites: list[hd.sr.FindingSite],
    sources: Sequence[Dataset],
    values: tuple[float, float, float | None],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: a score, its threshold and the definite threshold (when there is one), over the source images."""
    score, threshold, definite = values
    measurements = [
        hd.sr.Measurement(name=SCORE, value=score, unit=NO_UNITS),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=threshold, unit=NO_UNITS),
    ]
    if definite is not None:
        measurements.append(hd.sr.Measurement(name=DEFINITE_THRESHOLD, value=definite, unit=NO_UNITS))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        finding_type=FRACTURE,
        algorithm_id=algorithm,
        finding_sites=sites,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
        measurements=measurements,
    )


def box_groups(
    boxes: Sequence[Box],
    source: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    sites: list[hd.sr.FindingSite],
    key: str,
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410 per box: the box as a closed polyline on the source image, with its confidence; `key`
    (what decides the answer the boxes belong to) makes their tracking UIDs."""
    groups = []
    for number, box in enumerate(boxes, start=1):
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1), (box.x0, box.y0)]
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(corners, dtype=np.float64),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.derived_uid("box", key, str(number)),
                    identifier=f"fracscan box {number}",
                ),
                referenced_region=region,
                finding_type=FRACTURE,
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=[hd.sr.Measurement(name=BOX_CONFIDENCE, value=box.confidence, unit=NO_UNITS)],
            )
        )
    return groups
