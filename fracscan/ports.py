"""Is a port free to listen on?  Asked before tritonserver starts, so a busy port is named, not discovered.

Started on a port another process listens on, tritonserver fails to bind after the python stubs have
started, and a caller that polled the port meanwhile may have talked to the other server. A bind test
first turns that into one message naming the port, the address and the option to change.

The test binds with SO_REUSEADDR, as servers do: a port left in TIME_WAIT by a server that just
stopped is free (Linux still refuses the bind while anything listens on it). Triton's metrics
endpoint listens on every interface (it has no address option here), so its port is tested there.
"""

from __future__ import annotations

import socket

ALL_INTERFACES = "0.0.0.0"


class PortInUseError(OSError):
    """A port the server needs is taken; the message names it, the address, and the option to change it."""


def port_free(host: str, port: int) -> bool:
    """True if a TCP server could listen on host:port now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # an unresolvable host is the server's own error to report
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                return False
    return True


def require_free_ports(host: str, *, http: int = 0, grpc: int = 0, metrics: int = 0) -> None:
    """Raise PortInUseError naming every busy port (0: not used / chosen by the OS)."""
    busy = []
    for name, port, where in (("http", http, host), ("grpc", grpc, host), ("metrics", metrics, ALL_INTERFACES)):
        if port and not port_free(where, port):
            busy.append(f"{name} port {port} on {where} (--{name}-port)")
    if busy:
        raise PortInUseError(
            f"{'; '.join(busy)} already in use: another server (a second `fracscan serve`?) listens there; "
            "stop it or choose another port"
        )
