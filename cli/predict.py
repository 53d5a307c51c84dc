"""`fracscan predict`: batch-score files, folders and globs through the SDK."""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import IO, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fracscan.client import FracScanClient, FracScanConnectionError, FracScanError, Prediction, PredictionError
from fracscan.decode import DecodeError, decode_image, sniff_kind
from fracscan.server import DEMO_REPOSITORY, EmbeddedServer, ServerError

err = Console(stderr=True, highlight=False)

DEMO_NOTICE = "DEMO ensemble: small models trained on synthetic radiographs. Not for clinical use."
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}
CSV_FIELDS = ["source", "status", "score", "fracture", "threshold", "region", "region_source", "boxes", "error"]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


# --- inputs ------------------------------------------------------------------------------


def _looks_like_image(path: Path) -> bool:
    """In folders: known suffix, or recognised by content (DICOM files often have no suffix)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_kind(f.read(132)) is not None
    except OSError:
        return False


def expand_inputs(paths: list[str]) -> Iterator[str]:
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


def already_done(output: Path) -> set[str]:
    """Sources with status ok in an existing JSONL output (for --resume).

    A last line cut short by the interruption is removed, so appending starts on a fresh line.
    """
    done = set()
    if output.exists():
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


# --- outputs -----------------------------------------------------------------------------


def result_row(result: Prediction | PredictionError) -> dict:
    if result.ok:
        d = result.to_dict()
        return {
            "source": d["source"],
            "status": "ok",
            # Unrounded: calibration compares these with thresholds exactly as the server does.
            "score": d["score"],
            "fracture": d["fracture"],
            "threshold": d["threshold"],
            "region": d["region"],
            "region_source": d["region_source"],
            "fallback": d["fallback"],
            "boxes": d["boxes"],
            "member_spread": d["member_spread"],
            "model": f"{d['model_name']}:{d['model_version']}",
            "error": None,
        }
    return {
        "source": result.source,
        "status": "error",
        "score": None,
        "fracture": None,
        "threshold": None,
        "region": None,
        "region_source": None,
        "boxes": [],
        "error": result.error,
    }


class Writer:
    """Streams rows to JSONL / CSV / a JSON array as they arrive; collects rows for a table."""

    def __init__(self, fmt: OutputFormat, stream: IO[str], append: bool):
        self.fmt, self.stream, self.rows, self.count = fmt, stream, [], 0
        if fmt is OutputFormat.csv:
            self.csv = csv.DictWriter(stream, CSV_FIELDS, extrasaction="ignore")
            if not append:
                self.csv.writeheader()
        elif fmt is OutputFormat.json:
            stream.write("[")

    def write(self, row: dict) -> None:
        if self.fmt is OutputFormat.jsonl:
            self.stream.write(json.dumps(row) + "\n")
        elif self.fmt is OutputFormat.csv:
            self.csv.writerow({**row, "boxes": json.dumps(row["boxes"])})
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
            table = Table(title="fracscan predictions", title_style="bold", caption="* no calibrated threshold for the region: fallback applied")
            table.add_column("source", overflow="fold")  # paths wrap rather than vanish on narrow terminals
            for col in ("score", "thr.", "result", "region", "boxes"):
                table.add_column(col, justify="right" if col in ("score", "thr.", "boxes") else "left", no_wrap=True)
            for r in self.rows:
                if r["status"] == "ok":
                    verdict = "[bold red]FRACTURE[/]" if r["fracture"] else "[green]no fracture[/]"
                    region = r["region"] + ("*" if r.get("fallback") else "")
                    table.add_row(r["source"], f"{r['score']:.3f}", f"{r['threshold']:.3f}", verdict, region, str(len(r["boxes"])))
                else:
                    table.add_row(r["source"], "", "", "[red]error[/]", "", "")
            console.print(table)


def write_overlay(result: Prediction, overlay_dir: Path, demo: bool) -> None:
    """The radiograph with the boxes and the score drawn on it, as a person would review it."""
    from PIL import Image, ImageDraw

    pixels = decode_image(Path(result.source).read_bytes()).pixels
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    gray = (np.clip((pixels - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(gray).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    for box in result.boxes:
        draw.rectangle([box.x0, box.y0, box.x1, box.y1], outline=(255, 40, 40), width=width)
        draw.text((box.x0, max(0, box.y0 - 14 * width // 2)), f"{box.confidence:.2f}", fill=(255, 40, 40))
    verdict = "FRACTURE" if result.fracture else "no fracture"
    text = f"{verdict}  score {result.score:.3f} / threshold {result.threshold:.3f}  region {result.region}"
    if demo:
        text += "\nDEMO model - not for clinical use"
    font_size = max(12, img.size[0] // 40)
    draw.multiline_text((8, 8), text, fill=(255, 220, 0), font_size=font_size, stroke_width=2, stroke_fill=(0, 0, 0))
    name = str(Path(result.source).with_suffix("")).strip("/").replace(os.sep, "__") + ".png"
    img.save(overlay_dir / name)


# --- the command -------------------------------------------------------------------------


def predict(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (searched recursively) or globs.", show_default=False)],
    url: Annotated[str, typer.Option(help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.")] = "http://localhost:8000",
    region: Annotated[str | None, typer.Option(help="Anatomical region for every input (overrides DICOM tags).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 8,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 60.0,
    embedded: Annotated[bool, typer.Option(help="If no server answers at --url, start the bundled local server for this run.")] = False,
    repository: Annotated[Path, typer.Option(help="Model repository for --embedded.")] = DEMO_REPOSITORY,
    fmt: Annotated[OutputFormat | None, typer.Option("--format", help="Output format [default: table on a terminal, else jsonl].", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write results to this file instead of stdout.")] = None,
    resume: Annotated[bool, typer.Option(help="With --output FILE (jsonl): skip inputs already scored ok, append the rest.")] = False,
    overlay_dir: Annotated[Path | None, typer.Option(help="Write a PNG per input with the boxes and score drawn.")] = None,
) -> None:
    """Score radiographs (DICOM, PNG, JPEG, TIFF, .npy) and print or save one result per input.

    Exit code 0: every input scored; 1: some inputs failed (each is listed); 2: usage or connection error.
    """
    fmt = fmt or (OutputFormat.table if sys.stdout.isatty() and output is None else OutputFormat.jsonl)
    if resume and (output is None or fmt is not OutputFormat.jsonl):
        err.print("[red]error:[/] --resume needs --output FILE with --format jsonl")
        raise typer.Exit(2)
    done = already_done(output) if resume and output else set()
    sources = [s for s in expand_inputs(paths) if s not in done]
    if done:
        err.print(f"Resuming: {len(done)} inputs already scored in {output}, {len(sources)} to go.")
    if overlay_dir:
        overlay_dir.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        client = stack.enter_context(FracScanClient(url, timeout=timeout))
        demo = False
        try:
            client.wait_until_ready(timeout=3.0)
        except FracScanError as exc:
            if not embedded:
                err.print(f"[red]error:[/] no fracscan server ready at {url}: {exc}\n"
                          "Start one with `fracscan serve`, or add --embedded to start one for this run.")
                raise typer.Exit(2) from None
            err.print(f"No server at {url}; starting the embedded server on {repository} ...")
            try:
                server = stack.enter_context(EmbeddedServer(repository))
            except (ServerError, ValueError, OSError) as start_error:
                err.print(f"[red]error:[/] {start_error}")
                raise typer.Exit(2) from None
            client = stack.enter_context(FracScanClient(server.http_url, timeout=timeout))
            client.wait_until_ready(timeout=30.0)
            demo = repository.resolve() == DEMO_REPOSITORY.resolve()
        demo = demo or client.is_demo()
        if demo:
            err.print(f"[bold yellow]{DEMO_NOTICE}[/]")

        stream = stack.enter_context(open(output, "a" if resume else "w")) if output else sys.stdout
        writer = Writer(fmt, stream, append=bool(resume and done))
        progress = stack.enter_context(
            Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, disable=not err.is_terminal)
        )
        task = progress.add_task("scoring", total=len(sources))
        failures: list[PredictionError] = []
        positives, start = 0, time.perf_counter()
        try:
            for result in client.predict_many(sources, region=region, concurrency=concurrency):
                writer.write(result_row(result))
                progress.advance(task)
                if not result.ok:
                    failures.append(result)
                    if result.kind == "connection":
                        raise FracScanConnectionError(result.error)
                    continue
                positives += result.fracture
                if overlay_dir:
                    try:
                        write_overlay(result, overlay_dir, demo)
                    except (OSError, DecodeError) as exc:
                        err.print(f"[yellow]warning:[/] no overlay for {result.source}: {exc}")
        except FracScanConnectionError as exc:
            err.print(f"[red]error:[/] lost the server: {exc}")
            raise typer.Exit(2) from None
        progress.stop()
        writer.close(Console(file=stream) if stream is not sys.stdout else Console())

    elapsed = time.perf_counter() - start
    scored = writer.count - len(failures)
    for failure in failures:
        err.print(f"[red]failed:[/] {failure.source}: {failure.error}")
    err.print(
        f"scored {scored}, positives {positives}, failed {len(failures)}"
        f"{f', skipped {len(done)} (resume)' if done else ''} in {elapsed:.1f} s"
        f" ({scored / elapsed if elapsed > 0 else 0:.1f} radiographs/s)"
    )
    raise typer.Exit(1 if failures else 0)
