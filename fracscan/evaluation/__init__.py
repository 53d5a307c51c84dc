"""Calibration and evaluation (Jones et al. 2020, Methods): numpy/scipy, no CLI.

Inputs are the predictions written by `fracscan predict --format jsonl` and a labels CSV
(`source,fracture[,region][,x0,y0,x1,y1][,<head>...]`); `fracscan calibrate` and `fracscan evaluate`
(`fracscan.cli.calibrate`, `fracscan.cli.evaluate`) are thin wrappers over this package.
One file a job:

* `records`     reading and validating the two inputs (`PredictionRow`, `LabelRow`, `EvaluationError`) and
                what pairing them yields (`Case`, `Matched`).
* `matching`    pairing labels with predictions (`match`, `read_labelled`).
* `statistics`  the leaf every figure is built from: AUC, ROC, Wilson intervals, confusion matrices and
                Cohen's kappa of any number of classes, bootstrap percentile intervals.
* `rules`       the threshold rules: score order statistics, IoU, box hits.
* `calibration` per-region operating points as the core's `Thresholds` (`calibrate` ->
                `CalibrationResult`), the map-threshold recheck, what a calibration achieves.
* `metrics`     the paper's figures with their CIs per region (`binary_metrics`, `evaluate`), where the
                boxes land (`localisation`: top-box IoU rate, box sensitivity).
* `heads`       classification heads (Olczak et al. 2017): their labels checked against the classes,
                accuracy and Cohen's kappa per head (`head_report` of two label lists, `evaluate_heads`).
* `report`      what `fracscan evaluate` reports: every step above over matched cases, and how.
* `plots`       ROC curves as a PNG; matplotlib is imported only when called.
"""

from __future__ import annotations

from fracscan.evaluation.calibration import (
    CalibrationResult,
    RegionFit,
    calibrate,
    file_provenance,
    fit_by_region,
    recheck_map_thresholds,
)
from fracscan.evaluation.heads import check_head_labels, evaluate_heads, head_classes, head_report
from fracscan.evaluation.matching import Labelled, file_name, match, model_identity, read_labelled
from fracscan.evaluation.metrics import binary_metrics, decisions_for, evaluate, localisation
from fracscan.evaluation.plots import plot_roc
from fracscan.evaluation.records import (
    Case,
    EvaluationError,
    LabelRow,
    Matched,
    PredictionRow,
    read_labels,
    read_predictions,
)
from fracscan.evaluation.rules import (
    IOU_HIT,
    box_hit_confidences,
    iou,
    map_threshold_from_hits,
    required_count,
    sensitivity_threshold,
    specificity_threshold,
    top_box_hit,
)
from fracscan.evaluation.statistics import (
    auc,
    cohen_kappa,
    confusion_matrix,
    kappa_from_confusion,
    percentile_interval,
    rng_for,
    roc_curve,
    wilson_interval,
)
from fracscan.thresholds import DEFAULT_MAP_THRESHOLD

__all__ = [
    "DEFAULT_MAP_THRESHOLD",
    "IOU_HIT",
    "CalibrationResult",
    "Case",
    "EvaluationError",
    "LabelRow",
    "Labelled",
    "Matched",
    "PredictionRow",
    "RegionFit",
    "auc",
    "binary_metrics",
    "box_hit_confidences",
    "calibrate",
    "check_head_labels",
    "cohen_kappa",
    "confusion_matrix",
    "decisions_for",
    "evaluate",
    "evaluate_heads",
    "file_name",
    "file_provenance",
    "fit_by_region",
    "head_classes",
    "head_report",
    "iou",
    "kappa_from_confusion",
    "localisation",
    "map_threshold_from_hits",
    "match",
    "model_identity",
    "percentile_interval",
    "plot_roc",
    "read_labelled",
    "read_labels",
    "read_predictions",
    "recheck_map_thresholds",
    "required_count",
    "rng_for",
    "roc_curve",
    "sensitivity_threshold",
    "specificity_threshold",
    "top_box_hit",
    "wilson_interval",
]
