"""`fracscan listen`: a DICOM node (C-STORE SCP) that scores what it receives and stores the results on."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from fracscan import contract as c
from fracscan.cli.console import fail

AE_TITLE_HELP = "Our AE title (what modalities and PACS call); a request calling another is refused."
ALLOW_HELP = (
    "Accept associations from this calling AE title at this host: AET@HOST, HOST an address, a CIDR range or a"
    " host name (repeat the option)."
)


def listen(
    ae_title: Annotated[str, typer.Option(help=AE_TITLE_HELP)] = "FRACSCAN",
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="Address to listen on (default: loopback only).")] = "127.0.0.1",
    url: Annotated[str, typer.Option(help="fracscan server URL(s), comma-separated.")] = c.DEFAULT_URL,
    store_to: Annotated[
        str | None,
        typer.Option(help="Send SR / GSPS / SC here (AET@HOST:PORT); without it they are written to SPOOL/results."),
    ] = None,
    spool: Annotated[
        Path, typer.Option(help="Received instances wait here until their results are stored (survives restarts).")
    ] = Path("fracscan-spool"),
    allow: Annotated[list[str] | None, typer.Option(help=ALLOW_HELP)] = None,
    allow_file: Annotated[
        Path | None, typer.Option(help="More AET@HOST entries, one a line (# starts a comment).")
    ] = None,
    allow_any: Annotated[
        bool, typer.Option(help="Accept any calling AE title from any address (logged; for a closed network only).")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="DICOM TLS: our certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="DICOM TLS: our private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="DICOM TLS: the CA that signs client certificates.")] = None,
    tls_require_client_cert: Annotated[
        bool, typer.Option(help="DICOM TLS: refuse a client without a certificate signed by --tls-ca.")
    ] = False,
    idle_timeout: Annotated[
        float, typer.Option(help="Close idle or half-open connections after this many seconds.")
    ] = 10.0,
    max_associations: Annotated[int, typer.Option(help="At most this many connections at once.")] = 10,
    max_per_address: Annotated[int, typer.Option(help="At most this many connections from one address.")] = 4,
    spool_max_bytes: Annotated[
        int, typer.Option(help="Refuse (0xA700) what would make the spool larger than this; 0: the disk's size.")
    ] = 0,
    keep_failed: Annotated[
        float, typer.Option(help="Keep instances set aside in SPOOL/failed this many days (reason beside each).")
    ] = 7.0,
    unanalysed_report: Annotated[
        bool, typer.Option(help="Store a 'not analysed' SR for an image that could not be analysed.")
    ] = True,
    retry_max: Annotated[
        float, typer.Option(help="Longest wait in seconds between tries while the server or destination is down.")
    ] = 60.0,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 60.0,
    results_log: Annotated[
        Path | None,
        typer.Option(help="Append one result row (JSONL) per scored image: the history `fracscan monitor` reads."),
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Print the running listener's status (SPOOL/status.json) and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Log the DICOM associations and the result building too.")] = False,
) -> None:
    """Receive radiographs by C-STORE (Verification too), score them, and C-STORE the SR, GSPS and SC on.

    Closed by default: loopback only, and only the peers named with --allow / --allow-file (AE title
    and host together). Each instance is written to the spool before it is acknowledged and leaves it
    only once its results are stored, so a restart finishes what was received. Runs until Ctrl-C or SIGTERM.
    """
    if status:
        show_status(spool)
    try:
        from fracscan.pacs.access import AllowList, tls_context
        from fracscan.pacs.dimse import Destination
        from fracscan.pacs.listener import Listener, ListenerConfig
    except ImportError as exc:
        fail(f"fracscan listen needs the PACS extra ({exc.name} is missing): pip install 'fracscan[pacs]'")

    if len(ae_title) > 16 or not ae_title.strip():
        fail("--ae-title must be 1 to 16 characters")
    try:
        destination = Destination.parse(store_to) if store_to else None
    except ValueError as exc:
        fail(f"--store-to: {exc}")
    if results_log is not None and not results_log.parent.is_dir():
        fail(f"--results-log {results_log}: the folder {results_log.parent} does not exist")
    try:
        entries = list(allow or ()) + (AllowList.read_file(allow_file) if allow_file else [])
        allowed = AllowList.parse(entries, any_peer=allow_any)
    except ValueError as exc:
        fail(f"--allow: {exc}")
    if not allowed.peers and not allowed.any_peer:
        fail("no peer may connect: name them with --allow AET@HOST (repeatable) or --allow-file, or give --allow-any")
    if (tls_cert is None) != (tls_key is None) or ((tls_ca or tls_require_client_cert) and tls_cert is None):
        fail("DICOM TLS needs both --tls-cert and --tls-key (and --tls-ca to check client certificates)")
    try:
        tls = tls_context(tls_cert, tls_key, tls_ca, tls_require_client_cert) if tls_cert and tls_key else None
    except ValueError as exc:
        fail(f"--tls: {exc}")
    if idle_timeout <= 0 or max_associations < 1 or max_per_address < 1:
        fail("--idle-timeout must be positive, --max-associations and --max-per-address at least 1")
    if spool_max_bytes < 0 or keep_failed < 0 or retry_max < 1:
        fail("--spool-max-bytes and --keep-failed cannot be negative, --retry-max is at least 1 s")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for library in ("pynetdicom", "highdicom", "fracscan.client"):  # our own lines say what failed, once an outage
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.CRITICAL)
    config = ListenerConfig(
        ae_title=ae_title,
        port=port,
        url=url,
        spool=spool,
        destination=destination,
        host=host,
        allow=allowed,
        tls=tls,
        timeout=timeout,
        results_log=results_log,
        idle_timeout=idle_timeout,
        max_associations=max_associations,
        max_per_address=min(max_per_address, max_associations),
        spool_max_bytes=spool_max_bytes,
        keep_failed_days=keep_failed,
        unanalysed_report=unanalysed_report,
        retry_first_s=min(2.0, retry_max),
        retry_max_s=retry_max,
    )
    listener = Listener(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: listener.stop())
    try:
        listener.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}")
    listener.serve()


def show_status(spool: Path) -> None:
    """`--status`: the report as JSON on stdout; exit 1 when the listener is not running (a probe's answer)."""
    import json

    from fracscan.pacs.status import read_status

    report, problem = read_status(spool)
    if report is not None:
        typer.echo(json.dumps(report, indent=1, sort_keys=True))
    if problem:
        fail(problem, code=1)
    raise typer.Exit(0)


if __name__ == "__main__":  # `python -m fracscan.cli.listen --status`: the probe without importing every command
    typer.run(listen)
