"""The CLI's one voice: every command prints errors, warnings, notes and the demo notice through here.

Messages are escaped before rich sees them, so text in square brackets (a list of missing keys, a
DICOM tag) is printed as written. Exit codes: 0 done, 1 some inputs failed, 2 usage / connection /
configuration error. Results go to stdout; everything else to stderr.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from fracscan.provenance import Provenance

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
ANSI_CODE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class OutputFormat(StrEnum):
    """Formats a command can write its results in (each command accepts the subset it can write)."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


def _text(message: str) -> str:
    """Escaped for rich, without the colour codes a library may have put in its own message."""
    return escape(ANSI_CODE.sub("", message))


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print `error: message` and exit (2 by default). No traceback for expected failures."""
    err.print(f"[red]error:[/red] {_text(message)}")
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {_text(message)}")


def note(message: str) -> None:
    err.print(_text(message))


def failed_input(source: str, reason: str) -> None:
    """One input that could not be scored (the others' results are written)."""
    err.print(f"[red]failed:[/red] {_text(source)}: {_text(reason)}")


def show_provenance(record: Provenance | None) -> None:
    """The demo / random-weights / uncalibrated notices of the repository that answers, once per run."""
    if record is None:
        return
    for line in record.notices():
        err.print(f"[bold yellow]{escape(line)}[/bold yellow]")
