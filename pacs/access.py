"""Who may talk to the DICOM node: the allow-list, the connection limits, TLS.

    allow = AllowList.parse(["MODALITY@10.1.2.0/24", "PACS@pacs.example"])
    allow.refusal("MODALITY", "FRACSCAN", "10.1.2.7", own_ae="FRACSCAN")   # None: accepted

An entry is `AET@HOST`, HOST an address, a CIDR range or a host name (resolved at start and every
minute after, never on the connection's path). The checks run twice: on the TCP connection (the
peer's address must be in some entry, and within the per-address and total limits, else the socket
is closed before it holds an association slot) and on the A-ASSOCIATE request (calling AE title and
address in the same entry, called AE title our own). Log lines name AE titles and addresses only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("fracscan.listener")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVE_EVERY_S = 60.0
EXAMPLE = "MODALITY@10.0.0.5 (an address), MODALITY@10.0.0.0/24 (a range) or MODALITY@host.example (a host name)"


@dataclass(frozen=True)
class Peer:
    """One allow-list entry: a calling AE title and where it may call from."""

    ae_title: str
    host: str
    network: IPNetwork | None = None  # None: `host` is a host name

    @classmethod
    def parse(cls, text: str) -> Peer:
        aet, at, host = text.strip().rpartition("@")
        if not at:
            raise ValueError(
                f"{text!r} names an AE title without a host: write it as {text.strip()}@HOST, e.g. {EXAMPLE}"
            )
        if not aet or len(aet) > 16 or "\\" in aet or not host:
            raise ValueError(f"{text!r}: expected AET@HOST (AE title of 1 to 16 characters), e.g. {EXAMPLE}")
        try:
            return cls(aet, host, ipaddress.ip_network(host, strict=False))
        except ValueError:
            if not all(part.replace("-", "").isalnum() for part in host.split(".")):
                raise ValueError(f"{text!r}: {host!r} is neither an address, a CIDR range nor a host name") from None
            return cls(aet, host.lower())

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}"


@dataclass
class AllowList:
    """Who may connect and associate; `any_peer` is the explicit opt-out (every address, every calling AE)."""

    peers: tuple[Peer, ...] = ()
    any_peer: bool = False
    _resolved: dict[str, frozenset[str]] = field(default_factory=dict)
    _resolved_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, entries: Iterable[str], any_peer: bool = False) -> AllowList:
        allow = cls(tuple(Peer.parse(e) for e in entries), any_peer)
        allow.resolve()
        return allow

    @staticmethod
    def read_file(path: Path) -> list[str]:
        """Entries from a file: one AET@HOST a line; blank lines and `#` comments ignored."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the allow-list ({exc.strerror or exc})") from None
        return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]

    def resolve(self, force: bool = True) -> None:
        """Look the host names up again (at start, then from the worker every minute)."""
        if not force and time.monotonic() - self._resolved_at < RESOLVE_EVERY_S:
            return
        resolved = {}
        for name in {p.host for p in self.peers if p.network is None}:
            try:
                resolved[name] = frozenset(str(info[4][0]) for info in socket.getaddrinfo(name, None))
            except OSError as exc:
                log.warning("allow-list host %s does not resolve (%s): its entries admit nobody for now", name, exc)
                resolved[name] = self._resolved.get(name, frozenset())
        with self._lock:
            self._resolved, self._resolved_at = resolved, time.monotonic()

    def _admits(self, peer: Peer, address: str) -> bool:
        if peer.network is None:
            with self._lock:
                return address in self._resolved.get(peer.host, frozenset())
        try:
            return ipaddress.ip_address(address) in peer.network
        except ValueError:
            return False

    def address_allowed(self, address: str) -> bool:
        return self.any_peer or any(self._admits(p, address) for p in self.peers)

    def refusal(self, calling_ae: str, called_ae: str, address: str, own_ae: str) -> str | None:
        """Why an association request is refused (a reason naming no patient attribute), or None."""
        if called_ae.strip() != own_ae:
            return f"called AE title {called_ae.strip()!r} is not ours ({own_ae!r})"
        if self.any_peer or any(p.ae_title == calling_ae.strip() and self._admits(p, address) for p in self.peers):
            return None
        return f"calling AE title {calling_ae.strip()!r} from {address} is not on the allow-list"

    def describe(self) -> str:
        return "any peer (--allow-any)" if self.any_peer else ", ".join(map(str, self.peers)) or "nobody"


class RateLimitedLog:
    """At most one line per key a minute; the lines held back are counted in the next one."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                self._held[key] += 1
                return
            self._last[key], held = now, self._held.pop(key, 0)
        suffix = f" ({held} more like it in the last {self.every_s:.0f} s)" if held else ""
        log.warning(message + suffix, *args)


class ConnectionGate:
    """Open TCP connections, counted per address: refuses what the allow-list or the limits do not admit."""

    def __init__(self, allow: AllowList, max_total: int, max_per_address: int, rejections: RateLimitedLog):
        self.allow, self.max_total, self.max_per_address = allow, max_total, max_per_address
        self.rejections = rejections
        self.refused: Counter[str] = Counter()  # reason -> count, for the status
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, address: str) -> bool:
        with self._lock:
            if not self.allow.address_allowed(address):
                key, reason = "address not allowed", "address not on the allow-list"
            elif self._open[address] >= self.max_per_address:
                key, reason = "per-address limit", f"{self.max_per_address} connections from this address already open"
            elif sum(self._open.values()) >= self.max_total:
                key, reason = "connection limit", f"{self.max_total} connections already open"
            else:
                self._open[address] += 1
                return True
            self.refused[key] += 1
        self.rejections.warning(f"{address}:{key}", "connection from %s closed at once: %s", address, reason)
        return False

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())


def tls_context(cert: Path, key: Path, ca: Path | None, require_client_cert: bool) -> ssl.SSLContext:
    """The server side of DICOM TLS: our certificate, and the CA that signs the clients' when they must show one."""
    if require_client_cert and ca is None:
        raise ValueError("--tls-require-client-cert needs --tls-ca (the CA that signs the clients' certificates)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate, key or CA: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL if ca else ssl.CERT_NONE
    return context


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate before the association and TLS off the accept loop.

    pynetdicom wraps TLS in its accept loop, where one silent client would stall every other; here the
    handshake runs in the connection's own thread, bounded by the idle timeout.
    """

    gate: ConnectionGate
    tls: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.gate.admit(str(client_address[0]))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0])
        try:
            if self.tls is not None:
                request = self._handshake(request, address)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.gate.release(address)

    def _handshake(self, request: socket.socket, address: str) -> ssl.SSLSocket | None:
        assert self.tls is not None
        request.settimeout(self.handshake_timeout)
        try:
            secured = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.gate.rejections.warning(
                f"{address}:tls", "connection from %s closed: TLS handshake failed (%s)", address, exc
            )
            self.gate.refused["TLS handshake failed"] += 1
            request.close()
            return None
        secured.settimeout(None)
        return secured
