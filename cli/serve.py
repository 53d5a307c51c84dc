"""`fracscan serve` and `fracscan export`: run and build Triton model repositories."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fracscan.server import DEMO_REPOSITORY, EmbeddedServer, ServerError
from fracscan.spec import SpecError, builtin_spec_path, load_spec

err = Console(stderr=True)


def serve(
    repository: Annotated[Path, typer.Option(help="Triton model repository to serve.")] = DEMO_REPOSITORY,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (KServe v2).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for all interfaces).")] = "127.0.0.1",
    ort_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per member instance.")] = 1,
    log_file: Annotated[Path | None, typer.Option(help="Write the server log here.")] = None,
) -> None:
    """Start the embedded CPU Triton server on a model repository (the demo one by default).

    Runs until Ctrl-C or SIGTERM, then shuts the server and its python stubs down cleanly.
    """
    server = EmbeddedServer(repository, http_port, grpc_port, metrics_port, host=host, log_path=log_file, ort_threads=ort_threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"Starting tritonserver on {repository} ...")
    try:
        server.start()
    except (ServerError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if repository.resolve() == DEMO_REPOSITORY.resolve():
        err.print("[yellow]DEMO ensemble: synthetic-data models, not for clinical use.[/yellow]")
    err.print(f"Ready.  HTTP {server.http_url}   gRPC {server.grpc_url}   metrics {server.metrics_url}")
    err.print("Press Ctrl-C to stop.")
    try:
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                err.print("[red]error:[/red] tritonserver exited unexpectedly")
                raise typer.Exit(2)
    finally:
        server.stop()
        err.print("Stopped.")


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Repository directory to write.")],
    spec: Annotated[str, typer.Option(help="Ensemble spec (TOML), or a built-in name: jones2020, demo.")] = "jones2020",
    target: Annotated[str, typer.Option(help="Member runtime: cpu | onnxruntime | tensorrt.")] = "cpu",
    thresholds: Annotated[Path | None, typer.Option(help="thresholds.json to install (default: uncalibrated 0.5).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch every model accepts.")] = 8,
) -> None:
    """Build a Triton model repository from an ensemble spec.

    Each member comes from its `onnx` file or is exported from its PyTorch `checkpoint`
    (needs the export extra). Config files are generated for the chosen target.
    """
    from fracscan.export.build import build_repository  # torch only when a checkpoint must be exported
    from fracscan.export.repository import TARGETS, RepositoryOptions
    from fracscan.postprocess import Thresholds, ThresholdsError

    if target not in TARGETS:
        err.print(f"[red]error:[/red] --target must be one of {', '.join(TARGETS)}, got {target!r}")
        raise typer.Exit(2)
    spec_path = Path(spec) if Path(spec).suffix else builtin_spec_path(spec)
    try:
        ensemble = load_spec(spec_path)
        chosen = Thresholds.load(thresholds) if thresholds else None
        out = build_repository(ensemble, output, target, chosen, RepositoryOptions(max_batch_size=max_batch_size))
    except (SpecError, ThresholdsError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"Wrote {target} repository for '{ensemble.name}' ({len(ensemble.members)} members) to {out}")
