"""What the DICOM node reports about itself: `<spool>/status.json`, rewritten every few seconds.

    fracscan listen --status --spool /var/spool/fracscan      # prints it; exit 1 when absent or stale

Queue length, the oldest waiting instance's age, failures by reason, the last destination and server
errors and the outages in progress, connection and association counts. A Kubernetes probe (exec) or
a monitoring system reads it; it holds no patient attribute.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
EVERY_S = 5.0
STALE_AFTER_S = 30.0


def utc_iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_status(spool: Path, report: dict[str, Any]) -> None:
    """Replace the status file atomically (a reader never sees half of it)."""
    report = {"updated_at": utc_iso(time.time()), "pid": os.getpid(), **report}
    partial = spool / f".{STATUS_FILE}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(partial, spool / STATUS_FILE)


def read_status(spool: Path, stale_after_s: float = STALE_AFTER_S) -> tuple[dict[str, Any] | None, str | None]:
    """(the report, None) when the node is alive; (the report or None, why not) when it is absent or stale."""
    path = spool / STATUS_FILE
    try:
        report = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, f"no {path}: the listener is not running with this spool"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"
    if age > stale_after_s:
        return report, f"{path} was last written {age:.0f} s ago: the listener is not running or is stuck"
    return report, None
