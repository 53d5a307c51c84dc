"""Scale-out: the SDK spreads requests over several servers and fails over when one stops mid-run.

The faults are real: servers are killed by their own PIDs while requests are in flight, and a
plain socket that accepts connections but never answers stands in for a hung server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.http
from conftest import synthetic_png

from fracscan.client import AsyncFracScanClient, FracScanClient, FracScanTimeout, _core
from fracscan.server import EmbeddedServer


def test_failover_when_one_of_two_servers_stops_mid_run(server, repository, reference, tmp_path):
    second = EmbeddedServer(repository, log_path=tmp_path / "second.log").start()
    images = [synthetic_png(200 + i) for i in range(24)]
    results, stopped = [], False
    try:
        with FracScanClient([second.http_url, server.http_url], retries=3) as client:
            for i, result in enumerate(client.predict_many(images, concurrency=2)):
                results.append(result)
                if i == 5:  # half-way through the stream, one server goes away
                    second.stop()
                    stopped = True
    finally:
        second.stop()
    assert stopped and len(results) == len(images)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for data, result in zip(images, results, strict=True):
        assert abs(result.score - reference.predict(data).score) < 1e-5


def _children(pid: int, script: str) -> list[int]:
    """PIDs of the processes that `pid` started whose command line names `script` (its python stubs)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and script in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
    return found


def test_server_killed_while_answering_is_retried_on_the_other(server, repository, reference, tmp_path, caplog):
    """SIGKILL of tritonserver with a request of each client kind in flight: each fails over, none is lost.

    The preprocess stubs are frozen (SIGSTOP) first, so the requests are certainly inside the server
    (its log shows them reach the ensemble) when it dies: the connection closes before any answer.
    """
    log_path = tmp_path / "second.log"
    second = EmbeddedServer(repository, log_path=log_path, extra_args=["--log-verbose=1"]).start()
    data = synthetic_png(7)
    paths = {}
    for kind in ("sync-http", "sync-grpc", "async-http", "async-grpc"):
        paths[kind] = tmp_path / f"{kind}.png"  # the source label tells the clients apart in the log
        paths[kind].write_bytes(data)
    urls = {"http": [second.http_url, server.http_url], "grpc": [second.grpc_url, server.grpc_url]}

    def sync(protocol: str):
        with FracScanClient(urls[protocol], retries=3) as client:
            return client.predict(paths[f"sync-{protocol}"])

    async def both_async():
        async with (
            AsyncFracScanClient(urls["http"], retries=3) as http,
            AsyncFracScanClient(urls["grpc"], retries=3) as grpc,
        ):
            return await asyncio.gather(http.predict(paths["async-http"]), grpc.predict(paths["async-grpc"]))

    caplog.set_level(logging.WARNING, logger="fracscan.client")
    pid = second.process.pid
    stubs = _children(pid, "/preprocess/")
    assert stubs, "no preprocess stub found"
    try:
        for stub in stubs:
            os.kill(stub, signal.SIGSTOP)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(sync, "http"), pool.submit(sync, "grpc"), pool.submit(asyncio.run, both_async())]
            deadline = time.monotonic() + 60
            while log_path.read_text(errors="replace").count("model: preprocess, requested version") < 4:
                assert time.monotonic() < deadline, "the requests did not reach the server"
                assert not any(f.done() for f in futures), [f.exception() for f in futures if f.done()]
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)  # all four are waiting inside the server
            results = [futures[0].result(), futures[1].result(), *futures[2].result()]
    finally:
        second.stop()  # kills the (frozen) stubs left in its process group
    expected = reference.predict(data).score
    assert all(abs(r.score - expected) < 1e-5 for r in results)
    failed_over = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    for kind, path in paths.items():
        url = second.http_url if kind.endswith("http") else second.grpc_url
        assert any(m.startswith(f"{path}: ") and url in m for m in failed_over), (kind, failed_over)
    sync_http = next(m for m in failed_over if m.startswith(f"{paths['sync-http']}: "))
    assert "lost before the answer: HTTPConnectionClosed" in sync_http  # the case that was not failed over


class SilentServer:
    """Accepts TCP connections and reads what is sent, but never answers: a hung server.

    `requests` counts the HTTP requests received (a connection carries at most one, as none is answered).
    """

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests = 0
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> SilentServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()
        with self._lock:
            for conn in self.connections:
                conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        first = True
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                if first and chunk.startswith(b"POST "):
                    with self._lock:
                        self.requests += 1
                first = False


def _served(server, since: int = 0, expect: int | None = None) -> int:
    """How many inferences of the ensemble `server` has answered since `since` (Triton's own statistics).

    Triton counts a request just after it has sent the answer: with `expect`, wait (a little) until
    the count gets there; without, wait until it stops moving (earlier tests' last requests)."""
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{server.http_port}")

    def count() -> int:
        stats = client.get_inference_statistics("fracscan")["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"]) - since

    deadline, last = time.monotonic() + 5, None
    try:
        while True:
            now = count()
            settled = now >= expect if expect is not None else now == last
            if settled or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.1)
    finally:
        client.close()


TIMEOUTS = {"connect_timeout": 1.0, "timeout": 3.0}


@pytest.fixture
def long_down(monkeypatch):
    # a slow CI machine must not outlast the down period (its length is not what is tested here)
    monkeypatch.setattr(_core, "DOWN_SECONDS", 60.0)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_hung_server_costs_one_timeout_then_traffic_goes_to_the_healthy_one(flavour, server, long_down):
    """An endpoint that accepts but never answers: the first request times out (not retried, not failed
    over: it may have been executed), the endpoint is marked down, and every later request goes elsewhere."""
    images = [synthetic_png(300 + i) for i in range(6)]
    outcomes: list[str] = []

    def outcome(started: float, timed_out: bool) -> None:
        if timed_out:
            assert time.monotonic() - started < 2 * TIMEOUTS["timeout"]  # one attempt only
        outcomes.append("timeout" if timed_out else "ok")

    with SilentServer() as hung:
        before = _served(server)
        urls = [hung.url, server.http_url]  # round robin starts with the hung one
        if flavour == "sync":
            with FracScanClient(urls, retries=3, **TIMEOUTS) as client:
                for image in images:
                    started = time.monotonic()
                    try:
                        client.predict(image)
                        outcome(started, False)
                    except FracScanTimeout:
                        outcome(started, True)
        else:

            async def run():
                async with AsyncFracScanClient(urls, retries=3, **TIMEOUTS) as client:
                    for image in images:
                        started = time.monotonic()
                        try:
                            await client.predict(image)
                            outcome(started, False)
                        except FracScanTimeout:
                            outcome(started, True)

            asyncio.run(run())
        assert outcomes == ["timeout"] + ["ok"] * (len(images) - 1)
        assert hung.requests == 1  # the timed-out request was sent once, and nothing followed it
        assert _served(server, before, len(images) - 1) == len(images) - 1


def test_hung_server_does_not_keep_half_of_a_stream(server, long_down):
    """predict_many: only the requests sent before the first timeout reach the hung endpoint."""
    images = [synthetic_png(400 + i) for i in range(16)]
    concurrency = 3
    with SilentServer() as hung:
        before = _served(server)
        with FracScanClient([hung.url, server.http_url], retries=3, **TIMEOUTS) as client:
            results = list(client.predict_many(images, concurrency=concurrency))
        failed = [r for r in results if not r.ok]
        assert all(r.kind == "timeout" for r in failed), [r.error for r in failed]
        assert 1 <= len(failed) == hung.requests <= concurrency
        assert _served(server, before, len(images) - len(failed)) == len(images) - len(failed)


def test_hung_grpc_server_is_a_connection_failure_and_fails_over(server, long_down):
    """gRPC to a socket that never answers never completes its handshake: nothing was sent, so the
    request fails over (after the connect timeout) and the endpoint is skipped afterwards."""
    images = [synthetic_png(500 + i) for i in range(4)]
    with SilentServer() as hung:
        before = _served(server)
        hung_url = hung.url.replace("http://", "grpc://")
        with FracScanClient([hung_url, server.grpc_url], retries=3, **TIMEOUTS) as client:
            started = time.monotonic()
            first = client.predict(images[0])
            assert time.monotonic() - started < TIMEOUTS["connect_timeout"] + TIMEOUTS["timeout"]
            rest = [client.predict(image) for image in images[1:]]
            assert client.endpoints[0].is_down()
        assert all(r.ok for r in [first, *rest])
        assert _served(server, before, len(images)) == len(images)
