"""What Linux /proc says about processes: the one place fracscan reads it.

Every reader tolerates a process that exits while it is being read (its files vanish): a gone
process reads as None, an empty list or False, never as an error.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # the TCP state column of /proc/net/tcp for a listening socket


def available() -> bool:
    """True where /proc lists each process's threads (Linux)."""
    return (PROC / "self" / "task").is_dir()


def pids() -> Iterator[int]:
    """Every process this process can see."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, D, T, Z, ...), or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]  # the name in parentheses may itself hold spaces and ")"


def running(pid: int) -> bool:
    """True while `pid` exists and has not exited (a zombie nobody reaped has)."""
    return state(pid) not in (None, "Z", "X")


def comm(pid: int) -> str | None:
    """The kernel's name of `pid` (its executable's name, cut to 15 characters), or None."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def cmdline(pid: int) -> list[bytes]:
    """The arguments `pid` was started with (empty for a zombie or a gone process)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def children(pid: int) -> set[int]:
    """The child processes of `pid`: those of each of its threads (a child belongs to the thread that forked it)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(c) for c in (task / "children").read_text().split())
    return found


def named(name: str) -> list[int]:
    """The running processes whose comm is `name`, sorted."""
    return sorted(pid for pid in pids() if comm(pid) == name and running(pid))


def listening_pid(port: int, candidates: list[int]) -> int | None:
    """Which of `candidates` listens on TCP `port` (on any address), from /proc/net and the processes' fds."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in (PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


def mapped_files(pattern: re.Pattern[str]) -> set[str]:
    """The first group of `pattern` for every file path that some visible process maps and that matches it."""
    names: set[str] = set()
    for pid in pids():
        with contextlib.suppress(OSError):
            names.update(m.group(1) for m in pattern.finditer((PROC / str(pid) / "maps").read_text()))
    return names
