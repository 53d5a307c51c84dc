"""`fracscan serve`: run the embedded CPU Triton server on a model repository until stopped."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from fracscan import provenance
from fracscan.cli.console import fail, note, show_provenance
from fracscan.server import DEMO_REPOSITORY, EmbeddedServer, ServerError


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
    server = EmbeddedServer(
        repository, http_port, grpc_port, metrics_port, host=host, log_path=log_file, ort_threads=ort_threads
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    note(f"Starting tritonserver on {repository} ...")
    try:
        server.start()
    except (ServerError, OSError, ValueError) as exc:
        fail(str(exc))
    show_provenance(provenance.read(repository))
    note(f"Ready.  HTTP {server.http_url}   gRPC {server.grpc_url}   metrics {server.metrics_url}")
    note("Press Ctrl-C to stop.")
    try:
        while not stop.wait(0.5):
            if server.process is None or server.process.poll() is not None:
                fail("tritonserver exited unexpectedly")
    finally:
        server.stop()
        note("Stopped.")
