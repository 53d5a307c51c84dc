"""`fracscan listen`: a DICOM node (C-STORE SCP) that scores what it receives and stores the results on."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from fracscan import contract as c
from fracscan.cli.console import fail

AE_TITLE_HELP = "Our AE title (what modalities and PACS call)."


def listen(
    ae_title: Annotated[str, typer.Option(help=AE_TITLE_HELP)] = "FRACSCAN",
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    url: Annotated[str, typer.Option(help="fracscan server URL(s), comma-separated.")] = c.DEFAULT_URL,
    store_to: Annotated[
        str | None,
        typer.Option(help="Send SR / GSPS / SC here (AET@HOST:PORT); without it they are written to SPOOL/results."),
    ] = None,
    spool: Annotated[
        Path, typer.Option(help="Received instances wait here until their results are stored (survives restarts).")
    ] = Path("fracscan-spool"),
    allow: Annotated[
        list[str] | None, typer.Option(help="Accept only these calling AE titles (repeat the option); default: any.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 60.0,
    results_log: Annotated[
        Path | None,
        typer.Option(help="Append one result row (JSONL) per scored image: the history `fracscan monitor` reads."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Log the DICOM associations and the result building too.")] = False,
) -> None:
    """Receive radiographs by C-STORE (Verification too), score them, and C-STORE the SR, GSPS and SC on.

    Each instance is written to the spool before it is acknowledged and leaves it only once its
    results are stored, so a restart finishes what was received. Runs until Ctrl-C or SIGTERM.
    """
    try:
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for library in ("pynetdicom", "highdicom"):
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.WARNING)
    config = ListenerConfig(
        ae_title=ae_title,
        port=port,
        url=url,
        spool=spool,
        destination=destination,
        host=host,
        allowed_calling_aes=tuple(allow or ()),
        timeout=timeout,
        results_log=results_log,
    )
    listener = Listener(config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: listener.stop())
    try:
        listener.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}")
    listener.serve()
