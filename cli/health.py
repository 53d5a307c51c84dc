"""`fracscan health`: is the server live and ready, which models and versions does it serve.

`/v2/health/ready` alone does not tell the truth: Triton's python backend keeps the server and the
model READY after one of its stubs died, while every request through that model fails. `--deep`
therefore scores a tiny synthetic image (every model of the ensemble runs), and `--stubs` looks for
dead stubs of the local server that listens on the URL's port (for exec probes inside its container).
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fracscan import contract as c
from fracscan import procfs
from fracscan.cli.console import fail, out, show_provenance
from fracscan.client import FracScanClient, FracScanError
from fracscan.probe import probe_png
from fracscan.supervise import dead_stubs


def deep_check(url: str, timeout: float) -> dict[str, Any]:
    """Score probe_png() on each server of `url` (no retries): {url: latency_ms}; FracScanError if one fails."""
    latencies = {}
    for one in c.split_urls(url):
        with FracScanClient(one, connect_timeout=timeout, timeout=timeout, retries=0) as client:
            started = time.perf_counter()
            score = client.predict(probe_png()).score
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise FracScanError(f"the probe image scored {score!r}, outside [0, 1]", url=one)
            latencies[one] = round((time.perf_counter() - started) * 1000, 1)
    return latencies


def local_dead_stubs(url: str) -> list[str]:
    """Problems with the local tritonserver listening on each URL's port: missing, or dead stubs (none: [])."""
    problems = []
    servers = procfs.named("tritonserver")
    for one in c.split_urls(url):
        port = c.parse_server_url(one).port
        pid = procfs.listening_pid(port, servers)
        if pid is None:
            problems.append(f"{one}: no local tritonserver listens on port {port}")
            continue
        for stub in dead_stubs(pid):
            problems.append(f"{one}: python stub pid {stub.pid} of tritonserver pid {pid} exited")
    return problems


def health(
    url: Annotated[
        str, typer.Option(help="Server URL(s), comma-separated; http://, https://, grpc:// or grpcs://.")
    ] = c.DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 5.0,
    deep: Annotated[
        bool,
        typer.Option(help="Also score a tiny synthetic image on each server (a real inference); exit 2 if it fails."),
    ] = False,
    live: Annotated[bool, typer.Option(help="Exit 0 when the server is live, ready or not (liveness probes).")] = False,
    stubs: Annotated[
        bool,
        typer.Option(
            help="Also exit 2 when a python stub of the local tritonserver on the URL's port is dead "
            "(an exec probe in the server's container)."
        ),
    ] = False,
) -> None:
    """Check a fracscan server: live, ready, and the models it serves. Exit 0 when ready, else 2.

    The served ensemble's provenance notices (demo, random weights, uncalibrated) go to stderr;
    --json carries the whole record under ensemble.provenance, and an ensemble's classification heads
    with their classes under ensemble.heads.
    """
    try:
        with FracScanClient(url, connect_timeout=timeout, timeout=timeout, retries=0) as client:
            info = client.server_info()
            record = client.provenance()
    except FracScanError as exc:
        fail(f"{url}: {exc}")
    show_provenance(record)
    problems = local_dead_stubs(url) if stubs else []
    if deep and not problems:
        try:
            info["deep"] = deep_check(url, timeout)
        except FracScanError as exc:
            problems.append(f"deep check: {exc}")
    if as_json:
        print(json.dumps({**info, "problems": problems}, indent=2))
    else:
        out.print(
            escape(f"server {info.get('server_version', '?')} at {url}: live={info['live']} ready={info['ready']}")
        )
        table = Table("model", "version", "state")
        for model in info.get("models", []):
            table.add_row(escape(model["name"]), escape(str(model.get("version", ""))), escape(model.get("state", "")))
        out.print(table)
        for head, classes in (info.get("ensemble") or {}).get("heads", {}).items():
            out.print(escape(f"head {head}: {', '.join(classes)}"))
        for one, ms in info.get("deep", {}).items():
            out.print(escape(f"deep check {one}: the probe image scored in {ms:.0f} ms"))
    if problems:
        fail("; ".join(problems))
    raise typer.Exit(0 if info["live" if live else "ready"] else 2)


if __name__ == "__main__":  # `python -m fracscan.cli.health`: the probe without importing every command
    typer.run(health)
