"""The DICOM node's spool: received instances on disk until their results are stored.

    spool = Spool(Path("spool"), max_bytes=2 << 30, keep_failed_days=7)
    path = spool.put(sop_instance_uid, data)       # durable before the C-STORE is acknowledged; SpoolFull if not

    spool/incoming/<uid>.dcm            waiting: scored, results built and delivered, then removed
    spool/incoming/<uid>.answer/        its results, computed once (kept while the destination is down)
    spool/failed/<uid>.dcm + .reason    set aside (never retried), removed after keep_failed_days
    spool/results/                      results written here when there is no destination

Files are the owner's only (0600 in 0700 folders): they carry patient data. A write that fails
removes its partial file at once and raises SpoolFull saying how much space is free, so a full
disk refuses one instance and the next that fits is taken, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

UID_PATTERN = re.compile(r"[0-9.]{1,64}")
ANSWER_SUFFIX, REASON_SUFFIX = ".answer", ".reason"
OUTCOME_FILE = "outcome.json"


class SpoolFull(OSError):
    """An instance could not be spooled (disk full, or over --spool-max-bytes): answer 0xA700."""


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write, flush and fsync a 0600 file; on failure nothing is left behind."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


class Spool:
    """Received instances on disk, one file per SOP Instance UID, until their results are stored."""

    def __init__(self, directory: Path, max_bytes: int = 0, keep_failed_days: float = 7.0):
        self.directory = _private_dir(directory)
        self.incoming = _private_dir(directory / "incoming")
        self.failed_dir = directory / "failed"
        self.results_dir = directory / "results"
        self.max_bytes, self.keep_failed_s = max_bytes, keep_failed_days * 86400
        self._lock = threading.Lock()  # the size check and the write are one step for concurrent senders
        for partial in self.incoming.glob(".*.part"):  # a write cut short was never acknowledged
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink(missing_ok=True)

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Durably store one instance (the same UID again replaces it): returns only when it is on disk."""
        name = (
            sop_instance_uid
            if UID_PATTERN.fullmatch(sop_instance_uid)
            else "x" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32]
        )
        final = self.incoming / f"{name}.dcm"
        partial = self.incoming / f".{name}.{threading.get_ident()}.part"
        with self._lock:
            if self.max_bytes and (used := self.size()) + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"the spool would exceed --spool-max-bytes {self.max_bytes} ({used} bytes in use, "
                    f"{len(data)} more asked)"
                )
            try:
                _write_private(partial, data)
            except OSError as exc:
                raise SpoolFull(
                    f"cannot write {len(data)} bytes to the spool ({exc.strerror or exc}); "
                    f"{free_bytes(self.incoming)} bytes free on its file system"
                ) from None
        os.replace(partial, final)
        _fsync_dir(self.incoming)
        return final

    def size(self) -> int:
        """Bytes the spool's waiting instances and their answers take."""
        total = 0
        for path in self.incoming.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except FileNotFoundError:
                continue
        return total

    def pending(self) -> list[Path]:
        """What is waiting, oldest first."""
        entries = []
        for path in self.incoming.glob("*.dcm"):
            try:
                entries.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        return [path for _, path in sorted(entries)]

    def save_answer(self, path: Path, datasets: list[Dataset], outcome: dict[str, Any]) -> None:
        """Keep the results of `path` beside it (computed once, sent as often as it takes)."""
        final = path.with_suffix(ANSWER_SUFFIX)
        partial = self.incoming / f".{path.stem}.answer.part"
        shutil.rmtree(partial, ignore_errors=True)
        _private_dir(partial)
        try:
            for number, ds in enumerate(datasets):
                ds.save_as(partial / f"{number}.dcm", enforce_file_format=True)
                (partial / f"{number}.dcm").chmod(0o600)
            _write_private(partial / OUTCOME_FILE, json.dumps(outcome).encode())
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SpoolFull(
                f"cannot keep the results ({exc.strerror or exc}); {free_bytes(self.incoming)} bytes free"
            ) from None
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)

    def load_answer(self, path: Path) -> tuple[list[Dataset], dict[str, Any]] | None:
        """The results kept beside `path`, or None when none were computed yet."""
        folder = path.with_suffix(ANSWER_SUFFIX)
        try:
            outcome = json.loads((folder / OUTCOME_FILE).read_text())
        except (OSError, ValueError):
            return None
        files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
        return [pydicom.dcmread(f) for f in files], outcome

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(ANSWER_SUFFIX), ignore_errors=True)

    def fail(self, path: Path, reason: str) -> Path:
        """Set aside an instance that cannot be scored, with the reason beside it (not retried)."""
        _private_dir(self.failed_dir)
        target = self.failed_dir / path.name
        os.replace(path, target)
        target.chmod(0o600)
        _write_private(target.with_suffix(REASON_SUFFIX), (reason + "\n").encode())
        shutil.rmtree(path.with_suffix(ANSWER_SUFFIX), ignore_errors=True)
        return target

    def prune_failed(self) -> int:
        """Remove what was set aside longer ago than keep_failed_days; how many instances went."""
        if not self.failed_dir.is_dir():
            return 0
        cutoff, removed = time.time() - self.keep_failed_s, 0
        for path in self.failed_dir.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += path.suffix == ".dcm"
            except FileNotFoundError:
                continue
        return removed
