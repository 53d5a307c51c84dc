"""fracscan.ports: a busy port is named before tritonserver starts."""

from __future__ import annotations

import socket

import pytest

from fracscan.ports import PortInUseError, port_free, require_free_ports


@pytest.fixture
def listening():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_listening_port_is_busy_and_named(listening):
    assert not port_free("127.0.0.1", listening)
    assert not port_free("0.0.0.0", listening)  # the metrics endpoint listens on every interface
    with pytest.raises(PortInUseError, match=rf"grpc port {listening} on 127\.0\.0\.1 \(--grpc-port\)"):
        require_free_ports("127.0.0.1", http=0, grpc=listening)
    with pytest.raises(OSError, match=rf"metrics port {listening} on 0\.0\.0\.0 .*already in use"):
        require_free_ports("127.0.0.1", metrics=listening)


def test_free_ports_pass(listening):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # bound, closed below: free again
    assert port_free("127.0.0.1", free)
    require_free_ports("127.0.0.1", http=free, grpc=0, metrics=0)


def test_a_port_just_released_by_a_server_is_free():
    """TIME_WAIT after a server stopped does not count as busy (servers bind with SO_REUSEADDR)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    server.close()
    assert port_free("127.0.0.1", port)


def test_serve_refuses_a_busy_port_and_names_it(listening):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fracscan.cli", "serve", "--http-port", str(listening)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"http port {listening}" in result.stderr and "Ready" not in result.stderr
    assert "Traceback" not in result.stderr
