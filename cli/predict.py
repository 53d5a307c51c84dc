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

from fracscan.cli._predict_output import Writer, overlay_notice, result_row, write_overlay
from fracscan.cli.console import OutputFormat, err, fail, failed_input, note, out, show_provenance, warn
from fracscan.client import FracScanClient, FracScanConnectionError, FracScanError, Prediction, PredictionError
from fracscan.decode import DecodeError, sniff_kind
from fracscan.server import DEMO_REPOSITORY, EmbeddedServer, ServerError

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


def predict(
    paths: Annotated[
        list[str], typer.Argument(help="Files, folders (searched recursively) or globs.", show_default=False)
    ],
    url: Annotated[
        str, typer.Option(help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.")
    ] = "http://localhost:8000",
    region: Annotated[
        str | None, typer.Option(help="Anatomical region for every input (overrides DICOM tags).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 60.0,
    embedded: Annotated[
        bool, typer.Option(help="If no server answers at --url, start the bundled local server for this run.")
    ] = False,
    repository: Annotated[Path, typer.Option(help="Model repository for --embedded.")] = DEMO_REPOSITORY,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option("--format", help="Output format [default: table on a terminal, else jsonl].", show_default=False),
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
) -> None:
    """Score radiographs (DICOM, PNG, JPEG, TIFF, .npy) and print or save one result per input.

    Exit code 0: every input scored; 1: some inputs failed (each is listed); 2: usage or connection error.
    """
    fmt = fmt or (OutputFormat.table if sys.stdout.isatty() and output is None else OutputFormat.jsonl)
    done = resume_state(output, fmt) if resume else set()
    sources = [s for s in discover(paths) if s not in done]
    if done:
        note(f"Resuming: {len(done)} inputs already scored in {output}, {len(sources)} to go.")
    if overlay_dir:
        overlay_dir.mkdir(parents=True, exist_ok=True)

    with connect(url, timeout, embedded, repository) as client, ExitStack() as files:
        record = client.provenance()
        show_provenance(record)
        stream = files.enter_context(open(output, "a" if resume else "w")) if output else sys.stdout
        writer = Writer(fmt, stream, append=bool(done))
        overlays = Overlays(overlay_dir, overlay_notice(record)) if overlay_dir else None
        results = score(client, sources, writer, overlays, region=region, concurrency=concurrency)
        writer.close(out if stream is sys.stdout else Console(file=stream))
    summarize(results, writer.count, skipped=len(done))
    raise typer.Exit(1 if results.failures else 0)


def discover(paths: list[str]) -> Iterator[str]:
    """Files as given; folders recursively (sorted, hidden entries skipped); globs expanded."""
    for raw in paths:
        matches = sorted(glob.glob(raw, recursive=True)) if glob.has_magic(raw) else [raw]
        if not matches:
            yield raw  # reported as "file not found" by the client, like any missing file
        for match in matches:
            path = Path(match)
            if path.is_dir():
                for root, dirs, files in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    for name in sorted(files):
                        candidate = Path(root) / name
                        if not name.startswith(".") and _looks_like_image(candidate):
                            yield str(candidate)
            else:
                yield str(path)


def _looks_like_image(path: Path) -> bool:
    """In folders: known suffix, or recognised by content (DICOM files often have no suffix)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_kind(f.read(132)) is not None
    except OSError:
        return False


def resume_state(output: Path | None, fmt: OutputFormat) -> set[str]:
    """Sources with status ok in the JSONL output of an interrupted run (--resume).

    A last line cut short by the interruption is removed, so appending starts on a fresh line.
    """
    if output is None or fmt is not OutputFormat.jsonl:
        fail("--resume needs --output FILE with --format jsonl")
    done: set[str] = set()
    if not output.exists():
        return done
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(output, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    with open(output) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("status") == "ok":
                done.add(row.get("source"))
    return done


@contextmanager
def connect(url: str, timeout: float, embedded: bool, repository: Path) -> Iterator[FracScanClient]:
    """A ready client: the server at `url`, or with --embedded one started on `repository` for this run."""
    with FracScanClient(url, timeout=timeout) as client:
        problem = _not_ready(client)
        if problem is None:
            yield client
            return
    if not embedded:
        fail(
            f"no fracscan server ready at {url}: {problem}\n"
            "Start one with `fracscan serve`, or add --embedded to start one for this run."
        )
    note(f"No server at {url}; starting the embedded server on {repository} ...")
    try:
        server = EmbeddedServer(repository).start()
    except (ServerError, ValueError, OSError) as exc:
        fail(str(exc))
    try:
        with FracScanClient(server.http_url, timeout=timeout) as local:
            local.wait_until_ready(timeout=30.0)
            yield local
    finally:
        server.stop()


def _not_ready(client: FracScanClient) -> FracScanError | None:
    try:
        client.wait_until_ready(timeout=3.0)
    except FracScanError as exc:
        return exc
    return None


@dataclass
class Overlays:
    """Where overlay PNGs go, and the provenance notice each one carries."""

    directory: Path
    notice: str

    def write(self, result: Prediction) -> None:
        try:
            write_overlay(result, self.directory, self.notice)
        except (OSError, DecodeError) as exc:
            warn(f"no overlay for {result.source}: {exc}")


@dataclass
class Scored:
    """What a run did: positives, the inputs that failed, and when scoring began (for the rate)."""

    started: float
    positives: int = 0
    failures: list[PredictionError] = field(default_factory=list)


def score(
    client: FracScanClient,
    sources: list[str],
    writer: Writer,
    overlays: Overlays | None,
    *,
    region: str | None,
    concurrency: int,
) -> Scored:
    """Score every source in order, writing each row as it arrives; a lost server ends the run (exit 2)."""
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
            for result in client.predict_many(sources, region=region, concurrency=concurrency):
                writer.write(result_row(result))
                progress.advance(task)
                if not result.ok:
                    scored.failures.append(result)
                    if result.kind == "connection":
                        raise FracScanConnectionError(result.error)
                    continue
                scored.positives += result.fracture
                if overlays:
                    overlays.write(result)
        except FracScanConnectionError as exc:
            fail(f"lost the server: {exc}")
    return scored


def summarize(scored: Scored, written: int, skipped: int) -> None:
    """The failed inputs, then one line of counts and the rate (stderr, after the results)."""
    elapsed = time.perf_counter() - scored.started
    ok = written - len(scored.failures)
    for failure in scored.failures:
        failed_input(failure.source, failure.error)
    note(
        f"scored {ok}, positives {scored.positives}, failed {len(scored.failures)}"
        f"{f', skipped {skipped} (resume)' if skipped else ''} in {elapsed:.1f} s"
        f" ({ok / elapsed if elapsed > 0 else 0:.1f} radiographs/s)"
    )
