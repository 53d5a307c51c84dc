"""The servers a client talks to: one `Endpoint` per URL, with the time until which it counts as down.

URL syntax and default ports are the contract's (`fracscan.contract.parse_server_url`); this module adds
only the client's state per endpoint (used by `_core`'s rotation and by `health`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from fracscan import contract as c


@dataclass(eq=False)
class Endpoint:
    url: str  # as the user wrote it
    protocol: str  # "http" or "grpc"
    tls: bool
    address: str  # host:port[/base-path], what tritonclient wants
    down_until: float = 0.0  # time.monotonic() until which it is considered down

    def is_down(self, now: float | None = None) -> bool:
        return self.down_until > (time.monotonic() if now is None else now)


def parse_urls(url: str | Sequence[str]) -> list[Endpoint]:
    """One URL, a comma-separated string of URLs, or a sequence of them."""
    urls = c.split_urls(url)
    if not urls:
        raise ValueError("no server URL given")
    return [_endpoint(c.parse_server_url(u)) for u in urls]


def _endpoint(server: c.ServerAddress) -> Endpoint:
    return Endpoint(server.url, server.protocol, server.tls, server.address)
