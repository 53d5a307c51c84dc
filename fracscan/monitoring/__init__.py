"""Watching a deployed model: result rows over time against a baseline (`fracscan monitor`).

- `records`: reading result rows, verdicts and baselines;
- `baseline`: a baseline's counts, scores and scanners per region;
- `statistics`: control limits, PSI, KS, Wilson (numpy / scipy);
- `report`: the figures per window, model series and region, and the alarms;
- `prometheus`: the figures in the node-exporter text-file format; `plots`: one PNG per figure.
"""

from fracscan.monitoring.records import (
    MonitorInputError,
    read_baseline,
    read_results,
    read_verdicts,
)
from fracscan.monitoring.report import Settings, build_report

__all__ = ["MonitorInputError", "Settings", "build_report", "read_baseline", "read_results", "read_verdicts"]
