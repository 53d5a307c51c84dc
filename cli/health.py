"""`fracscan health`: is the server live and ready, which models and versions does it serve."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fracscan.client import FracScanClient, FracScanError

err = Console(stderr=True, highlight=False)


def health(
    url: Annotated[str, typer.Option(help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.")] = "http://localhost:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 5.0,
) -> None:
    """Check a fracscan server: live, ready, and the models it serves. Exit 0 when ready, else 2."""
    try:
        with FracScanClient(url, connect_timeout=timeout, timeout=timeout, retries=0) as client:
            info = client.server_info()
    except FracScanError as exc:
        err.print(f"[red]error:[/] {url}: {exc}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        console = Console()
        console.print(f"server {info.get('server_version', '?')} at {url}: live={info['live']} ready={info['ready']}")
        table = Table("model", "version", "state")
        for model in info.get("models", []):
            table.add_row(model["name"], str(model.get("version", "")), model.get("state", ""))
        console.print(table)
    raise typer.Exit(0 if info["ready"] else 2)
