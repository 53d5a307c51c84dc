"""`fracscan serve`: run the embedded CPU Triton server on a model repository until stopped, supervised."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fracscan import contract as c
from fracscan import provenance
from fracscan.cli.console import fail, note, show_provenance, warn
from fracscan.server import DEMO_REPOSITORY, RESTRICTED_APIS, EmbeddedServer, ServerError
from fracscan.supervise import Stopped, Supervisor, stop_on_signals


def serve(
    repository: Annotated[Path, typer.Option(help="Triton model repository to serve.")] = DEMO_REPOSITORY,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (KServe v2).")] = c.HTTP_PORT,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (KServe v2).")] = c.GRPC_PORT,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = c.METRICS_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for all interfaces).")] = "127.0.0.1",
    ort_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per member instance.")] = 1,
    log_file: Annotated[Path | None, typer.Option(help="Write the server log here.")] = None,
    allow_api: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated server APIs to leave open, of {', '.join(RESTRICTED_APIS)} (all refused by default)."
        ),
    ] = "",
    max_restarts: Annotated[
        int, typer.Option(min=0, help="Restarts after faults allowed within 10 minutes before giving up (exit 2).")
    ] = 5,
) -> None:
    """Start the embedded CPU Triton server on a model repository (the demo one by default).

    A supervisor checks every second that the server and each of its python stubs still run and
    restarts the server (same ports) when one died. Runs until Ctrl-C or SIGTERM, then shuts the
    server down; it never outlives this command, even a SIGKILLed one.
    """
    allowed = tuple(a.strip() for a in allow_api.split(",") if a.strip())
    try:
        server = EmbeddedServer(
            repository,
            http_port,
            grpc_port,
            metrics_port,
            host=host,
            log_path=log_file,
            ort_threads=ort_threads,
            allow_apis=allowed,
        )
    except ValueError as exc:
        fail(str(exc))
    supervisor = Supervisor(server, max_restarts=max_restarts, report=warn)
    with stop_on_signals():
        try:
            note(f"Starting tritonserver on {repository} ...")
            supervisor.start()
            show_provenance(provenance.read(repository))
            if allowed:
                warn(f"server APIs open to anyone who reaches the ports: {', '.join(allowed)}")
            note(f"Ready.  HTTP {server.http_url}   gRPC {server.grpc_url}   metrics {server.metrics_url}")
            note("Press Ctrl-C to stop.")
            supervisor.run()
        except Stopped:
            pass
        except (ServerError, OSError, ValueError) as exc:
            fail(str(exc))
        finally:
            supervisor.stop()
            note("Stopped.")
