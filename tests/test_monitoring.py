"""`fracscan monitor` on synthetic histories from the demo's predictions, and on really scored DICOMs.

The histories come from `fracscan.demo.history`: stable weeks of the demo's test-split rows, then one
week with an event. Each event must be found in its window and region, with exit 3; a stable year none.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fracscan.demo.history import history, write_verdicts
from fracscan.monitoring import build_report
from fracscan.monitoring import statistics as st
from fracscan.monitoring.records import record_of

ROOT = Path(__file__).resolve().parent.parent


def monitor(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fracscan.cli", "monitor", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def found(result: subprocess.CompletedProcess) -> set[tuple[str, int, str, str]]:
    return {(a["window"], a["series"], a["region"], a["figure"]) for a in json.loads(result.stdout)["alarms"]}


# --- statistics ------------------------------------------------------------------------------------


def test_rate_limits_hold_their_false_alarm_rate_on_simulated_stable_windows():
    rng = np.random.default_rng(7)
    p, n, baseline_n, alpha = 0.3, 200, 5000, 0.05
    alarms = 0
    for _ in range(4000):
        limits = st.rate_limits(n, int(rng.binomial(baseline_n, p)), baseline_n, alpha)
        alarms += st.out_of_limits(int(rng.binomial(n, p)), n, limits)
    assert alarms / 4000 <= alpha  # discrete and with the baseline's uncertainty: at most alpha
    shifted = st.rate_limits(n, int(0.3 * baseline_n), baseline_n, alpha)
    assert st.out_of_limits(90, n, shifted) and not st.out_of_limits(60, n, shifted)  # 0.45 out, 0.30 in


def test_psi_ks_and_wilson_against_independent_values():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 5000)
    same, moved = rng.normal(0, 1, 400), rng.normal(0.8, 1, 400)
    qs = st.quantiles_of(base, 21)
    assert st.psi(same, qs) < 0.1 < 0.25 < st.psi(moved, qs)
    assert st.ks_pvalue(moved, base, None, len(base)) < 1e-10 < 0.01 < st.ks_pvalue(same, base, None, len(base))
    # against quantiles only, the p-value is close to the exact test's
    exact = stats.ks_2samp(same, base).pvalue
    assert abs(st.ks_pvalue(same, None, list(qs), len(base)) - exact) < 0.2
    from statsmodels.stats.proportion import proportion_confint

    assert np.allclose(st.wilson(37, 40), proportion_confint(37, 40, method="wilson"))
    assert st.below_target(30, 40, 0.925, 1e-3) and not st.below_target(36, 40, 0.925, 1e-3)


# --- histories -------------------------------------------------------------------------------------


def test_a_stable_history_raises_no_alarm(tmp_path):
    rows = write_rows(tmp_path / "stable.jsonl", history(10, 200, seed=11))
    result = monitor(rows, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["alarms"] == [] and report["undated_rows"] == 0
    judged = [c for c in report["cells"] if c["region"] == "all" and c["figures"]["positive_rate"]["status"] == "ok"]
    assert len(judged) == 6  # 10 weeks, the first 4 the baseline


def test_a_stable_year_at_200_a_week_raises_no_false_alarm():
    rows = [record_of(r) for r in history(52, 200, seed=2027)]
    assert build_report(rows)["alarms"] == []


@pytest.mark.parametrize(
    ("event", "figure"),
    [
        ("score_shift", "score_shift"),
        ("new_scanner", "new_acquisition"),
        ("failures", "failure_rate"),
    ],
)
def test_each_event_is_found_in_its_window_and_region(tmp_path, event, figure):
    rows = write_rows(tmp_path / "h.jsonl", history(8, 200, {6: event}, seed=5))
    result = monitor(rows, "--format", "json")
    assert result.returncode == 3, result.stderr
    alarms = found(result)
    assert ("2026-W07", 1, "all", figure) in alarms  # week 6 of a history starting in 2026-W02
    assert {a[0] for a in alarms} == {"2026-W07"}  # nothing elsewhere
    if event == "new_scanner":
        message = next(a["message"] for a in json.loads(result.stdout)["alarms"] if a["figure"] == figure)
        assert "new manufacturer 'Acme Imaging'" in message and "MONOCHROME1" in message


def test_a_model_change_starts_a_new_series(tmp_path):
    rows = write_rows(tmp_path / "h.jsonl", history(9, 200, {6: "model_replaced"}, seed=5))
    report = monitor(rows, "--format", "json")
    assert report.returncode == 3
    assert found(report) == {("2026-W07", 2, "all", "model_identity")}
    series = json.loads(report.stdout)["series"]
    assert [s["first_window"] for s in series] == ["2026-W02", "2026-W07"]
    # the replaced model's week is compared with the old model's baseline nowhere: it is its own baseline
    cells = [c for c in json.loads(report.stdout)["cells"] if c["series"] == 2 and c["region"] == "all"]
    assert cells and cells[0]["figures"]["positive_rate"]["status"] == "baseline"


def test_a_sensitivity_drop_is_found_from_verdicts(tmp_path):
    rows = write_rows(tmp_path / "h.jsonl", history(8, 400, {7: "missed_fractures"}, seed=5))
    verdicts = tmp_path / "verdicts.csv"
    write_verdicts(verdicts)
    result = monitor(rows, "--verdicts", verdicts, "--format", "json")
    assert result.returncode == 3, result.stderr
    alarms = found(result)
    assert ("2026-W08", 1, "all", "sensitivity") in alarms
    assert not [a for a in alarms if a[3] == "sensitivity" and a[0] != "2026-W08"]
    cell = next(c for c in json.loads(result.stdout)["cells"] if c["window"] == "2026-W08" and c["region"] == "all")
    sens = cell["figures"]["sensitivity"]
    assert sens["upper"] < 0.925 and sens["lower"] <= sens["value"] <= sens["upper"]


def test_rows_without_scored_at_are_reported_not_guessed(tmp_path):
    rows = history(6, 200, seed=3)
    old = [json.loads(line) for line in (ROOT / "demo" / "test_predictions.jsonl").read_text().splitlines()[:37]]
    result = monitor(write_rows(tmp_path / "h.jsonl", rows + old), "--format", "json")
    report = json.loads(result.stdout)
    assert report["undated_rows"] == 37 and "37 row(s) have no scored_at" in result.stderr
    assert sum(c["n"] for c in report["cells"] if c["region"] == "all") == len(rows)  # in no window


def test_a_calibration_is_a_baseline_without_its_files(tmp_path):
    from fracscan.evaluation.calibration import calibrate
    from fracscan.evaluation.matching import Case

    tune = [json.loads(line) for line in (ROOT / "demo" / "test_predictions.jsonl").read_text().splitlines()]
    labels = {
        r["source"]: r["fracture"] == "1"
        for r in csv.DictReader((ROOT / "demo" / "test_labels.csv").read_text().splitlines())
    }
    none = np.zeros((0, 5))
    cases = [Case(r["source"], r["region"], labels[r["source"]], r["score"], None, none, none[:, :4]) for r in tune]
    thresholds = calibrate(cases).thresholds
    distribution = thresholds.provenance["score_distribution"]
    assert len(distribution["regions"]["all"]["quantiles"]) == 21
    assert distribution["regions"]["wrist"]["n"] == 30
    assert distribution["regions"]["all"]["quantiles"][10] == pytest.approx(np.median([c.score for c in cases]))
    path = tmp_path / "thresholds.json"
    thresholds.save(path)
    rows = history(6, 200, {6: "score_shift"}, seed=9)
    for r in rows:  # rows without identity: the calibration applies to them
        for key in ("model_spec", "model_members", "model_thresholds", "model_flags"):
            r.pop(key, None)
    result = monitor(write_rows(tmp_path / "h.jsonl", rows), "--baseline", path, "--format", "json")
    report = json.loads(result.stdout)
    assert report["series"][0]["baseline"].startswith("calibration")
    assert ("2026-W07", 1, "all", "score_shift") in found(result)
    assert not [a for a in found(result) if a[0] != "2026-W07" and a[3] == "score_shift"]


def test_the_worked_example_in_the_docs_runs_as_written(tmp_path):
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    block = doc.split("<!-- example:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "COLUMNS": "150"}
    results = []
    for line in block.strip().splitlines():
        program, _, rest = line.partition(" ")
        command = f"{sys.executable} {rest}" if program == "python" else f"{sys.executable} -m fracscan.cli {rest}"
        results.append(
            subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        )
    assert results[0].returncode == 0 and results[-1].returncode == 3, results[-1].stderr
    for alarm in ("ALARM 2026-W07 series 1 all new_acquisition", "ALARM 2026-W09 series 2 all model_identity"):
        assert alarm in doc and alarm in results[-1].stdout
    assert results[-1].stdout.count("ALARM") == doc.count("ALARM ")
    assert (tmp_path / "plots" / "positive_rate.png").is_file() and (tmp_path / "monitor.prom").is_file()
