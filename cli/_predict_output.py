"""Where `fracscan predict` puts its answers: one row per input as table, CSV, JSONL or JSON, and overlays."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fracscan.acquisition import Acquisition, csv_columns
from fracscan.cli.console import OutputFormat, fail
from fracscan.client import FracScanClient, FracScanError, HeadResult, Prediction, PredictionError
from fracscan.client.models import IDENTITY_FIELDS, identity_fields
from fracscan.contract import QC_SEPARATOR
from fracscan.decode import decode_image
from fracscan.provenance import ModelIdentity

CSV_FIELDS = [
    "source",
    "status",
    "score",
    "fracture",
    "level",
    "threshold",
    "region",
    "region_source",
    "boxes",
    *IDENTITY_FIELDS,
    "scored_at",
    *csv_columns(),
    "error_kind",
    "error",
]
OVERLAY_NOTICE_WIDTH = 50  # characters a line: the notice stays inside a small radiograph


def printable(text: str) -> str:
    """A path as text every output can hold: bytes of a file name that are not UTF-8 (which Python
    keeps as surrogate escapes) become `\\xNN`, the same way every time (so --resume finds them)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def head_columns(heads: Sequence[str]) -> list[str]:
    """The row keys an ensemble with classification heads adds: `<head>`, `<head>_p` per head, then `qc`."""
    return [key for head in heads for key in (head, f"{head}_p")] + (["qc"] if heads else [])


def check_head_names(heads: Sequence[str]) -> None:
    """A head named like a row key (or another head's `_p` / `_probs` key) would overwrite it: refuse."""
    keys = [*result_row(PredictionError("", "", "input")), *head_columns(heads), *(f"{h}_probs" for h in heads)]
    clashes = sorted({k for k in keys if keys.count(k) > 1})
    if clashes:
        raise ValueError(f"the ensemble's head names clash with the output columns {clashes}")


def result_row(result: Prediction | PredictionError, heads: Sequence[str] = ()) -> dict[str, Any]:
    """The one row every format writes for an input (errors keep the same keys, empty).

    With classification heads (`heads`: their names), before `error`: the top class `<head>`, its
    probability `<head>_p`, the QC warnings `qc`, and (JSON only, for `fracscan evaluate`) every
    class's probability `<head>_probs`.
    """
    row = _core_row(result)
    if not heads:
        return row
    error = row.pop("error")
    found, qc = (result.heads, result.qc) if isinstance(result, Prediction) else ({}, ())
    return {**row, **head_keys(found, qc, heads), "error": error}


def head_keys(found: dict[str, HeadResult], qc: Sequence[str], heads: Sequence[str]) -> dict[str, Any]:
    """A row's head keys (see `result_row`); a head without an answer (an error row) has None."""
    row: dict[str, Any] = {}
    for head in heads:
        answer = found.get(head)
        row[head] = answer.label if answer else None
        row[f"{head}_p"] = answer.confidence if answer else None
    row["qc"] = list(qc)
    for head in heads:
        answer = found.get(head)
        row[f"{head}_probs"] = dict(answer.probs) if answer else None
    return row


def served_heads(client: FracScanClient) -> tuple[str, ...]:
    """The names of the served ensemble's classification heads (none for the Jones ensemble); exit 2 when
    the server cannot say or a head name would overwrite an output column."""
    try:
        heads = tuple(client.heads())
        check_head_names(heads)
    except (FracScanError, ValueError) as exc:
        fail(str(exc))
    return heads


def _core_row(result: Prediction | PredictionError) -> dict[str, Any]:
    """An answer's row; an error row has the same keys, empty, but an answer whose results were not written
    (kind "output") keeps the answer and its model identity beside the error."""
    if isinstance(result, PredictionError) and result.answer is not None:
        return {
            **_core_row(result.answer),
            "source": printable(result.source),
            "status": "error",
            "error": result.error,
        }
    if isinstance(result, Prediction):
        d = result.to_dict()
        return {
            "source": printable(d["source"]),
            "status": "ok",
            # Unrounded: calibration compares these with thresholds exactly as the server does.
            "score": d["score"],
            "fracture": d["fracture"],
            "level": d["level"],
            "threshold": d["threshold"],
            "definite_threshold": d["definite_threshold"],
            "region": d["region"],
            "region_source": d["region_source"],
            "fallback": d["fallback"],
            "boxes": d["boxes"],
            "member_spread": d["member_spread"],
            "model": f"{d['model_name']}:{d['model_version']}",
            **{key: d[key] for key in IDENTITY_FIELDS},
            "scored_at": d["scored_at"],
            "acquisition": d["acquisition"],
            "error_kind": None,
            "error": None,
        }
    return {
        "source": printable(result.source),
        "status": "error",
        "score": None,
        "fracture": None,
        "level": None,
        "threshold": None,
        "definite_threshold": None,
        "region": None,
        "region_source": None,
        "fallback": None,
        "boxes": [],
        "member_spread": None,
        "model": None,
        **identity_fields(None),
        "scored_at": result.scored_at,
        "acquisition": result.acquisition.to_dict(),
        "error_kind": result.kind,  # input / rejected / server / connection / timeout / model / output: monitor's failure reasons
        "error": result.error,
    }


class Writer:
    """Streams rows to JSONL / CSV / a JSON array as they arrive; collects rows for a table."""

    def __init__(self, fmt: OutputFormat, stream: IO[str], append: bool, heads: Sequence[str] = ()):
        self.fmt, self.stream, self.count = fmt, stream, 0
        self.heads = tuple(heads)  # the ensemble's classification heads: a column each in CSV and the table
        self.rows: list[dict[str, Any]] = []
        if fmt is OutputFormat.csv:
            fields = CSV_FIELDS[:-1] + head_columns(self.heads) + CSV_FIELDS[-1:]  # error stays last
            self.csv = csv.DictWriter(stream, fields, extrasaction="ignore")
            if not append:
                self.csv.writeheader()
        elif fmt is OutputFormat.json:
            stream.write("[")

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt is OutputFormat.jsonl:
            self.stream.write(json.dumps(row) + "\n")
        elif self.fmt is OutputFormat.csv:
            # 1/0 like the label files, so a results CSV reads back as one
            flag = {True: 1, False: 0}.get(row["fracture"], "")
            qc = {"qc": QC_SEPARATOR.join(row["qc"])} if self.heads else {}
            acquisition = Acquisition.from_dict(row["acquisition"]).to_csv()
            flags = {"model_flags": ",".join(row["model_flags"] or [])}
            self.csv.writerow(
                {**row, "fracture": flag, "boxes": json.dumps(row["boxes"]), **acquisition, **qc, **flags}
            )
        elif self.fmt is OutputFormat.json:
            self.stream.write(("," if self.count else "") + "\n  " + json.dumps(row))
        else:
            self.rows.append(row)
        self.count += 1
        self.stream.flush()  # an interrupted run keeps every line written so far

    def close(self, console: Console) -> None:
        if self.fmt is OutputFormat.json:
            self.stream.write("\n]\n")
        elif self.fmt is OutputFormat.table:
            console.print(results_table(self.rows, self.heads))


def results_table(rows: list[dict[str, Any]], heads: Sequence[str] = ()) -> Table:
    """The results as a table; an error row shows its reason, and the fallback footnote appears only
    when some row has the asterisk it explains. A column per classification head: "left 0.97"."""
    fallback = any(r.get("fallback") for r in rows)
    table = Table(
        title=" ".join(["fracscan predictions", *models_answering(rows)]),
        title_style="bold",
        caption="* no calibrated threshold for the region: fallback applied" if fallback else None,
    )
    table.add_column("source", overflow="fold")  # paths wrap rather than vanish on narrow terminals
    for col in ("score", "thr.", "result", "region", "boxes"):
        right = col in ("score", "thr.", "boxes")
        table.add_column(col, justify="right" if right else "left", no_wrap=col != "result", overflow="fold")
    for head in heads:
        table.add_column(head.replace("_", " "), overflow="fold")
    for r in rows:
        source = escape(r["source"])  # a path with [brackets] is a path, not markup
        if r["status"] == "ok":
            verdict = {"definite": "[bold red]FRACTURE[/] definite", "suspicious": "[yellow]FRACTURE[/] suspicious"}
            verdict = verdict.get(
                r.get("level") or "", "[bold red]FRACTURE[/]" if r["fracture"] else "[green]no fracture[/]"
            )
            region = escape(r["region"]) + ("*" if r.get("fallback") else "")
            answers = [head_cell(r, h) for h in heads]
            table.add_row(
                source, f"{r['score']:.3f}", f"{r['threshold']:.3f}", verdict, region, str(len(r["boxes"])), *answers
            )
        else:
            table.add_row(source, "", "", f"[red]error:[/] {escape(r['error'] or '')}", "", "", *([""] * len(heads)))
    return table


def models_answering(rows: list[dict[str, Any]]) -> list[str]:
    """The models the rows name, in order of first appearance, as `spec@members/thresholds+flags` ("by ..." once)."""
    names: list[str] = []
    for row in rows:
        if row.get("model_spec") is not None:
            identity = ModelIdentity(
                row["model_spec"], row["model_members"], row["model_thresholds"], tuple(row["model_flags"])
            )
            if identity.compact() not in names:
                names.append(identity.compact())
    return ["by", ", ".join(names)] if names else []


def head_cell(row: dict[str, Any], head: str) -> str:
    """A head's answer as the table shows it: the top class and its probability."""
    label, p = row.get(head), row.get(f"{head}_p")
    return "" if label is None else escape(f"{label} {p:.2f}")


def overlay_notice(identity: ModelIdentity | None) -> str:
    """The notices of the answering model's flags, wrapped to fit a small radiograph ("" without flags)."""
    notices = identity.notices() if identity else ()
    return "\n".join(textwrap.fill(line, OVERLAY_NOTICE_WIDTH) for line in notices)


def write_overlay(result: Prediction, overlay_dir: Path) -> Path:
    """The radiograph with the boxes (definite solid, suspicious dashed), the decision and, from the answer's
    own model identity, its notices and a banner of every flag (DEMO, RANDOM WEIGHTS, UNCALIBRATED). The PNG's
    text chunks record the identity (`fracscan:model`) and the banner (`fracscan:banner`)."""
    from PIL.PngImagePlugin import PngInfo

    from fracscan.client import overlay

    identity = result.model_identity
    image = overlay.windowed(decode_image(Path(result.source).read_bytes()).pixels)
    overlay.draw_findings(image, result.boxes, result.level)
    text = f"{verdict(result)}  score {result.score:.3f} / threshold {result.threshold:.3f}  region {result.region}"
    notice = overlay_notice(identity)
    lines = [text, *overlay.answer_lines(result.heads, result.qc, result.boxes)] + ([notice] if notice else [])
    overlay.draw_text(image, "\n".join(lines))
    banner = " + ".join(identity.banners()) if identity else ""
    overlay.draw_banner(image, banner)
    info = PngInfo()
    info.add_text("fracscan:model", identity.compact() if identity else f"{result.model_name}:{result.model_version}")
    info.add_text("fracscan:banner", banner)
    name = str(Path(result.source).with_suffix("")).strip("/").replace(os.sep, "__") + ".png"
    image.save(overlay_dir / name, pnginfo=info)
    return overlay_dir / name


def verdict(result: Prediction) -> str:
    """The decision as a person reads it: the two levels of a positive answer are told apart."""
    return {"definite": "FRACTURE (definite)", "suspicious": "FRACTURE (suspicious)"}.get(result.level, "no fracture")
