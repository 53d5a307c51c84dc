"""What `fracscan evaluate` reports, assembled in one place: the metrics, how they were computed, the inputs.

`evaluation_report` runs the steps of an evaluation over matched cases and their decisions: the paper's
figures overall and per region (`metrics.evaluate`), the classification heads when the labels name them
(`heads.evaluate_heads`), where the boxes land when the labels have boxes (`metrics.localisation`), and
the record of how (operating point, unit, matching, bootstrap, interval methods). The CLI prints it as a
table or JSON; the plot reads its figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fracscan.evaluation.heads import HeadClasses, evaluate_heads
from fracscan.evaluation.metrics import evaluate, localisation
from fracscan.evaluation.records import Matched

BOOTSTRAP_METHOD = "stratified by label, percentile 95% CI (AUC, PPV, NPV)"
INTERVALS = {"sensitivity, specificity": "Wilson score 95%", "auc, ppv, npv": "bootstrap"}


@dataclass(frozen=True)
class ReportInputs:
    """Where the evaluated answers came from, as the report names them."""

    predictions: str  # the predictions file's name
    labels: str  # the labels file's name
    operating_point: str  # "predictions" (their own decisions) or the thresholds file applied
    unit: str = "radiograph"  # or "study"


def evaluation_report(
    matched: Matched,
    decisions: Any,
    inputs: ReportInputs,
    *,
    heads: HeadClasses | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    localise: bool = True,
) -> dict[str, Any]:
    """The report of one evaluation; EvaluationError / ValueError for inputs the metrics cannot use."""
    metrics = evaluate(matched.cases, decisions, bootstrap=bootstrap, seed=seed)
    report: dict[str, Any] = {
        "overall": metrics["overall"],
        "regions": metrics["regions"],
        "operating_point": inputs.operating_point,
        "unit": inputs.unit,
        "predictions": inputs.predictions,
        "labels": inputs.labels,
        "matching": matched.summary(),
        "bootstrap": {"resamples": bootstrap, "seed": seed, "method": BOOTSTRAP_METHOD},
        "intervals": INTERVALS,
    }
    head_metrics = evaluate_heads(matched.cases, heads) if heads else {}
    if head_metrics:  # the labels have a column named like a classification head
        report["heads"] = head_metrics
    located = localisation(matched.cases) if localise else None
    if located is not None:  # the labels have boxes
        report["localisation"] = located
    return report
