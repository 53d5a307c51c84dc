"""Server faults on real servers: a dead python stub, a killed `fracscan serve`, the locked-down APIs.

Each defect is reproduced first (an unsupervised server with a stub killed by its own PID still
says READY), then the fix is shown on `fracscan serve` run as a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import synthetic_png
from tritonclient.utils import InferenceServerException

from fracscan.client import FracScanClient, FracScanConnectionError
from fracscan.server import SHM_DIR, EmbeddedServer, free_port, stub_processes

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def fracscan(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until `condition()` is true; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def children(pid: int, comm: str) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                    found.append(int(child))
            except OSError:
                pass
    return found


def servers_on(port: int) -> list[int]:
    """Running tritonserver processes started with --http-port=`port` (whoever their parent is now)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"tritonserver") and f"--http-port={port}".encode() in argv:
            found.append(int(cmdline.parent.name))
    return [pid for pid in found if running(pid)]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kill_stub(server_pid: int, model: str = "member_03") -> int:
    victim = next(s.pid for s in stub_processes(server_pid).values() if s.model == model)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not running(victim), 10, "the killed stub to exit")
    return victim


@pytest.fixture(scope="module")
def plain(repository, tmp_path_factory):
    """An unsupervised embedded server of this module's own (its stubs get killed)."""
    server = EmbeddedServer(repository, log_path=tmp_path_factory.mktemp("plain") / "server.log").start()
    yield server
    server.stop()


def test_system_shared_memory_logging_and_trace_are_refused_by_default(plain):
    url = plain.http_url
    register = {"key": "/fracscan_probe", "offset": 0, "byte_size": 64}
    for method, path, body in (
        ("POST", "/v2/systemsharedmemory/region/probe/register", register),
        ("GET", "/v2/systemsharedmemory/status", None),
        ("POST", "/v2/logging", {"log_verbose_level": 1}),
        ("GET", "/v2/trace/setting", None),
    ):
        response = httpx.request(method, url + path, json=body, timeout=10)
        assert response.status_code == 403, (path, response.text)
        assert "restricted" in response.text
    grpc = grpcclient.InferenceServerClient(plain.grpc_url.removeprefix("grpc://"))
    for call in (
        lambda: grpc.register_system_shared_memory("probe", "/fracscan_probe", 64),
        lambda: grpc.update_log_settings({"log_verbose_level": 1}),
    ):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    # the key opens them (so the flags are the ones Triton applies), and inference is untouched
    opened = httpx.get(f"{url}/v2/logging", headers={"fracscan-admin-key": plain.admin_key}, timeout=10)
    assert opened.status_code == 200
    for protocol in ("http", "grpc"):
        target = plain.http_url if protocol == "http" else plain.grpc_url
        with FracScanClient(target, retries=0) as client:
            assert 0.0 <= client.predict(synthetic_png(1)).score <= 1.0
            assert client.server_info()["ready"]


def test_a_dead_stub_leaves_ready_true_but_deep_health_fails_and_stop_is_quick(plain):
    url = plain.http_url
    assert fracscan("health", "--url", url, "--deep", "--stubs").returncode == 0
    kill_stub(plain.process.pid)
    # the defect: Triton still says READY and plain health passes, while inference fails
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    assert fracscan("health", "--url", url).returncode == 0
    with FracScanClient(url, retries=0) as client, pytest.raises(Exception, match="not healthy"):
        client.predict(synthetic_png(1))
    deep = fracscan("health", "--url", url, "--deep")
    assert deep.returncode == 2 and "deep check" in deep.stderr and "not healthy" in deep.stderr
    stubs = fracscan("health", "--url", url, "--stubs")
    assert stubs.returncode == 2 and "python stub pid" in stubs.stderr
    assert fracscan("health", "--url", url, "--live").returncode == 0  # live: no restart for a slow server
    started = time.monotonic()
    plain.stop()  # a graceful unload would wait for the dead stub for ever
    assert time.monotonic() - started < 5
    assert port_free(plain.http_port) and not list(SHM_DIR.glob(f"{plain.shm_prefix}*"))


class Serve:
    """`fracscan serve` as a subprocess on free ports, its stderr in a file."""

    def __init__(self, tmp_path: Path, *extra: str):
        self.ports = [free_port() for _ in range(3)]
        self.err = tmp_path / "serve.err"
        http, grpc, metrics = (str(p) for p in self.ports)
        ports = ["--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fracscan.cli", "serve", *ports, "--log-file", str(tmp_path / "triton.log"), *extra],
            stderr=self.err.open("w"),
            stdout=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{http}"
        wait_for(lambda: "Ready." in self.stderr() or self.process.poll() is not None, 240, "serve to be ready")
        assert self.process.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.err.read_text()

    def tritonserver(self) -> int:
        (pid,) = children(self.process.pid, "tritonserver")
        return pid

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def test_serve_restarts_after_a_dead_stub_and_dies_with_no_server_left(repository, tmp_path):
    serve = Serve(tmp_path)
    try:
        first = serve.tritonserver()
        stubs = list(stub_processes(first))
        kill_stub(first)
        detected = wait_for(lambda: "restarting the server" in serve.stderr(), 10, "the dead stub to be noticed")
        assert detected < 5 and "member_03" in serve.stderr()
        # while it restarts, the port is closed: a request fails at once, with a connection error
        if "ready again" not in serve.stderr():
            with FracScanClient(serve.url, retries=0) as client, pytest.raises(FracScanConnectionError):
                started = time.monotonic()
                client.predict(synthetic_png(1))
            assert time.monotonic() - started < 3
        wait_for(lambda: "ready again" in serve.stderr(), 240, "the restarted server")
        assert not running(first)
        assert fracscan("health", "--url", serve.url, "--deep", "--stubs").returncode == 0
        second = serve.tritonserver()
        stubs += list(stub_processes(second))
        watchdog = os.getpgid(second)  # the server runs in its watchdog's process group
        assert watchdog not in (second, os.getpgid(serve.process.pid)) and running(watchdog)
        # SIGKILL of `fracscan serve` itself: within 10 s nothing of its tree is left, and the ports are free
        serve.process.kill()
        serve.process.wait(10)
        tree = [second, watchdog, *stubs]
        wait_for(lambda: not any(running(pid) for pid in tree), 10, "the server, its stubs and watchdog to exit")
        assert not servers_on(serve.ports[0])
        assert all(port_free(port) for port in serve.ports)
        # the regions the killed server left are removed by the next start
        from fracscan.server import remove_stale_regions

        remove_stale_regions()
        assert not list(SHM_DIR.glob(f"fracscan_{serve.process.pid}_*"))
    finally:
        serve.close()


def test_sigterm_with_a_dead_stub_stops_serve_quickly(repository, tmp_path):
    serve = Serve(tmp_path)
    try:
        server = serve.tritonserver()
        kill_stub(server)
        serve.process.send_signal(signal.SIGTERM)  # at once: before, during or after the restart
        started = time.monotonic()
        assert serve.process.wait(20) == 0, serve.stderr()
        assert time.monotonic() - started < 15
        assert "Stopped." in serve.stderr()
        assert not running(server) and not servers_on(serve.ports[0])
        assert all(port_free(port) for port in serve.ports)
    finally:
        serve.close()


def test_serve_refuses_an_unknown_api_to_allow():
    result = fracscan("serve", "--allow-api", "model-control", timeout=60)
    assert result.returncode == 2 and "cannot allow model-control" in result.stderr


def test_probe_image_is_small_and_decodes():
    from fracscan.decode import decode_image
    from fracscan.probe import probe_png

    data = probe_png()
    assert len(data) < 2000 and data == probe_png()
    pixels = decode_image(data).pixels
    assert pixels.shape == (64, 64) and np.ptp(pixels) > 100
