"""The report in the node-exporter text-file format (the textfile collector's `*.prom`).

The latest window of each model series, per region, as gauges, plus the alarm count of every window.
Labels are the window, the series, the region and the figure: aggregates only, no source, no UID.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PREFIX = "fracscan_monitor"
GAUGES = {
    "volume": "answered radiographs in the window",
    "failure_rate": "share of requests that failed",
    "positive_rate": "share answered suspicious or definite",
    "definite_rate": "share answered definite",
    "fallback_rate": "share judged against the fallback threshold",
    "qc_rate": "share with a QC contradiction",
    "score_shift": "population stability index of the scores against the baseline",
    "spread_shift": "population stability index of the member spread against the baseline",
    "new_acquisition": "acquisition values not seen in the baseline",
    "sensitivity": "share of radiologist-positive radiographs answered positive",
    "specificity": "share of radiologist-negative radiographs answered negative",
}


def _labels(**labels: Any) -> str:
    text = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + text + "}"


def render(report: dict[str, Any]) -> str:
    latest: dict[int, str] = {}
    for cell in report["cells"]:
        latest[cell["series"]] = cell["window"]  # cells come in time order within a series
    lines = []
    for figure, help_text in GAUGES.items():
        samples = []
        for cell in report["cells"]:
            f = cell["figures"].get(figure)
            if latest[cell["series"]] != cell["window"] or f is None or f.get("value") is None:
                continue
            labels = _labels(window=cell["window"], series=cell["series"], region=cell["region"])
            samples.append(f"{PREFIX}_{figure}{labels} {float(f['value']):.6g}")
        if samples:
            lines += [f"# HELP {PREFIX}_{figure} {help_text}", f"# TYPE {PREFIX}_{figure} gauge", *samples]
    lines += [f"# HELP {PREFIX}_alarms figures out of their limits", f"# TYPE {PREFIX}_alarms gauge"]
    counts: dict[tuple[str, int, str, str], int] = {}
    for a in report["alarms"]:
        key = (a["window"], a["series"], a["region"], a["figure"])
        counts[key] = counts.get(key, 0) + 1
    for (window, series, region, figure), n in sorted(counts.items()):
        lines.append(f"{PREFIX}_alarms{_labels(window=window, series=series, region=region, figure=figure)} {n}")
    lines.append(f"{PREFIX}_alarms_total {len(report['alarms'])}")
    lines.append(f"{PREFIX}_undated_rows {report['undated_rows']}")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], path: str | Path) -> None:
    """Written to a temporary name and renamed: the collector never reads half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(render(report))
    os.replace(partial, path)
