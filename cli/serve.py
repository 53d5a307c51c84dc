"""`fracscan serve`: run the embedded CPU Triton server on a model repository until stopped, supervised."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fracscan import contract as c
from fracscan import provenance, supervise
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
    probe_every: Annotated[
        float,
        typer.Option(min=0, help="Seconds between probes (readiness and a tiny inference); 0: no probes."),
    ] = supervise.PROBE_EVERY_S,
    probe_deadline: Annotated[
        float, typer.Option(min=0.1, help="Seconds a probe may take before it counts as missed.")
    ] = supervise.PROBE_DEADLINE_S,
    probe_misses: Annotated[
        int, typer.Option(min=1, help="Probes missed in a row that make the supervisor restart the server.")
    ] = supervise.PROBE_MISSES,
) -> None:
    """Start the embedded CPU Triton server on a model repository (the demo one by default).

    A supervisor checks every second that the server and each of its python stubs still run, and every
    --probe-every seconds that it answers (readiness and a tiny inference within --probe-deadline); it
    restarts the server (same ports) when a process died or --probe-misses probes in a row missed.
    Runs until Ctrl-C or SIGTERM, then shuts the server down; it never outlives this command, even a
    SIGKILLed one (a watchdog process ends the server and its stubs).
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
    supervisor = Supervisor(
        server,
        max_restarts=max_restarts,
        probe_every_s=probe_every,
        probe_deadline_s=probe_deadline,
        probe_misses=probe_misses,
        report=warn,
    )
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
