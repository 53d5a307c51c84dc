"""Supervision on real processes: a server that stops answering, a failed restart, the restart budget, and a
server started from a worker thread whose process is SIGKILLed.

The one-member Olczak demo repository keeps each server start short (9 python stubs instead of 18).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import synthetic_png
from test_faults_server import Serve, kill_stub, port_free, running, servers_on, wait_for

from fracscan import procfs
from fracscan.client import FracScanClient
from fracscan.server import OLCZAK_DEMO_REPOSITORY, stub_processes

pytestmark = pytest.mark.skipif(not procfs.available(), reason="needs Linux /proc")

QUICK_PROBES = ("--probe-every", "1", "--probe-deadline", "2", "--probe-misses", "3")


def scores(url: str) -> bool:
    with FracScanClient(url, retries=0, timeout=10) as client:
        return 0.0 <= client.predict(synthetic_png(1)).score <= 1.0


def test_a_stopped_server_is_restarted_a_failed_restart_retried_and_too_many_restarts_give_up(tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(OLCZAK_DEMO_REPOSITORY, repository)
    spec, aside = repository / "fracscan.toml", tmp_path / "fracscan.toml.aside"
    serve = Serve(tmp_path, "--repository", str(repository), "--max-restarts", "4", *QUICK_PROBES)
    try:
        assert scores(serve.url)
        # 1. SIGSTOP: the process and its stubs still run, the ports still accept; only the probes see it
        stopped = serve.tritonserver()
        os.kill(stopped, signal.SIGSTOP)
        since = time.monotonic()
        wait_for(lambda: "ready again" in serve.stderr(), 60, "the stopped server to be restarted")
        assert scores(serve.url) and time.monotonic() - since < 60
        assert "missed 3 probes in a row" in serve.stderr() and "no answer within 2 s" in serve.stderr()
        assert not running(stopped)
        # 2. a restart that fails (the repository is being replaced) is retried, after 1 s, then 2 s, ...: it succeeds
        spec.rename(aside)
        kill_stub(serve.tritonserver(), "member_00")
        wait_for(lambda: "the restart failed" in serve.stderr(), 30, "the failed restart")
        aside.rename(spec)
        wait_for(lambda: serve.stderr().count("ready again") == 2, 120, "the retried restart")
        assert "spec file not found" in serve.stderr() and scores(serve.url)
        # 3. with the repository broken again, the restarts left fail: serve gives up, exit 2 and leave nothing behind
        last = serve.tritonserver()
        tree = [last, os.getpgid(last), *stub_processes(last)]
        spec.rename(aside)
        kill_stub(last, "member_00")
        assert serve.process.wait(60) == 2
        assert "gave up after 4 restarts within 600 s" in serve.stderr()
        wait_for(lambda: not any(running(pid) for pid in tree), 10, "the last server's tree to exit")
        assert not servers_on(serve.ports[0]) and all(port_free(port) for port in serve.ports)
    finally:
        serve.close()


WORKER_THREAD_START = """
import sys, threading, time
from pathlib import Path
from fracscan.server import EmbeddedServer, OLCZAK_DEMO_REPOSITORY
started = {}
def start():
    started["server"] = EmbeddedServer(OLCZAK_DEMO_REPOSITORY, log_path=Path(sys.argv[1])).start()
thread = threading.Thread(target=start)
thread.start()
thread.join()  # the thread that started the server has ended
print(started["server"].process.pid, flush=True)
time.sleep(600)
"""


def test_a_server_started_from_a_worker_thread_does_not_outlive_its_sigkilled_process(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", WORKER_THREAD_START, str(tmp_path / "triton.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = owner.stdout.readline()
        assert line.strip().isdigit(), owner.stderr.read() if owner.poll() is not None else line
        server = int(line)
        stubs = list(stub_processes(server))
        watchdog = os.getpgid(server)
        assert len(stubs) >= 5 and running(watchdog) and watchdog != owner.pid
        owner.kill()
        owner.wait(10)
        tree = [server, watchdog, *stubs]
        wait_for(lambda: not any(running(pid) for pid in tree), 10, "the server, its stubs and watchdog to exit")
    finally:
        if owner.poll() is None:
            owner.kill()
