"""Keep an embedded server serving: notice a dead python stub or server, or one that stopped answering, and
restart it on the same ports.

Triton 2.51's python backend neither restarts a stub that died (killed for memory, a crash in a
native library) nor reports it: the stub stays a zombie, every request through its model fails
with 500 `Stub process ... is not healthy`, and `/v2/health/ready` keeps answering 200. So the
supervisor watches the processes themselves (/proc): the stubs the server had when it became
ready must all still be running. A process that runs may still not answer (SIGSTOPped, deadlocked):
every `probe_every_s` the supervisor also asks for readiness and scores a tiny image (fracscan.probe),
each probe within `probe_deadline_s`; `probe_misses` misses in a row are a fault too. A fault stops the
server at once (SIGKILL: a graceful unload waits forever for a dead stub) and starts it again; meanwhile
the ports are closed, so clients get a connection error at once (the SDK retries, or fails over).
A restart that fails is retried after a pause that doubles each time (up to RETRY_PAUSE_MAX_S).

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

from fracscan.probe import probe
from fracscan.server import EmbeddedServer, ServerError, StubProcess, stub_processes

log = logging.getLogger("fracscan.supervise")

PROBE_EVERY_S = 5.0
PROBE_DEADLINE_S = 10.0  # generous: a probe waits in the queues behind real requests
PROBE_MISSES = 3
RETRY_PAUSE_S = 1.0  # after a failed restart; doubled at each further failure
RETRY_PAUSE_MAX_S = 30.0


class SupervisorGaveUp(ServerError):
    """The server kept failing: more restarts than allowed within the window."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: `except Exception` lets it pass)."""


class Supervisor:
    """Runs one EmbeddedServer and restarts it when it exits, one of its python stubs dies, or it stops answering.

    start() from any thread (the server never outlives this process, see EmbeddedServer);
    run() watches it until `stop_event` is set or a signal raises Stopped (see stop_on_signals);
    stop() stops the server. `probe_every_s` = 0 turns the answering probe off.
    """

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        poll_s: float = 1.0,
        max_restarts: int = 5,
        window_s: float = 600.0,
        probe_every_s: float = PROBE_EVERY_S,
        probe_deadline_s: float = PROBE_DEADLINE_S,
        probe_misses: int = PROBE_MISSES,
        report: Callable[[str], None] | None = None,
    ):
        self.server = server
        self.poll_s = poll_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.probe_every_s = probe_every_s
        self.probe_deadline_s = probe_deadline_s
        self.probe_misses = max(probe_misses, 1)
        self.report = report or log.warning
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self.faults = 0  # faults seen since start (each answered by a restart)
        self.misses = 0  # probes missed in a row
        self._expected: dict[int, str] = {}  # stub PID -> model, as loaded
        self._next_probe = 0.0

    def start(self, timeout: float = 180.0) -> None:
        self.server.start(timeout)
        self._expected = {pid: stub.model for pid, stub in self.server.stubs().items()}
        self.misses = 0
        self._next_probe = time.monotonic() + self.probe_every_s

    def fault(self) -> str | None:
        """What is wrong with the server's processes now, or None when it, its watchdog and every stub it
        loaded are running."""
        proc, dog = self.server.process, self.server.watchdog
        if proc is None or proc.poll() is not None:
            return f"tritonserver exited (code {None if proc is None else proc.returncode})"
        if dog is None or dog.poll() is not None:
            return "the server's watchdog exited"
        current = self.server.stubs()
        for pid, model in self._expected.items():
            stub = current.get(pid)
            if stub is None or not stub.running:
                return f"the python stub of model '{model}' (pid {pid}) exited"
        return None

    def unanswered(self) -> str | None:
        """Probe the server when a probe is due: the reason once `probe_misses` probes in a row missed, else None."""
        if self.probe_every_s <= 0 or time.monotonic() < self._next_probe:
            return None
        miss = probe(self.server.http_url, self.probe_deadline_s)
        self._next_probe = time.monotonic() + self.probe_every_s
        if miss is None:
            self.misses = 0
            return None
        self.misses += 1
        self.report(f"probe {self.misses} of {self.probe_misses} missed: {miss}")
        if self.misses < self.probe_misses:
            return None
        return f"the server missed {self.misses} probes in a row (last: {miss})"

    def check(self) -> bool:
        """One look: restart the server if it has a fault. True when it did."""
        reason = self.fault() or self.unanswered()
        if reason is None:
            return False
        self.faults += 1
        self.restart(reason)
        return True

    def restart(self, reason: str) -> None:
        """Kill the server and start it again; a failed start is retried, after a growing pause, within the
        restart budget (SupervisorGaveUp beyond it)."""
        pause = RETRY_PAUSE_S
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
            except (ServerError, OSError, ValueError) as exc:  # e.g. a repository being replaced, a port taken
                reason = f"the restart failed: {exc}"
                self.report(f"{reason}; trying again in {pause:g} s")
                time.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE_MAX_S)
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


def dead_stubs(server_pid: int) -> list[StubProcess]:
    """The stubs of tritonserver `server_pid` that exited (zombies: Triton does not reap or restart them)."""
    return [stub for stub in stub_processes(server_pid).values() if not stub.running]
