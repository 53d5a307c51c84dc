"""Keep an embedded server serving: notice a dead python stub or server, and restart it on the same ports.

Triton 2.51's python backend neither restarts a stub that died (killed for memory, a crash in a
native library) nor reports it: the stub stays a zombie, every request through its model fails
with 500 `Stub process ... is not healthy`, and `/v2/health/ready` keeps answering 200. So the
supervisor watches the processes themselves (/proc): the stubs the server had when it became
ready must all still be running. A fault stops the server at once (SIGKILL: a graceful unload
waits forever for the dead stub) and starts it again; meanwhile the ports are closed, so clients
get a connection error at once (the SDK retries, or fails over to another server).

Several restarts in a short window mean the fault comes back by itself (a model that crashes at
load, a node out of memory): the supervisor then gives up with SupervisorGaveUp, so whatever
runs `fracscan serve` sees it exit instead of a server that flaps for ever.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fracscan.server import EmbeddedServer, ServerError, StubProcess, stub_processes

log = logging.getLogger("fracscan.supervise")


class SupervisorGaveUp(ServerError):
    """The server kept failing: more restarts than allowed within the window."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: `except Exception` lets it pass)."""


class Supervisor:
    """Runs one EmbeddedServer and restarts it when it exits or one of its python stubs dies.

    start() from the main thread (the server then dies with this process, see EmbeddedServer);
    run() watches it until `stop_event` is set or a signal raises Stopped (see stop_on_signals);
    stop() stops the server.
    """

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        poll_s: float = 1.0,
        max_restarts: int = 5,
        window_s: float = 600.0,
        report: Callable[[str], None] | None = None,
    ):
        self.server = server
        self.poll_s = poll_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.report = report or log.warning
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self.faults = 0  # faults seen since start (each answered by a restart)
        self._expected: dict[int, str] = {}  # stub PID -> model, as loaded

    def start(self, timeout: float = 180.0) -> None:
        self.server.start(timeout)
        self._expected = {pid: stub.model for pid, stub in self.server.stubs().items()}

    def fault(self) -> str | None:
        """What is wrong with the server now, or None when it and every stub it loaded are running."""
        proc = self.server.process
        if proc is None or proc.poll() is not None:
            return f"tritonserver exited (code {None if proc is None else proc.returncode})"
        current = self.server.stubs()
        for pid, model in self._expected.items():
            stub = current.get(pid)
            if stub is None or not stub.running:
                return f"the python stub of model '{model}' (pid {pid}) exited"
        return None

    def check(self) -> bool:
        """One look: restart the server if it has a fault. True when it did."""
        reason = self.fault()
        if reason is None:
            return False
        self.faults += 1
        self.restart(reason)
        return True

    def restart(self, reason: str) -> None:
        """Kill the server and start it again; a failed start is retried within the restart budget."""
        while True:
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < self.window_s] + [now]
            if len(self.restarts) > self.max_restarts:
                raise SupervisorGaveUp(
                    f"{reason}; gave up after {self.max_restarts} restarts within {self.window_s:.0f} s"
                )
            self.report(f"{reason}: restarting the server on the same ports")
            self.server.stop(force=True)
            started = time.monotonic()
            try:
                self.start()
            except ServerError as exc:
                reason = f"the restart failed: {exc}"
                continue
            self.report(f"the server is ready again after {time.monotonic() - started:.1f} s")
            return

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Watch the server every poll_s until `stop_event` is set (or an exception, e.g. Stopped, ends it)."""
        stop_event = stop_event or threading.Event()
        while not stop_event.wait(self.poll_s):
            self.check()

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, the first of `signals` raises Stopped in the main thread; later ones are ignored,
    so a second Ctrl-C cannot cut the shutdown short and leave a server behind. Restores the old handlers."""
    seen = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not seen.is_set():
            seen.set()
            raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def tritonserver_pids() -> list[int]:
    """Every tritonserver process this process can see (in a container: the server)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "tritonserver":
                pids.append(int(comm.parent.name))
    return sorted(pids)


def listening_pid(port: int, candidates: list[int]) -> int | None:
    """Which of `candidates` listens on TCP `port` (on any address), from /proc/net and the processes' fds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in inodes:
                        return pid
    return None


def dead_stubs(server_pid: int) -> list[StubProcess]:
    """The stubs of tritonserver `server_pid` that exited (zombies: Triton does not reap or restart them)."""
    return [stub for stub in stub_processes(server_pid).values() if not stub.running]
