"""What `fracscan monitor` reads: result rows (JSONL of `predict`, `listen --results-log`, the SDK's
`to_dict`), radiologists' verdicts (CSV) and a baseline (result rows, or a calibration's thresholds.json).

Rows keep, in memory only, what the figures need; the source and the SOP Instance UID are kept solely
to match verdicts and never reach a report. A row without `scored_at` (written before rows carried it)
is counted as undated, never placed in a guessed window.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fracscan.acquisition import Acquisition
from fracscan.provenance import thresholds_hash

UNKNOWN_IDENTITY = "unknown"
ALL = "all"  # the pooled region
SCANNER_KEYS = ("manufacturer", "model_name", "photometric", "size", "transfer_syntax")
JUDGEMENTS = ("accepted", "rejected", "supplemented")  # IHE AI Result Assessment's radiologist reads


class MonitorInputError(ValueError):
    """A file `monitor` cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    """One result row as the figures see it."""

    when: datetime | None
    ok: bool
    identity: str | None  # None: the row does not say (failures); UNKNOWN_IDENTITY: an answer without it
    region: str = ALL
    score: float | None = None
    level: str | None = None
    fallback: bool = False
    spread: float | None = None
    qc: bool | None = None  # a QC contradiction (None: the ensemble has no heads)
    failure: str | None = None  # the failure's kind (input, rejected, server, connection, timeout)
    acquisition: Acquisition = field(default_factory=Acquisition)
    keys: tuple[str, ...] = ()  # the SOP Instance UID and the source: to match verdicts only

    @property
    def positive(self) -> bool:
        return self.level in ("suspicious", "definite")

    def scanner(self) -> dict[str, str]:
        """The acquisition facts a new scanner shows in (size as "rows x columns")."""
        a = self.acquisition
        size = f"{a.rows}x{a.columns}" if a.rows and a.columns else None
        values = {"manufacturer": a.manufacturer, "model_name": a.model_name, "photometric": a.photometric}
        values |= {"size": size, "transfer_syntax": a.transfer_syntax}
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class Verdict:
    fracture: bool
    when: date | None = None
    judgement: str | None = None  # accepted / rejected / supplemented, when recorded


def identity_of(row: dict[str, Any]) -> str:
    """The model identity a row names: "spec members thresholds [flags]", or "unknown" without it."""
    spec, members, thresholds = row.get("model_spec"), row.get("model_members"), row.get("model_thresholds")
    if not (spec or members or thresholds):
        return UNKNOWN_IDENTITY
    flags = row.get("model_flags") or []
    flags = flags.split(",") if isinstance(flags, str) else list(flags)
    text = f"{spec or '?'} members {members or '?'} thresholds {thresholds or '?'}"
    return text + (f" [{', '.join(f for f in flags if f)}]" if any(flags) else "")


def parse_time(value: Any) -> datetime | None:
    """`scored_at` as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def record_of(row: dict[str, Any]) -> Record:
    ok = row.get("status") == "ok" if "status" in row else bool(row.get("ok"))
    when = parse_time(row.get("scored_at"))
    keys = tuple(str(row[k]) for k in ("sop_instance_uid", "source") if row.get(k))
    acquisition = Acquisition.from_dict(row.get("acquisition"))
    if not ok:
        kind = row.get("error_kind") or row.get("kind") or "unknown"
        named = identity_of(row)
        return Record(when, False, None if named == UNKNOWN_IDENTITY else named, failure=str(kind), keys=keys)
    qc = row.get("qc")
    return Record(
        when,
        True,
        identity_of(row),
        region=str(row.get("region") or "unknown"),
        score=float(row["score"]),
        level=str(row.get("level") or ("suspicious" if row.get("fracture") else "negative")),
        fallback=bool(row.get("fallback")),
        spread=float(row["member_spread"]) if row.get("member_spread") is not None else None,
        qc=bool(qc) if isinstance(qc, list) else None,
        acquisition=acquisition,
        keys=keys,
    )


def read_results(paths: Iterable[str | Path]) -> list[Record]:
    """Every row of every JSONL file; a malformed line is an error naming the file and the line."""
    records = []
    for path in paths:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise MonitorInputError(f"{path}: results file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MonitorInputError(f"{path}: cannot read: {exc}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                records.append(record_of(row))
            except (ValueError, KeyError, TypeError) as exc:
                raise MonitorInputError(f"{path}, line {number}: not a result row ({type(exc).__name__})") from None
    return records


def read_verdicts(path: str | Path) -> dict[str, Verdict]:
    """Radiologists' reads: a CSV with `source` or `sop_instance_uid`, `fracture` (1/0), optional `date`
    (YYYY-MM-DD) and optional `judgement` (accepted / rejected / supplemented of the AI result)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            if "fracture" not in fields or not fields & {"source", "sop_instance_uid"}:
                raise MonitorInputError(f"{path}: needs a 'fracture' column and 'source' or 'sop_instance_uid'")
            verdicts = {}
            for number, raw in enumerate(reader, start=2):
                key = (raw.get("sop_instance_uid") or raw.get("source") or "").strip()
                flag = (raw.get("fracture") or "").strip()
                if not key or flag not in ("0", "1"):
                    raise MonitorInputError(f"{path}, line {number}: needs a key and fracture 1 or 0")
                judgement = (raw.get("judgement") or "").strip().lower() or None
                if judgement is not None and judgement not in JUDGEMENTS:
                    raise MonitorInputError(f"{path}, line {number}: judgement must be one of {', '.join(JUDGEMENTS)}")
                try:
                    when = date.fromisoformat(raw["date"].strip()) if (raw.get("date") or "").strip() else None
                except ValueError:
                    raise MonitorInputError(f"{path}, line {number}: date must be YYYY-MM-DD") from None
                verdicts[key] = Verdict(flag == "1", when, judgement)
    except FileNotFoundError:
        raise MonitorInputError(f"{path}: verdicts file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MonitorInputError(f"{path}: cannot read: {exc}") from None
    return verdicts


@dataclass(frozen=True)
class CalibrationBaseline:
    """A thresholds.json's record of its tuning split, per region: count, quantiles, positive rates."""

    thresholds_hash: str  # fracscan.provenance.thresholds_hash: the identity's `model_thresholds` of this file
    target_sensitivity: float | None
    regions: dict[str, dict[str, Any]]


def read_baseline(path: str | Path) -> list[Record] | CalibrationBaseline:
    """Result rows (JSONL) or a calibration record (thresholds.json with a score distribution)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MonitorInputError(f"{path}: baseline file not found") from None
    except OSError as exc:
        raise MonitorInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raw = None  # several JSON lines: result rows
    if not (isinstance(raw, dict) and "fallback" in raw):
        return read_results([path])
    distribution = (raw.get("provenance") or {}).get("score_distribution")
    if not isinstance(distribution, dict) or not isinstance(distribution.get("regions"), dict):
        raise MonitorInputError(
            f"{path}: this thresholds.json has no score distribution (calibrated before calibrate recorded one): "
            "re-run `fracscan calibrate`, or give result rows as the baseline"
        )
    return CalibrationBaseline(
        thresholds_hash(raw),  # as the model identity names the thresholds a server applies
        (raw.get("provenance") or {}).get("target_sensitivity"),
        distribution["regions"],
    )
