"""A DICOM node that scores what it receives: C-STORE SCP -> spool -> server -> results C-STOREd on.

    Listener(ListenerConfig(ae_title="FRACSCAN", port=11112, url="http://triton:8000",
                            destination=Destination.parse("ORTHANC@pacs:4242"), spool=Path("spool"))).serve()

The order of the steps is what makes it safe to kill: an instance is written to the spool (to a
temporary name, fsynced, renamed) before the C-STORE is acknowledged, and it leaves the spool only
after its SR, GSPS and SC were accepted by the destination. A restart finds the spool as it was
left and finishes it; an instance scored and stored but not yet removed is done again, and since
result UIDs are deterministic the destination replaces rather than duplicates. Non-image SOP
classes (and fracscan's own results) are acknowledged, logged and skipped. Log lines name SOP
Instance UIDs only, never a patient attribute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time: mypy cannot see it

from fracscan.client.models import FracScanError, InputRejected, Prediction
from fracscan.client.sync import FracScanClient
from fracscan.pacs.access import AllowList, ConnectionGate, GuardedServer, RateLimitedLog
from fracscan.pacs.dimse import Destination, StoreFailed, store_datasets
from fracscan.pacs.results import build_results, skip_reason, write_results
from fracscan.provenance import Provenance

log = logging.getLogger("fracscan.listener")

STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES = 0x0000, 0xA700
UID_PATTERN = re.compile(r"[0-9.]{1,64}")
RETRY_S = 2.0  # wait before trying again after the server or the destination failed


class Spool:
    """Received instances on disk, one file per SOP Instance UID, until their results are stored."""

    def __init__(self, directory: Path):
        self.incoming = directory / "incoming"
        self.failed_dir = directory / "failed"
        self.results_dir = directory / "results"
        self.incoming.mkdir(parents=True, exist_ok=True)
        for partial in self.incoming.glob(".*.part"):  # a write cut short was never acknowledged
            partial.unlink(missing_ok=True)

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Durably store one instance (the same UID again replaces it): returns only when it is on disk."""
        name = (
            sop_instance_uid
            if UID_PATTERN.fullmatch(sop_instance_uid)
            else "x" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32]
        )
        final = self.incoming / f"{name}.dcm"
        partial = self.incoming / f".{name}.{threading.get_ident()}.part"
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
        _fsync_dir(self.incoming)
        return final

    def pending(self) -> list[Path]:
        """What is waiting, oldest first."""
        entries = []
        for path in self.incoming.glob("*.dcm"):
            try:
                entries.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        return [path for _, path in sorted(entries)]

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fail(self, path: Path) -> None:
        """Set aside an instance that cannot be scored (kept for a person to look at, not retried)."""
        self.failed_dir.mkdir(exist_ok=True)
        os.replace(path, self.failed_dir / path.name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ListenerConfig:
    """What `fracscan listen` was asked to do."""

    ae_title: str
    port: int
    url: str
    spool: Path
    destination: Destination | None = None  # None: results are written to <spool>/results/
    host: str = "127.0.0.1"
    allow: AllowList = field(default_factory=AllowList)  # empty: nobody may associate
    tls: ssl.SSLContext | None = None
    timeout: float = 60.0
    idle_timeout: float = 10.0  # idle or half-open connections, and waits for an A-ASSOCIATE request
    dimse_timeout: float = 30.0
    max_associations: int = 10
    max_per_address: int = 4


class Listener:
    """The C-STORE SCP and the worker that empties the spool; `serve()` runs until `stop()`."""

    def __init__(self, config: ListenerConfig):
        self.config = config
        self.spool = Spool(config.spool)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: Any = None
        self._provenance: Provenance | None = None
        self._provenance_known = False
        self.rejections = RateLimitedLog()
        self.counts: Counter[str] = Counter()
        self.gate: ConnectionGate | None = None

    def start(self) -> None:
        """Open the port (non-blocking): from here on, received instances are spooled and acknowledged."""
        config = self.config
        ae = AE(ae_title=config.ae_title)
        ae.require_called_aet = False  # both AE titles are checked (and logged) by _on_requested
        ae.maximum_associations = config.max_associations
        ae.network_timeout = ae.acse_timeout = config.idle_timeout
        ae.dimse_timeout = config.dimse_timeout
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda _event: STATUS_SUCCESS),
        ]
        server = ae.make_server((config.host, config.port), evt_handlers=handlers, server_class=GuardedServer)
        server.gate = self.gate = ConnectionGate(
            config.allow, config.max_associations, config.max_per_address, self.rejections
        )
        server.tls, server.handshake_timeout = config.tls, config.idle_timeout
        ae._servers.append(server)  # as AE.start_server does: server.shutdown() takes it off again
        threading.Thread(target=server.serve_forever, name="fracscan-acceptor", daemon=True).start()
        self._server = server
        if config.allow.any_peer:
            log.warning("accepting associations from any address and any calling AE title (--allow-any)")
        log.info(
            "listening as %s on %s port %d%s; allowed: %s; spool %s",
            config.ae_title,
            config.host,
            config.port,
            " (DICOM TLS)" if config.tls else "",
            config.allow.describe(),
            config.spool,
        )

    def _association_line(self, event: Any, outcome: str, why: str = "") -> str:
        """One audit line: calling and called AE, peer address, outcome and why; never a patient attribute."""
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        tls = " over TLS" if self.config.tls else ""
        line = f"association {outcome}: calling {calling!r} called {called!r} from {requestor.address}{tls}"
        return f"{line}: {why}" if why else line

    def _on_requested(self, event: Any) -> None:
        """The allow-list, on the A-ASSOCIATE request: calling AE title and address together, called AE ours."""
        primitive = event.assoc.requestor.primitive
        reason = self.config.allow.refusal(
            str(primitive.calling_ae_title), str(primitive.called_ae_title), event.assoc.requestor.address,
            self.config.ae_title,
        )  # fmt: skip
        if reason is None:
            return
        diagnostic = 0x07 if reason.startswith("called") else 0x03  # called / calling AE title not recognised
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        self.counts["associations rejected"] += 1
        line = self._association_line(event, "rejected", reason)
        self.rejections.warning(f"{event.assoc.requestor.address}:{reason}", "%s", line)
        event.assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        self.counts["associations accepted"] += 1
        log.info("%s", self._association_line(event, "accepted"))

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own refusal: more associations than --max-associations."""
        self.counts["associations rejected"] += 1
        why = f"more than {self.config.max_associations} associations (--max-associations)"
        self.rejections.warning(
            f"{event.assoc.requestor.address}:limit", "%s", self._association_line(event, "rejected", why)
        )

    def serve(self) -> None:
        """Start (if not yet), finish what the spool holds, then score each instance as it arrives."""
        if self._server is None:
            self.start()
        waiting = self.spool.pending()
        if waiting:
            log.info("spool holds %d instance(s) from before: finishing them", len(waiting))
        with FracScanClient(self.config.url, timeout=self.config.timeout) as client:
            while not self._stopping.is_set():
                progressed = self.drain(client)
                self._wake.wait(timeout=RETRY_S if not progressed else 1.0)
                self._wake.clear()
        self._server.shutdown()
        log.info("stopped")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def drain(self, client: FracScanClient) -> bool:
        """Process the spool in order; stop at the first failure worth retrying. False when nothing could be done."""
        for path in self.spool.pending():
            if self._stopping.is_set():
                return True
            try:
                self.process(client, path)
            except (StoreFailed, FracScanError) as exc:
                log.warning("%s: %s; will try again", path.stem, exc)
                return False
            except Exception as exc:
                log.error("%s: no results (%s); kept in %s", path.stem, type(exc).__name__, self.spool.failed_dir)
                self.spool.fail(path)
        return True

    def process(self, client: FracScanClient, path: Path) -> None:
        """Score one spooled instance and deliver its results; the spool entry goes only when they are stored."""
        data = path.read_bytes()
        try:
            prediction = client.predict(data)
        except InputRejected as exc:  # will never score: set aside, not retried
            log.warning("%s: not scored (%s); kept in %s", path.stem, exc.reason, self.spool.failed_dir)
            self.spool.fail(path)
            return
        provenance = self._served_provenance(client)
        if self.config.destination is None:
            write_results(self.spool.results_dir, data, prediction, provenance)
            where = str(self.spool.results_dir)
        else:
            store_datasets(build_results(data, prediction, provenance), self.config.destination, self.config.ae_title)
            where = str(self.config.destination)
        self.spool.done(path)
        log.info("%s: %s; SR, GSPS and SC stored to %s", path.stem, _verdict(prediction), where)

    def _served_provenance(self, client: FracScanClient) -> Provenance | None:
        if not self._provenance_known:
            self._provenance, self._provenance_known = client.provenance(), True
            for line in self._provenance.notices() if self._provenance else ():
                log.warning("%s", line)
        return self._provenance

    def _on_store(self, event: Any) -> int:
        """Spool, then acknowledge. A failure to spool is not acknowledged (the sender keeps the instance)."""
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            dataset: Dataset = event.dataset
            reason = skip_reason(dataset)
            if reason:
                log.info("%s: acknowledged, not scored: %s", sop_uid, reason)
                return STATUS_SUCCESS
            self.spool.put(sop_uid, event.encoded_dataset())
        except Exception as exc:
            log.error("%s: could not spool (%s); not acknowledged", sop_uid, type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        log.info("%s: received and spooled", sop_uid)
        self._wake.set()
        return STATUS_SUCCESS


def _verdict(prediction: Prediction) -> str:
    level = getattr(prediction, "level", None) or ("suspicious" if prediction.fracture else "negative")
    return (
        f"{level} (score {prediction.score:.3f}, threshold {prediction.threshold:.3f}, {len(prediction.boxes)} box(es))"
    )
