"""Study-level answers on the DEMO ensemble: image-level vs study-level, measured on held-out studies.

    python -m fracscan.demo.studies            # about 2 minutes on 2 cores
    python -m fracscan.demo.studies --no-install

Synthetic studies (`fracscan.demo.synthetic.studies`: 2-3 views, the fracture visible in a subset)
are scored view by view with the committed demo ensemble in process (`ReferenceRunner`, the same
functions as the server). On a tuning split the study thresholds are calibrated for each rule as
`fracscan calibrate --by-study` does; the rule with the best tuning AUC is installed into
model_repository/thresholds.json. On a held-out split the report compares image-level answers (each
view against its own label, image thresholds), study answers without study thresholds (rule max on
the image thresholds: what the server answers before calibration) and calibrated study answers.
DEMO ONLY: synthetic radiographs, not for clinical use.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray

from fracscan.contract import STUDY_RULES, THRESHOLDS_FILE
from fracscan.demo.inputs import npy_bytes
from fracscan.demo.synthetic.studies import make_study
from fracscan.evaluation import binary_metrics, calibrate
from fracscan.evaluation.records import Case
from fracscan.pipeline import ReferenceRunner
from fracscan.study import aggregate, decide_study
from fracscan.thresholds import StudyThresholds, Thresholds

DEMO_DIR = Path(__file__).resolve().parent
ROOT = DEMO_DIR.parent
REPOSITORY = ROOT / "model_repository"
REPORT = DEMO_DIR / "study_report.json"
SEEDS = {"tune": 4_000_000, "test": 5_000_000}  # disjoint from the build's splits (1-3 million)
DEFINITE_SPECIFICITY = 0.95  # as the demo build's image-level definite point
_runner: ReferenceRunner | None = None


def _score_study(job: tuple[int, str, bool]) -> dict[str, Any]:
    """One study: its label and each view's label, score and region (in a worker process)."""
    global _runner
    if _runner is None:
        _runner = ReferenceRunner(REPOSITORY, threads=1)
    seed, region, fracture = job
    study = make_study(seed, region, fracture)
    results = [_runner.predict(npy_bytes(v.pixels), study.region) for v in study.views]
    return {
        "study": study.uid,
        "region": study.region,
        "fracture": study.fracture,
        "visible": list(study.visible),
        "scores": [r.score for r in results],
        "regions": [r.region for r in results],
        "image_fracture": [r.fracture for r in results],
    }


def score_split(name: str, n: int, workers: int) -> list[dict[str, Any]]:
    from fracscan.demo.synthetic import REGIONS

    rng = np.random.default_rng(SEEDS[name])
    jobs = [(SEEDS[name] + i, REGIONS[i % len(REGIONS)], bool(rng.random() < 0.5)) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_score_study, jobs, chunksize=4)


def _cases(rows: list[dict[str, Any]], rule: str) -> list[Case]:
    empty = np.zeros((0, 5))
    return [
        Case(r["study"], r["region"], r["fracture"], aggregate(r["scores"], rule), None, empty, empty) for r in rows
    ]


def calibrate_rule(rows: list[dict[str, Any]], rule: str, image: Thresholds) -> Thresholds:
    fitted = calibrate(_cases(rows, rule), definite_specificity=DEFINITE_SPECIFICITY).thresholds
    provenance = {**fitted.provenance, "rule_of_study_scores": rule, "split": "demo study tuning split"}
    return Thresholds(
        image.regions,
        image.fallback,
        image.provenance,
        StudyThresholds(rule, fitted.regions, fitted.fallback, provenance),
    )


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "positives", "auc", "auc_ci", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci")
    return {k: m[k] for k in keys}


def measure(rows: list[dict[str, Any]], thresholds: Thresholds) -> dict[str, Any]:
    """Image-level (views against their own labels) and study-level metrics at `thresholds`."""
    views = [(v, s, f) for r in rows for v, s, f in zip(r["visible"], r["scores"], r["image_fracture"], strict=True)]
    labels, scores, decided = (np.array(x) for x in zip(*views, strict=True))
    out = {"image": _summary(binary_metrics(labels, scores, decided, key="image"))}
    y = np.array([r["fracture"] for r in rows])
    for name, points in (
        ("study_uncalibrated", Thresholds(thresholds.regions, thresholds.fallback)),
        ("study", thresholds),
    ):
        decisions = [decide_study(r["scores"], r["regions"], points, r["region"]) for r in rows]
        s = np.array([d.score for d in decisions])
        f = np.array([d.fracture for d in decisions])
        out[name] = {**_summary(binary_metrics(y, s, f, key=name)), "rule": decisions[0].rule}
    return out


def main(
    tune: Annotated[int, typer.Option(help="Tuning studies.")] = 400,
    test: Annotated[int, typer.Option(help="Held-out studies.")] = 600,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    install: Annotated[
        bool, typer.Option(help="Install the calibrated study thresholds into model_repository/.")
    ] = True,
) -> None:
    """Calibrate study thresholds on tuning studies and compare image vs study answers on held-out ones."""
    started = time.perf_counter()
    image = Thresholds.load(REPOSITORY / THRESHOLDS_FILE)
    image = Thresholds(image.regions, image.fallback, image.provenance)  # the image-level points only
    tuning, held_out = score_split("tune", tune, workers), score_split("test", test, workers)
    tuning_auc = {rule: binary_metrics(*_labels_scores(tuning, rule), bootstrap=0)["auc"] for rule in STUDY_RULES}
    best = max(STUDY_RULES, key=lambda rule: (tuning_auc[rule], rule == "max"))
    per_rule = {rule: measure(held_out, calibrate_rule(tuning, rule, image))["study"] for rule in STUDY_RULES}
    chosen = calibrate_rule(tuning, best, image)
    report = {
        "notice": "DEMO ONLY: synthetic radiographs, not for clinical use",
        "studies": {"tune": tune, "test": test, "views_per_study": "2-3", "fracture_visible_per_view": 0.6},
        "tuning_auc_by_rule": tuning_auc,
        "installed_rule": best,
        "held_out": measure(held_out, chosen),
        "held_out_study_by_rule": per_rule,
        "run_s": round(time.perf_counter() - started, 1),
    }
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["held_out"], indent=2))
    if install:
        from fracscan.export.repository import install_thresholds

        install_thresholds(REPOSITORY, chosen)
        print(f"installed the study thresholds (rule {best}) into {REPOSITORY / THRESHOLDS_FILE}")


def _labels_scores(rows: list[dict[str, Any]], rule: str) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    y = np.array([r["fracture"] for r in rows])
    s = np.array([aggregate(r["scores"], rule) for r in rows])
    return y, s, np.zeros_like(y)


if __name__ == "__main__":
    typer.run(main)
