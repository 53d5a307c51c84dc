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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time: mypy cannot see it

from fracscan.client.models import FracScanError, InputRejected, Prediction
from fracscan.client.sync import FracScanClient
from fracscan.pacs.dimse import Destination, StoreFailed, store_datasets
from fracscan.pacs.results import build_results, skip_reason, write_results
from fracscan.provenance import ModelIdentity

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
    host: str = "0.0.0.0"
    allowed_calling_aes: tuple[str, ...] = ()  # empty: any calling AE title
    timeout: float = 60.0


class Listener:
    """The C-STORE SCP and the worker that empties the spool; `serve()` runs until `stop()`."""

    def __init__(self, config: ListenerConfig):
        self.config = config
        self.spool = Spool(config.spool)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: Any = None
        self._announced: ModelIdentity | None = None  # the model of the last answer (logged when it changes)

    def start(self) -> None:
        """Open the port (non-blocking): from here on, received instances are spooled and acknowledged."""
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = False
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda _event: STATUS_SUCCESS)]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        log.info("listening as %s on port %d; spool %s", self.config.ae_title, self.config.port, self.config.spool)

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
        self._announce(prediction.model_identity)
        if self.config.destination is None:
            write_results(self.spool.results_dir, data, prediction)
            where = str(self.spool.results_dir)
        else:
            store_datasets(build_results(data, prediction), self.config.destination, self.config.ae_title)
            where = str(self.config.destination)
        self.spool.done(path)
        log.info("%s: %s; SR, GSPS and SC stored to %s", path.stem, _verdict(prediction), where)

    def _announce(self, identity: ModelIdentity | None) -> None:
        """Log the answering model and its notices whenever it changes (results take it from each answer)."""
        if identity is None or identity == self._announced:
            return
        self._announced = identity
        log.info("answers come from %s", identity.compact())
        for line in identity.notices():
            log.warning("%s", line)

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
