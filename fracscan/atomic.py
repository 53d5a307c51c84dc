"""Atomic file writes: a crash, a full disk or a second writer never leaves a half-written file.

Every write goes to a temporary file beside the target, is flushed to disk, and is renamed over the
target (a rename within one folder is atomic on POSIX), so a reader sees the old file or the new one.
A replaced file keeps its permissions; a new one gets 0644. The one home of this pattern: result
files, resumable JSONL, export records, TensorRT engines, sidecars and configs all use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

NEW_FILE_MODE = 0o644  # mkstemp makes 0600; results and models are read by other users (Triton, a PACS)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with _temporary_beside(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` atomically."""
    with _temporary_beside(dst) as tmp:
        shutil.copyfile(src, tmp)


class _temporary_beside:
    """A temporary file beside `path`: renamed over it on success, removed on any failure."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            Path(self.tmp).unlink(missing_ok=True)
            return
        try:
            mode = self.path.stat().st_mode & 0o7777 if self.path.exists() else NEW_FILE_MODE
            os.chmod(self.tmp, mode)
            os.replace(self.tmp, self.path)
        except BaseException:
            Path(self.tmp).unlink(missing_ok=True)
            raise
