"""`fracscan predict`: batch-score files, folders and globs through the SDK.

The command is a short sequence of steps (find the inputs, skip what a resumed run has, connect,
score, write, summarize); the row and overlay writers live in `_predict_output`.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fracscan import contract as c
from fracscan import provenance
from fracscan.atomic import atomic_write_bytes
from fracscan.cli._predict_output import (
    Writer,
    printable,
    result_row,
    served_heads,
    write_overlay,
)
from fracscan.cli._predict_pacs import PacsScorer, check_options, dicomweb_sources
from fracscan.cli._predict_study import predict_studies
from fracscan.cli.console import OutputFormat, err, fail, failed_input, note, out, show_provenance, warn
from fracscan.client import (
    FracScanClient,
    FracScanConnectionError,
    FracScanError,
    Prediction,
    PredictionError,
    WrongModel,
)
from fracscan.contract import QC_SEPARATOR
from fracscan.decode import SNIFF_BYTES, DecodeError, sniff_kind
from fracscan.provenance import ExpectedModel, ModelIdentity
from fracscan.server import DEMO_REPOSITORY, EmbeddedServer, ServerError, require_repository

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


def predict(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Files, folders (searched recursively) or globs.", show_default=False)
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.", show_default=c.DEFAULT_URL
        ),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Anatomical region for every input (overrides DICOM tags).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 60.0,
    embedded: Annotated[
        bool,
        typer.Option(
            help="Start a local server on --repository for this run, on free ports (with --url: only if no "
            "server answers there)."
        ),
    ] = False,
    repository: Annotated[
        Path | None,
        typer.Option(
            help="The model repository that must answer: the server at --url must serve it (else exit 2); "
            "with --embedded, the one to serve.",
            show_default="the demo, for --embedded",
        ),
    ] = None,
    expect_model: Annotated[
        str | None,
        typer.Option(help="SPEC[:MEMBERS_HASH]: every answer must come from this model (else exit 2)."),
    ] = None,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option("--format", help="Output format.", show_default="table on a terminal, else jsonl"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write results to this file instead of stdout.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="With --output FILE (jsonl): skip inputs already scored ok, append the rest.")
    ] = False,
    overlay_dir: Annotated[
        Path | None, typer.Option(help="Write a PNG per input with the boxes and score drawn.")
    ] = None,
    sr_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write a DICOM SR, GSPS and Secondary Capture per scored DICOM input here "
            "(with --by-study: one study SR per study)."
        ),
    ] = None,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            help="Score studies on this DICOMweb server (WADO-RS) instead of the paths (files, folders, globs)."
        ),
    ] = None,
    study: Annotated[
        list[str] | None, typer.Option(help="With --dicomweb: a Study Instance UID to score (repeat the option).")
    ] = None,
    store: Annotated[
        bool, typer.Option(help="With --dicomweb: send the SR, GSPS and SC back into the study (STOW-RS).")
    ] = False,
    by_study: Annotated[
        bool,
        typer.Option(
            help="Group inputs into studies (DICOM StudyInstanceUID, else folder) and score each study in one "
            'request: view rows plus one kind: "study" row per study.'
        ),
    ] = False,
) -> None:
    """Score radiographs (DICOM, PNG, JPEG, TIFF, .npy) and print or save one result per input.

    Every row names the model of its own answer (model_spec, model_members, model_thresholds, model_flags).
    Exit code 0: every input scored and its results written; 1: some inputs failed or their results (overlay,
    SR, GSPS, SC, STOW-RS) were not written (each is listed); 2: usage or connection error, or another model
    answers than --repository / --expect-model asked for.
    """
    fmt = fmt or (OutputFormat.table if sys.stdout.isatty() and output is None else OutputFormat.jsonl)
    wanted = Wanted.of(repository, expect_model)
    if by_study:
        if dicomweb or overlay_dir:
            fail("--by-study scores paths only (no --dicomweb or --overlay-dir)")
        found_files = discover(paths or [])
        connection = connect(url, timeout, embedded, wanted)
        predict_studies(
            found_files, connection, fmt, output, resume, region=region, concurrency=concurrency, sr_dir=sr_dir
        )
    done = resume_state(output, fmt) if resume else set()
    check_options(paths, dicomweb, study, store)
    found = dicomweb_sources(dicomweb, study or []) if dicomweb else discover(paths or [])
    sources = [s for s in found if printable(_label(s)) not in done]
    if resume and output is not None:
        drop_stale_errors(output, {printable(_label(s)) for s in sources})
    if done:
        note(f"Resuming: {len(done)} inputs already scored in {output}, {len(sources)} to go.")
    if overlay_dir:
        overlay_dir.mkdir(parents=True, exist_ok=True)

    with connect(url, timeout, embedded, wanted) as client, ExitStack() as files:
        show_provenance(client.provenance())
        heads = served_heads(client)
        stream = files.enter_context(open(output, "a" if resume else "w")) if output else sys.stdout
        writer = Writer(fmt, stream, append=bool(done), heads=heads)
        overlays = Overlays(overlay_dir) if overlay_dir else None
        scorer = PacsScorer.wrap(client, sr_dir, dicomweb, store)
        results = score(scorer, sources, writer, overlays, region=region, concurrency=concurrency)
        writer.close(out if stream is sys.stdout else Console(file=stream))
    summarize(results, writer.count, skipped=len(done))
    raise typer.Exit(1 if results.failures else 0)


def discover(paths: list[str]) -> list[str | PredictionError]:
    """Files as given; folders recursively (sorted, hidden entries and non-regular files skipped); globs
    expanded. Each file once, however often it is named or matched (by resolved path); a glob matching
    nothing is an error row of its own."""
    found: list[str | PredictionError] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in paths:
        matches = expand_glob(raw) if glob.has_magic(raw) else [raw]
        if not matches:
            found.append(PredictionError(raw, f"no file matches {raw}", "input"))
        for match in matches:
            path = Path(match)
            if not path.is_dir():
                add(str(path))  # a missing or non-regular file is reported by the client
                continue
            for root, dirs, files in os.walk(path):  # does not follow symlinked folders
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    candidate = Path(root) / name
                    if not name.startswith(".") and _looks_like_image(candidate):
                        add(str(candidate))
    return found


def expand_glob(pattern: str) -> list[str]:
    """The glob's matches, sorted; names starting with "." only when the pattern asks for them.

    pathlib's `**` does not descend into symlinked folders (the glob module's does, so a link to a
    parent repeated every file up to the 40-link limit).
    """
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base, rest = Path(*parts[:first]) if first else Path(), Path(*parts[first:])
    hidden = any(part.startswith(".") for part in rest.parts)
    try:
        matches = [
            m for m in base.glob(str(rest)) if hidden or not any(p.startswith(".") for p in m.relative_to(base).parts)
        ]
    except (OSError, ValueError):  # an unreadable base folder, or a pattern pathlib refuses
        return []
    return sorted(str(m) for m in matches)


def _label(item: str | PredictionError) -> str:
    return item.source if isinstance(item, PredictionError) else item


def _looks_like_image(path: Path) -> bool:
    """In folders: a regular file (a FIFO would block the scan), with a known suffix or recognised by
    content (DICOM files often have no suffix)."""
    if not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_kind(f.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def resume_state(output: Path | None, fmt: OutputFormat) -> set[str]:
    """Sources with status ok in the JSONL output of an interrupted run (--resume)."""
    if output is None or fmt is not OutputFormat.jsonl:
        fail("--resume needs --output FILE with --format jsonl")
    done: set[str] = set()
    if not output.exists():
        return done
    for line in output.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("status") == "ok":
            done.add(row.get("source"))
    return done


def drop_stale_errors(output: Path, retried: set[str]) -> None:
    """Before appending, remove the error rows of the inputs scored again now and a last line cut short
    by the interruption, so every input appears once (as `evaluate` and `calibrate` require).

    The file is rewritten atomically (a temporary file beside it, then a rename): an interrupted
    resume leaves the old file or the new one, never half of one.
    """
    if not output.exists():
        return
    data = output.read_bytes()
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    kept = [line for line in lines if not _is_error_row_of(line, retried)]
    if len(kept) == len(lines) and data.endswith(b"\n"):
        return
    atomic_write_bytes(output, b"".join(kept))


def _is_error_row_of(line: bytes, sources: set[str]) -> bool:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(row, dict) and row.get("status") == "error" and row.get("source") in sources


@dataclass(frozen=True)
class Wanted:
    """Which model must answer: --repository DIR (its identity, exactly) and/or --expect-model SPEC[:MEMBERS]."""

    repository: Path | None
    expect: ExpectedModel | None
    identity: ModelIdentity | None = None  # the repository's

    @classmethod
    def of(cls, repository: Path | None, expect_model: str | None) -> Wanted:
        try:
            expect = ExpectedModel.parse(expect_model) if expect_model else None
            identity = provenance.identity(require_repository(repository)) if repository else None
        except (ServerError, ValueError, OSError) as exc:
            fail(str(exc))
        if identity is not None and expect is not None and not expect.matches(identity):
            fail(f"--repository {repository} holds {identity.compact()}, not --expect-model {expect}")
        if identity is not None:  # the stricter of the two: spec, members and thresholds of DIR
            expect = ExpectedModel(identity.spec, identity.members, identity.thresholds)
        return cls(repository, expect, identity)


@contextmanager
def connect(url: str | None, timeout: float, embedded: bool, wanted: Wanted) -> Iterator[FracScanClient]:
    """A ready client whose every answer comes from the wanted model.

    With --embedded and no --url, a server started on the repository (the demo by default) on free ports,
    never whatever listens on :8000. Otherwise the server(s) at --url (default DEFAULT_URL), which must
    serve the wanted model (exit 2 naming the model that answers there); with --embedded, one is started
    for this run only when nobody answers at --url.
    """
    if not (embedded and url is None):
        target = url or c.DEFAULT_URL
        with FracScanClient(target, timeout=timeout, expect_model=wanted.expect) as client:
            problem = _not_ready(client)
            if problem is None:
                _check_model(client, target, wanted)
                yield client
                return
        if not embedded:
            fail(
                f"no fracscan server ready at {target}: {problem}\n"
                "Start one with `fracscan serve`, or add --embedded to start one for this run."
            )
    repository = wanted.repository or DEMO_REPOSITORY
    where = f"on {repository} (free ports)"
    note(
        f"No server at {url}; starting the embedded server {where} ..."
        if url
        else f"Starting the embedded server {where} ..."
    )
    try:
        server = EmbeddedServer(repository).start()
    except (ServerError, ValueError, OSError) as exc:
        fail(str(exc))
    try:
        with FracScanClient(server.http_url, timeout=timeout, expect_model=wanted.expect) as local:
            local.wait_until_ready(timeout=30.0)
            _check_model(local, server.http_url, wanted)
            yield local
    finally:
        server.stop()


def _not_ready(client: FracScanClient) -> FracScanError | None:
    try:
        client.wait_until_ready(timeout=3.0)
    except FracScanError as exc:
        return exc
    return None


def _check_model(client: FracScanClient, url: str, wanted: Wanted) -> None:
    """Exit 2 unless every server at `url` serves the wanted model (read from their configs, before any request)."""
    if wanted.expect is None:
        return
    try:
        client.check_served()
    except WrongModel as exc:
        what = f"{wanted.repository} ({wanted.identity.compact()})" if wanted.identity else f"{wanted.expect}"
        fail(
            f"{exc}. To be answered by {what}: pass the --url of a server that serves it, or stop the server at "
            f"{url} and start one with `fracscan serve --repository DIR`"
            + (", or use --embedded without --url (a server of its own on free ports)" if wanted.repository else "")
        )
    except FracScanError as exc:
        fail(f"cannot tell which model {url} serves: {exc}")


@dataclass
class Overlays:
    """Where overlay PNGs go (each draws the model identity of its own answer)."""

    directory: Path

    def write(self, result: Prediction) -> Prediction | PredictionError:
        """The result, or its error when the overlay could not be written (an error for that input)."""
        try:
            write_overlay(result, self.directory)
        except (OSError, DecodeError, ValueError) as exc:
            return PredictionError.not_delivered(result, f"no overlay written to {self.directory}: {exc}")
        return result


@dataclass
class Scored:
    """What a run did: positives, the inputs that failed, the quality-control warnings, and when scoring
    began (for the rate)."""

    started: float
    positives: int = 0
    failures: list[PredictionError] = field(default_factory=list)
    qc: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (source, its QC warnings)


def score(
    client: FracScanClient,
    sources: list[str | PredictionError],
    writer: Writer,
    overlays: Overlays | None,
    *,
    region: str | None,
    concurrency: int,
) -> Scored:
    """Score every source in order, writing each row as it arrives; a lost server ends the run (exit 2).

    Inputs already known to fail (a glob matching nothing) keep their place in the order.
    """
    scored = Scored(started=time.perf_counter())
    progress = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task("scoring", total=len(sources))
        try:
            files = [s for s in sources if isinstance(s, str)]
            answers = iter(client.predict_many(files, region=region, concurrency=concurrency))
            for result in (s if isinstance(s, PredictionError) else next(answers) for s in sources):
                if isinstance(result, Prediction) and overlays:
                    result = overlays.write(result)
                if isinstance(result, PredictionError) and result.kind == "model":
                    fail(f"{printable(result.source)}: {result.error}")  # another model answers now: stop
                writer.write(result_row(result, writer.heads))
                progress.advance(task)
                if isinstance(result, PredictionError):
                    scored.failures.append(result)
                    if result.kind == "connection":
                        raise FracScanConnectionError(result.error)
                    continue
                scored.positives += result.fracture
                if result.qc:
                    scored.qc.append((result.source, result.qc))
        except FracScanConnectionError as exc:
            fail(f"lost the server: {exc}")
    return scored


def summarize(scored: Scored, written: int, skipped: int) -> None:
    """The failed inputs, the QC warnings, then one line of counts and the rate (stderr, after the results)."""
    elapsed = time.perf_counter() - scored.started
    ok = written - len(scored.failures)
    for failure in scored.failures:
        failed_input(printable(failure.source), failure.error)
    for source, warnings in scored.qc:  # the file as every output names it; QC text holds no identifiers
        warn(f"QC {printable(source)}: {QC_SEPARATOR.join(warnings)}")
    note(
        f"scored {ok}, positives {scored.positives}, failed {len(scored.failures)}"
        f"{f', skipped {skipped} (resume)' if skipped else ''} in {elapsed:.1f} s"
        f" ({ok / elapsed if elapsed > 0 else 0:.1f} radiographs/s)"
    )
