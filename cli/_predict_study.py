"""`fracscan predict --by-study`: group the inputs into studies, score each study in one request, write rows.

Grouping: DICOM files by StudyInstanceUID; every other file (and a DICOM whose header cannot be read)
by its folder, and it joins the DICOM study of that folder when the folder holds exactly one. Each
study is one request to the server's `fracscan_study` model; its views' rows (`kind: "image"`) come
first, then one study row (`kind: "study"`: the study key, how it was grouped, the view sources, the
study score, decision, level and the number of views used). With classification heads, every row has
the keys of `fracscan predict`'s (`<head>`, `<head>_p`, `qc`, `<head>_probs`): a view row its own heads,
the study row the study's (the views' weighted vote) and the QC warnings where its views disagree.
`--resume` works per study: a study
whose row is ok and whose views were all scored is skipped; any other study is scored again as a
whole (its earlier rows are dropped first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import typer
from pydicom.errors import InvalidDicomError
from rich.console import Console

from fracscan.atomic import atomic_write_bytes
from fracscan.cli._predict_output import Writer, head_keys, printable, result_row, served_heads
from fracscan.cli._predict_pacs import study_sr_writer
from fracscan.cli.console import OutputFormat, fail, failed_input, note, out, show_provenance
from fracscan.client import (
    FracScanClient,
    FracScanConnectionError,
    FracScanError,
    PredictionError,
    StudyPrediction,
    ViewPrediction,
)
from fracscan.client.models import identity_fields
from fracscan.decode import SNIFF_BYTES, sniff_kind
from fracscan.provenance import ModelIdentity

STUDY_KIND, IMAGE_KIND = "study", "image"


@dataclass(frozen=True)
class Study:
    key: str  # the StudyInstanceUID, or the folder
    grouped_by: str  # "dicom" or "folder"
    views: tuple[str, ...]


def _study_uid(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            if sniff_kind(f.read(SNIFF_BYTES)) != "dicom":
                return None
        uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID")
    except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError):
        return None
    return str(uid).strip() or None if uid else None


def group_studies(files: list[str]) -> list[Study]:
    """Studies in the order of their first view; views in input order (see the module docstring)."""
    uids = {f: _study_uid(f) for f in files}
    folder_uids: dict[str, set[str]] = {}
    for f, uid in uids.items():
        if uid is not None:
            folder_uids.setdefault(os.path.dirname(f), set()).add(uid)
    groups: dict[tuple[str, str], list[str]] = {}
    for f, uid in uids.items():
        folder = os.path.dirname(f)
        if uid is None and len(folder_uids.get(folder, ())) == 1:
            uid = next(iter(folder_uids[folder]))
        key = ("dicom", uid) if uid is not None else ("folder", folder or ".")
        groups.setdefault(key, []).append(f)
    return [Study(key, by, tuple(views)) for (by, key), views in groups.items()]


def done_studies(output: Path) -> set[str]:
    """--resume: the keys of the studies whose row is ok and whose every view was scored."""
    done = set()
    for row in _rows(output):
        if (
            row.get("kind") == STUDY_KIND
            and row.get("status") == "ok"
            and row.get("views_used") == len(row.get("sources") or ())
        ):
            done.add(str(row.get("study")))
    return done


def _rows(output: Path) -> Iterator[dict[str, Any]]:
    if not output.exists():
        return
    for line in output.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row


def drop_rows_of(output: Path, studies: list[Study]) -> None:
    """Before appending: remove every row of the studies scored again now, and a last line cut short."""
    if not output.exists():
        return
    keys = {s.key for s in studies}
    views = {printable(v) for s in studies for v in s.views}

    def stale(line: bytes) -> bool:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        if not isinstance(row, dict):
            return False
        return row.get("study") in keys if row.get("kind") == STUDY_KIND else row.get("source") in views

    lines = output.read_bytes().splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    kept = [line for line in lines if not stale(line)]
    atomic_write_bytes(output, b"".join(kept))  # an interrupted resume leaves the old file or the new one


def view_row(
    view: ViewPrediction | PredictionError,
    study: Study,
    heads: tuple[str, ...] = (),
    identity: ModelIdentity | None = None,
) -> dict[str, Any]:
    """A view's row: the keys of `fracscan predict`'s image rows, plus the study it belongs to; `identity`:
    the model that answered the study."""
    base = {"kind": IMAGE_KIND, "study": study.key, "source": printable(view.source)}
    if isinstance(view, PredictionError):
        empty = dict.fromkeys(("score", "fracture", "level", "threshold", "region"))
        found = head_keys({}, (), heads) if heads else {}
        return {
            **base, "status": "error", **empty, "boxes": [], **found, **identity_fields(identity), "error": view.error
        }  # fmt: skip
    return {
        **base,
        "status": "ok",
        "score": view.score,
        "fracture": view.fracture,
        "level": view.level,
        "threshold": view.threshold,
        "region": view.region,
        "boxes": [b.to_list() for b in view.boxes],
        **(head_keys(view.heads, view.qc, heads) if heads else {}),
        **identity_fields(identity),
        "error": None,
    }


def study_row(study: Study, answer: StudyPrediction | FracScanError, heads: tuple[str, ...] = ()) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": STUDY_KIND,
        "study": study.key,
        "grouped_by": study.grouped_by,
        "source": study.key,
        "sources": [printable(v) for v in study.views],
    }
    if isinstance(answer, FracScanError):
        empty = dict.fromkeys(("score", "fracture", "level", "threshold", "region", "rule", "calibrated"))
        found = head_keys({}, (), heads) if heads else {}
        none = identity_fields(None)
        return {
            **row, "status": "error", **empty, "views_used": 0, "boxes": [], **found, **none, "error": answer.reason
        }  # fmt: skip
    return {
        **row,
        "status": "ok",
        "score": answer.score,
        "fracture": answer.fracture,
        "level": answer.level,
        "threshold": answer.threshold,
        "definite_threshold": answer.definite_threshold,
        "region": answer.region,
        "fallback": answer.fallback,
        "views_used": answer.views_used,
        "disagreeing_views": list(answer.disagreeing),
        "rule": answer.rule,
        "calibrated": answer.calibrated,
        "boxes": [],
        "model": f"{answer.model_name}:{answer.model_version}",
        **(head_keys(answer.heads, answer.qc, heads) if heads else {}),
        **identity_fields(answer.model_identity),
        "error": None,
    }


@dataclass
class StudyRun:
    started: float = field(default_factory=time.perf_counter)
    studies: int = 0
    positives: int = 0
    failures: list[PredictionError] = field(default_factory=list)


def score_studies(
    client: FracScanClient,
    studies: list[Study],
    writer: Writer,
    *,
    region: str | None,
    concurrency: int,
    after: Callable[[StudyPrediction], None] | None = None,
) -> StudyRun:
    """Score the studies, `concurrency` in flight, writing each study's rows in study order (then `after`)."""
    run, heads = StudyRun(), writer.heads

    def one(study: Study) -> StudyPrediction | FracScanError:
        try:
            return client.predict_study(list(study.views), region=region)
        except FracScanConnectionError:
            raise
        except FracScanError as exc:
            return exc

    with ThreadPoolExecutor(concurrency, thread_name_prefix="fracscan-study") as pool:
        try:
            for study, answer in zip(studies, pool.map(one, studies), strict=True):
                views = (
                    answer.views
                    if isinstance(answer, StudyPrediction)
                    else tuple(PredictionError(v, answer.reason, answer.kind) for v in study.views)
                )
                identity = answer.model_identity if isinstance(answer, StudyPrediction) else None
                for view in views:
                    row = view_row(view, study, heads, identity)
                    writer.write(row)
                    if isinstance(view, PredictionError):
                        run.failures.append(view)
                writer.write(study_row(study, answer, heads))
                if after is not None and isinstance(answer, StudyPrediction):
                    after(answer)
                run.studies += 1
                run.positives += isinstance(answer, StudyPrediction) and answer.fracture
        except FracScanConnectionError as exc:
            fail(f"lost the server: {exc}")
    return run


def summarize_studies(run: StudyRun, skipped: int) -> None:
    for failure in run.failures:
        failed_input(printable(failure.source), failure.error)
    elapsed = time.perf_counter() - run.started
    note(
        f"scored {run.studies} studies, positive studies {run.positives}, failed views {len(run.failures)}"
        f"{f', skipped {skipped} studies (resume)' if skipped else ''} in {elapsed:.1f} s"
    )


def plan(files: list[str], output: Path | None, resume: bool) -> tuple[list[Study], int]:
    """(the studies to score now, how many a resumed run skips); states how non-DICOM inputs were grouped."""
    studies = group_studies(files)
    by_folder = [s for s in studies if s.grouped_by == "folder"]
    if by_folder:
        note(f"{len(by_folder)} of {len(studies)} studies grouped by folder (inputs without a DICOM StudyInstanceUID)")
    if not (resume and output is not None):
        return studies, 0
    done = done_studies(output)
    todo = [s for s in studies if s.key not in done]
    drop_rows_of(output, todo)
    if len(todo) < len(studies):
        note(f"Resuming: {len(studies) - len(todo)} studies already scored in {output}, {len(todo)} to go.")
    return todo, len(studies) - len(todo)


def predict_studies(
    found: list[str | PredictionError],
    connection: AbstractContextManager[FracScanClient],
    fmt: OutputFormat,
    output: Path | None,
    resume: bool,
    *,
    region: str | None,
    concurrency: int,
    sr_dir: Path | None = None,
) -> None:
    """The --by-study run: plan, connect, score, write (and the study SRs), summarize; exits 1 when some view failed."""
    if resume and (output is None or fmt is not OutputFormat.jsonl):
        fail("--resume needs --output FILE with --format jsonl")
    unmatched = [s for s in found if isinstance(s, PredictionError)]  # a glob that matched nothing
    studies, skipped = plan([s for s in found if isinstance(s, str)], output, resume)
    with connection as client, ExitStack() as files:
        record = client.provenance()
        show_provenance(record)
        heads = served_heads(client)
        after = study_sr_writer(sr_dir) if sr_dir is not None else None
        stream = files.enter_context(open(output, "a" if resume else "w")) if output else sys.stdout
        writer = Writer(fmt, stream, append=bool(resume and skipped), heads=heads)
        for error in unmatched:
            writer.write(result_row(error))
        run = score_studies(client, studies, writer, region=region, concurrency=concurrency, after=after)
        writer.close(out if stream is sys.stdout else Console(file=stream))
    run.failures[:0] = unmatched
    summarize_studies(run, skipped)
    raise typer.Exit(1 if run.failures else 0)
