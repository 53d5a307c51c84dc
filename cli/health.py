"""`fracscan health`: is the server live and ready, which models and versions does it serve."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fracscan.cli.console import fail, out, show_provenance
from fracscan.client import FracScanClient, FracScanError


def health(
    url: Annotated[
        str, typer.Option(help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.")
    ] = "http://localhost:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 5.0,
) -> None:
    """Check a fracscan server: live, ready, and the models it serves. Exit 0 when ready, else 2.

    The served ensemble's provenance notices (demo, random weights, uncalibrated) go to stderr;
    --json carries the whole record under ensemble.provenance.
    """
    try:
        with FracScanClient(url, connect_timeout=timeout, timeout=timeout, retries=0) as client:
            info = client.server_info()
            record = client.provenance()
    except FracScanError as exc:
        fail(f"{url}: {exc}")
    show_provenance(record)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        out.print(
            escape(f"server {info.get('server_version', '?')} at {url}: live={info['live']} ready={info['ready']}")
        )
        table = Table("model", "version", "state")
        for model in info.get("models", []):
            table.add_row(escape(model["name"]), escape(str(model.get("version", ""))), escape(model.get("state", "")))
        out.print(table)
    raise typer.Exit(0 if info["ready"] else 2)
