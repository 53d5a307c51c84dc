"""A DICOM node that scores what it receives: C-STORE SCP -> spool -> server -> results C-STOREd on.

    Listener(ListenerConfig(ae_title="FRACSCAN", port=11112, url="http://triton:8000",
                            destination=Destination.parse("ORTHANC@pacs:4242"), spool=Path("spool"),
                            allow=AllowList.parse(["CT01@10.1.2.0/24"]))).serve()

Who may connect is `access` (allow-list, limits, TLS); what is scored is `fracscan.scorable`
(projection radiographs; the rest is acknowledged, logged once and skipped). The order of the
steps is what makes it safe to kill: an instance is written to the spool (`spool`) before the
C-STORE is acknowledged, its results are computed once and kept beside it, and it leaves the spool
only after they were accepted by the destination. A restart finds the spool as it was left and
finishes it; since result UIDs are deterministic the destination replaces rather than duplicates.
An image that cannot be analysed gets a "not analysed" SR (`unanalysed`) instead of a silence. When
the server or the destination is down, the node retries with bounded exponential backoff and says
so once per outage. Log lines name SOP Instance UIDs, AE titles and addresses, never a patient attribute.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time: mypy cannot see it

from fracscan.client.errors import FracScanError, InputRejected
from fracscan.client.models import Prediction, PredictionError
from fracscan.client.sync import FracScanClient
from fracscan.dicom_attributes import dicom_error_reason
from fracscan.pacs import unanalysed
from fracscan.pacs.access import AllowList, ConnectionGate, GuardedServer, RateLimitedLog
from fracscan.pacs.dimse import Destination, StoreFailed, store_datasets
from fracscan.pacs.results import WRITERS, build_results, skip_reason
from fracscan.pacs.spool import Spool, SpoolFull, free_bytes
from fracscan.pacs.status import EVERY_S, utc_iso, write_status
from fracscan.provenance import ModelIdentity

log = logging.getLogger("fracscan.listener")

STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES = 0x0000, 0xA700
PRUNE_EVERY_S = 3600.0


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
    results_log: Path | None = None  # append one result row (JSONL) per scored or refused instance
    idle_timeout: float = 10.0  # idle or half-open connections, and waits for an A-ASSOCIATE request
    dimse_timeout: float = 30.0
    max_associations: int = 10
    max_per_address: int = 4
    spool_max_bytes: int = 0  # 0: bounded by the disk only
    keep_failed_days: float = 7.0
    unanalysed_report: bool = True
    retry_first_s: float = 2.0
    retry_max_s: float = 60.0


class Backoff:
    """One dependency (the server, the destination) being down: when to try again, logged once per outage."""

    def __init__(self, what: str, first_s: float, max_s: float):
        self.what, self.first_s, self.max_s = what, first_s, max_s
        self.since: float | None = None
        self.last_error: tuple[float, str] | None = None
        self._delay, self._next_at = 0.0, 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._next_at

    def failed(self, error: str) -> None:
        self.last_error = (time.time(), error)
        if self.since is None:
            self.since = time.time()
            log.warning(
                "%s unavailable (%s): work stays in the spool; trying again with backoff up to %.0f s",
                self.what, error, self.max_s,
            )  # fmt: skip
        self._delay = min(self.max_s, self._delay * 2 if self._delay else self.first_s)
        self._next_at = time.monotonic() + self._delay

    def recovered(self) -> None:
        if self.since is not None:
            log.info("%s available again after %.0f s", self.what, time.time() - self.since)
        self.since, self._delay, self._next_at = None, 0.0, 0.0


class Listener:
    """The C-STORE SCP and the worker that empties the spool; `serve()` runs until `stop()`."""

    def __init__(self, config: ListenerConfig):
        self.config = config
        self.spool = Spool(config.spool, config.spool_max_bytes, config.keep_failed_days)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: Any = None
        self._announced: ModelIdentity | None = None  # the model of the last answer (logged when it changes)
        self.rejections = RateLimitedLog()
        self.counts: Counter[str] = Counter()  # associations accepted / rejected
        self.failures: Counter[str] = Counter()  # reason -> instances
        self.gate: ConnectionGate | None = None
        self.server_backoff = Backoff(f"server {config.url}", config.retry_first_s, config.retry_max_s)
        self.destination_backoff = Backoff(
            f"destination {config.destination or config.spool / 'results'}", config.retry_first_s, config.retry_max_s
        )

    def start(self) -> None:
        """Open the port (non-blocking): from here on, received instances are spooled and acknowledged."""
        config = self.config
        ae = AE(ae_title=config.ae_title)
        ae.require_called_aet = False  # both AE titles are checked (and logged) by _on_requested
        # The gate (below) holds open connections to --max-associations and --max-per-address. pynetdicom
        # counts association threads, including those of connections the gate has just closed that have
        # not ended yet: its own limit sits above the gate's so that those never lock out an allowed peer.
        ae.maximum_associations = 2 * config.max_associations
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
        server = cast(
            GuardedServer, ae.make_server((config.host, config.port), evt_handlers=handlers, server_class=GuardedServer)
        )
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
        self.counts["rejected"] += 1
        line = self._association_line(event, "rejected", reason)
        self.rejections.warning(f"{event.assoc.requestor.address}:{reason}", "%s", line)
        event.assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        self.counts["accepted"] += 1
        log.info("%s", self._association_line(event, "accepted"))

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own refusal: more associations than --max-associations."""
        self.counts["rejected"] += 1
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
        threading.Thread(target=self._report_status, name="fracscan-status", daemon=True).start()
        pruned_at = 0.0
        with FracScanClient(self.config.url, timeout=self.config.timeout) as client:
            while not self._stopping.is_set():
                if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                    self._prune()
                    pruned_at = time.monotonic()
                self.config.allow.resolve(force=False)
                self.drain(client)
                self._wake.wait(timeout=1.0)
                self._wake.clear()
        self._server.shutdown()
        self._write_status()
        log.info("stopped")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def drain(self, client: FracScanClient) -> None:
        """One pass over the spool, oldest first: compute what has no answer yet, deliver what has one.

        While the server is down, answers already computed are still delivered; while the destination
        is down, new instances are still scored (once) and their results kept beside them.
        """
        for path in self.spool.pending():
            if self._stopping.is_set():
                return
            try:
                answer = self.spool.load_answer(path)
                if answer is None:
                    if not self.server_backoff.ready():
                        continue
                    answer = self._answer(client, path)
                    self.server_backoff.recovered()
                    if answer is None:
                        continue
                if self.destination_backoff.ready():
                    self._deliver(path, *answer)
            except FracScanError as exc:
                self.server_backoff.failed(str(exc))
            except SpoolFull as exc:  # no room for the results beside the image: like an outage, it passes
                self.failures["spool full"] += 1
                self.server_backoff.failed(f"cannot keep results in the spool: {exc}")
            except StoreFailed as exc:
                self.destination_backoff.failed(str(exc))
            except Exception as exc:
                self._set_aside(path, "internal error", dicom_error_reason(exc))

    def _answer(self, client: FracScanClient, path: Path) -> tuple[list[Dataset], dict[str, Any]] | None:
        """Score one spooled instance and keep its results beside it; None when it was set aside instead."""
        data = path.read_bytes()
        try:
            prediction = client.predict(data)
        except InputRejected as exc:
            return self._not_analysed(client, path, data, exc.reason)
        self._announce(prediction.model_identity)
        datasets = build_results(data, prediction)
        outcome = {"outcome": "scored", "verdict": _verdict(prediction), "kinds": list(WRITERS)}
        self.spool.save_answer(path, datasets, outcome)
        append_result_row(self.config.results_log, prediction)  # computed once: a resent instance logs once
        log.info("%s: %s", path.stem, outcome["verdict"])
        return datasets, outcome

    def _not_analysed(
        self, client: FracScanClient, path: Path, data: bytes, reason: str
    ) -> tuple[list[Dataset], dict[str, Any]] | None:
        """An image of a scored class that could not be analysed: a "not analysed" SR, unless turned off."""
        self.failures["not analysed"] += 1
        log.warning("%s: not analysed: %s", path.stem, reason)
        append_result_row(self.config.results_log, PredictionError("<bytes>", reason, "rejected"))
        header = _header(data)
        if not self.config.unanalysed_report or header is None:
            self.spool.fail(path, f"not analysed: {reason}")
            return None
        # the model of the last answer names the attempt (the refused image got no answer of its own)
        report = unanalysed.build(header, reason, self._announced.members if self._announced else "unknown")
        outcome = {"outcome": "not analysed", "reason": reason, "kinds": [unanalysed.KIND]}
        self.spool.save_answer(path, [report], outcome)
        return [report], outcome

    def _deliver(self, path: Path, datasets: list[Dataset], outcome: dict[str, Any]) -> None:
        """Store an answer at the destination (or in SPOOL/results); the spool entry goes only when stored."""
        if self.config.destination is None:
            self.spool.results_dir.mkdir(mode=0o700, exist_ok=True)
            for kind, ds in zip(outcome["kinds"], datasets, strict=True):
                ds.save_as(self.spool.results_dir / f"{path.stem}.{kind}.dcm", enforce_file_format=True)
            where = str(self.spool.results_dir)
        else:
            store_datasets(datasets, self.config.destination, self.config.ae_title, timeout=self.config.dimse_timeout)
            where = str(self.config.destination)
        self.destination_backoff.recovered()
        if outcome["outcome"] == "scored":
            self.spool.done(path)
            log.info("%s: SR, GSPS and SC stored to %s", path.stem, where)
        else:
            self.spool.fail(path, f"not analysed: {outcome['reason']}")
            log.info("%s: 'not analysed' SR stored to %s", path.stem, where)

    def _set_aside(self, path: Path, category: str, reason: str) -> None:
        self.failures[category] += 1
        log.error("%s: no results (%s); kept in %s", path.stem, reason, self.spool.failed_dir)
        try:
            self.spool.fail(path, f"{category}: {reason}")
        except OSError as exc:
            log.error("%s: cannot set it aside (%s)", path.stem, exc.strerror or exc)

    def _prune(self) -> None:
        removed = self.spool.prune_failed()
        if removed:
            log.info("removed %d instance(s) set aside more than %g day(s) ago", removed, self.config.keep_failed_days)

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
        except Exception as exc:
            reason = f"unreadable header ({dicom_error_reason(exc)})"
        if reason:
            log.info("%s: acknowledged, not scored: %s", sop_uid, reason)
            return STATUS_SUCCESS
        try:
            self.spool.put(sop_uid, event.encoded_dataset())
        except SpoolFull as exc:
            self.failures["spool full"] += 1
            log.error("%s: refused with 0xA700 (out of resources): %s", sop_uid, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:
            self.failures["spool error"] += 1
            log.error("%s: could not spool (%s); refused with 0xA700", sop_uid, dicom_error_reason(exc))
            return STATUS_OUT_OF_RESOURCES
        log.info("%s: received and spooled", sop_uid)
        self._wake.set()
        return STATUS_SUCCESS

    def status(self) -> dict[str, Any]:
        """The facts `fracscan listen --status` shows (no patient attribute)."""
        pending = self.spool.pending()
        try:
            oldest = time.time() - pending[0].stat().st_mtime if pending else None
        except FileNotFoundError:
            oldest = None
        destination_error = self.destination_backoff.last_error
        server_error = self.server_backoff.last_error
        return {
            "queue_length": len(pending),
            "oldest_pending_age_s": None if oldest is None else round(oldest, 1),
            "failures": dict(self.failures),
            "last_destination_error": destination_error
            and {"at": utc_iso(destination_error[0]), "error": destination_error[1]},
            "destination_down_since": utc_iso(self.destination_backoff.since),
            "last_server_error": server_error and {"at": utc_iso(server_error[0]), "error": server_error[1]},
            "server_down_since": utc_iso(self.server_backoff.since),
            "associations": dict(self.counts),
            "connections_open": self.gate.open_connections if self.gate else 0,
            "connections_refused": dict(self.gate.refused) if self.gate else {},
            "spool_bytes": self.spool.size(),
            "spool_free_bytes": free_bytes(self.spool.incoming),
        }

    def _write_status(self) -> None:
        try:
            write_status(self.spool.directory, self.status())
        except OSError as exc:
            log.warning("cannot write the status file (%s)", exc.strerror or exc)

    def _report_status(self) -> None:
        self._write_status()
        while not self._stopping.wait(EVERY_S):
            self._write_status()


def _header(data: bytes) -> Dataset | None:
    """The header of a spooled instance, when it can be read (a "not analysed" report needs its UIDs)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SOPClassUID)
        return ds
    except Exception:
        return None


def append_result_row(results_log: Path | None, result: Prediction | PredictionError) -> None:
    """The node's history for `fracscan monitor`, written when an instance is scored (once, even when its
    results are resent after an outage): the SDK's row of one result (`to_dict`: score, level,
    region, scored_at, acquisition facts, UIDs; source "<bytes>", no patient attribute), one JSON line."""
    if results_log is None:
        return
    try:
        with open(results_log, "a") as f:
            f.write(json.dumps(result.to_dict()) + "\n")
    except OSError as exc:  # the results were delivered: a full disk costs the log line, not the instance
        log.error("could not append to the results log %s: %s", results_log, exc.strerror or type(exc).__name__)


def _verdict(prediction: Prediction) -> str:
    level = getattr(prediction, "level", None) or ("suspicious" if prediction.fracture else "negative")
    return (
        f"{level} (score {prediction.score:.3f}, threshold {prediction.threshold:.3f}, {len(prediction.boxes)} box(es))"
    )
