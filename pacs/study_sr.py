"""The study-level SR: the answer of `fracscan_study` (`fracscan predict --by-study --sr-dir`) as TID 1500.

One Comprehensive 3D SR per study, in its own series beside the per-image results:

- Qualitative Evaluations (TID 1500 rows 12-14): the study finding (Fracture of bone: Present /
  Absent, and its certainty), then one line per view (Finding, text) saying what that view scored.
- A study measurement group (TID 1501): the study score, the threshold and the definite threshold
  applied, the study region as the finding site, every scored view's image as its source, and the
  algorithm whose parameters name the aggregation rule, the views used and whether the study
  thresholds were calibrated.
- Per scored view, a measurement group (TID 1501) with the view's score and threshold, referencing
  the view's image, and its boxes as planar ROIs (TID 1410), as in the image SR.

Only DICOM views can be referenced; a study without one gets no SR (ValueError).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from fracscan.client.study import StudyPrediction, ViewPrediction
from fracscan.pacs import sr, uids
from fracscan.pacs.context import MANUFACTURER, Algorithm

KIND = "study-sr"
SERIES_NUMBER = 9104
VERDICTS = {"definite": "FRACTURE (definite)", "suspicious": "FRACTURE suspected", "negative": "no fracture"}


def build(study: StudyPrediction, views: Sequence[Dataset | None]) -> Dataset:
    """The study SR; `views` are the datasets of `study.views`, in order (None for a view that is not DICOM)."""
    scored = [
        (number, view, ds)
        for number, (view, ds) in enumerate(zip(study.views, views, strict=True), start=1)
        if isinstance(view, ViewPrediction) and ds is not None
    ]
    if not scored:
        raise ValueError("no scored DICOM view in the study: nothing for a study SR to reference")
    algorithm = Algorithm.of(study)  # type: ignore[arg-type]  # a study answer names its model as a Prediction does
    first, total = scored[0][2], len(study.views)
    study_uid = str(first.StudyInstanceUID)
    # what decides the study SR's content: the model (members, thresholds), the rule and operating point, the views
    model = uids.series_key(algorithm.version, algorithm.thresholds)
    views_scored = [str(ds.SOPInstanceUID) for _, _, ds in scored]
    key = "|".join([model, study.rule, repr(study.threshold), study.region, *views_scored])
    parameters = [
        f"rule {study.rule}",
        f"threshold {study.threshold!r}",
        f"region {study.region}",
        f"views used {study.views_used} of {total}",
        "study thresholds calibrated" if study.calibrated else "image-level thresholds (study not calibrated)",
        *(["fallback threshold: no calibrated operating point for the region"] if study.fallback else []),
        *algorithm.notices,
    ]
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = [
        sr.measurement_group(
            uids.derived_uid("study-group", study_uid, key),
            "fracscan study finding",
            sr.algorithm_id(algorithm, parameters),
            sr.finding_sites(study.region, first),
            [ds for _, _, ds in scored],
            (study.score, study.threshold, study.definite_threshold),
        )
    ]
    lines = []
    for number, view, ds in scored:
        view_id = sr.algorithm_id(algorithm, [f"view {number} of {total}", f"threshold {view.threshold!r}"])
        sites = sr.finding_sites(view.region, ds)
        sop = str(ds.SOPInstanceUID)
        groups.append(
            sr.measurement_group(
                uids.derived_uid("view-group", study_uid, sop, key),
                f"fracscan view {number}",
                view_id,
                sites,
                [ds],
                (view.score, view.threshold, None),
            )
        )
        groups.extend(sr.box_groups(view.boxes, ds, view_id, sites, f"{key}|{sop}"))
        lines.append(
            f"view {number} of {total}: {VERDICTS.get(view.level, view.level)}, score {view.score:.3f} / "
            f"threshold {view.threshold:.3f}, region {view.region}, {len(view.boxes)} boxes"
        )
    report = hd.sr.MeasurementReport(
        observation_context=sr.observation_context(algorithm),
        procedure_reported=sr.PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    texts = [hd.sr.TextContentItem(codes.DCM.Finding, line, relationship_type="CONTAINS") for line in lines]
    sr.add_qualitative_evaluations(report, [*sr.finding(study.fracture, study.level), *texts])
    document = hd.sr.Comprehensive3DSR(
        evidence=[ds for _, _, ds in scored],
        content=report,
        series_instance_uid=uids.series_uid(KIND, study_uid, uids.series_key(algorithm.version, algorithm.thresholds)),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.instance_uid(KIND, study_uid, key),
        instance_number=1,  # one study SR per study and weights
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=algorithm.series_description("study fracture SR"),
    )
    return sr.finish(document, first)
