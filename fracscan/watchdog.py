"""A dead-man switch for an embedded server: `python -m fracscan.watchdog`, started by EmbeddedServer.start.

The watchdog leads a process group of its own; the server is started into that group, and its python
stubs inherit it. The watchdog reads its stdin, a pipe whose only writer is the process that started
the server. When that process ends, however it ends (SIGKILL included, from whichever thread started
the server), the kernel closes the pipe; the read returns end-of-file and the watchdog SIGKILLs its
whole group: the server, every stub, and itself. Stopping the server closes the pipe the same way.

Neither PR_SET_PDEATHSIG (tied to the thread that forked, not to the process) nor a subreaper
(which acts only while it lives) covers a starter that is itself killed; a pipe does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# Terminal and polite signals do not end the watchdog: only the end of its pipe (or SIGKILL) does.
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def spawn() -> subprocess.Popen[bytes]:
    """Start a watchdog leading a new process group (its PID is the group's ID); close its stdin to fire it."""
    return subprocess.Popen(
        [sys.executable, "-m", "fracscan.watchdog"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=0,  # a group of its own, in the starter's session (so the server may join it)
    )


def main() -> None:
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    while os.read(0, 4096):  # nobody writes: this returns b"" once every writer is gone
        pass
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    main()
