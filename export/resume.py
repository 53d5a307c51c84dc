"""What lets `fracscan export` be interrupted and resumed: member keys, sidecars and temporary files.

Each exported member leaves `member_NN/export.json` beside its model folder (Triton ignores files in
a model's folder): a key over everything its ONNX depends on (the spec entry, the pre-processing,
the checkpoint's content hash, the target, the opset, the exporter's versions and source) and the
hash of the `model.onnx` it produced. A later export reuses a member whose key and file still match,
so an interrupted export continues where it stopped and a changed checkpoint is exported again.

ONNX files are written as `.fracscan-tmp-<pid>-<name>` in the output folder and moved into place
only after their parity check. `TempFiles` removes its own on any normal exit, and SIGTERM is
turned into an exit so that this happens then too (SIGINT already raises KeyboardInterrupt); what a
SIGKILL leaves behind is removed by the next export into the same folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fracscan import contract as c
from fracscan import provenance
from fracscan.atomic import atomic_write_text
from fracscan.spec import EnsembleSpec

TEMP_PREFIX = ".fracscan-tmp-"
SIDECAR = "export.json"
OPSET = 17
# The code that turns a checkpoint into ONNX: a change to it changes every key.
EXPORTER_SOURCES = ("members.py", "vgg.py", "checkpoints.py", "onnx_export.py")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def exporter_versions() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    source = hashlib.sha256(b"".join((here / name).read_bytes() for name in EXPORTER_SOURCES)).hexdigest()[:16]
    versions = {p: _version(p) for p in ("fracscan", "torch", "onnx", "onnxruntime")}
    return versions | {"exporter_source": source}


def member_inputs(spec: EnsembleSpec, index: int, source: dict[str, Any], target: str) -> dict[str, Any]:
    """Everything member `index`'s ONNX depends on (its heads and input channels included, from the spec entry);
    `source` names its weights (e.g. a checkpoint's hash)."""
    member = replace(spec.members[index], checkpoint=None, onnx=None)  # paths may move; the content counts
    return {
        "member": asdict(member),
        "preprocess": asdict(spec.preprocess),
        "source": source,
        "target": target,
        "opset": OPSET,
        "versions": exporter_versions(),
    }


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class MemberRecord:
    """The sidecar of one exported member."""

    key: str
    onnx_sha256: str
    parity: float
    parameters: int
    inputs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def member_dir(output: Path, index: int) -> Path:
    return Path(output) / c.member_model(index)


def member_onnx_path(output: Path, index: int) -> Path:
    return member_dir(output, index) / c.MODEL_VERSION / c.ONNX_FILE


def reusable(output: Path, index: int, key: str) -> MemberRecord | None:
    """The sidecar of member `index` if it was exported from the same inputs and its file is intact."""
    sidecar = member_dir(output, index) / SIDECAR
    onnx = member_onnx_path(output, index)
    try:
        raw = json.loads(sidecar.read_text())
        record = MemberRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if record.key != key or not onnx.is_file() or provenance.sha256_file(onnx) != record.onnx_sha256:
        return None
    return record


def save_record(output: Path, index: int, record: MemberRecord) -> None:
    atomic_write_text(member_dir(output, index) / SIDECAR, json.dumps(record.to_json(), indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(output: Path) -> list[Path]:
    """Temporary files of exports that no longer run (a SIGKILL, a power cut): removed, and returned."""
    removed: list[Path] = []
    if not Path(output).is_dir():
        return removed
    for path in Path(output).rglob(f"{TEMP_PREFIX}*"):
        pid = path.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another export is writing into this folder right now
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


class TempFiles:
    """Temporary paths in the output folder, removed when the export ends however it ends (but SIGKILL)."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.paths: list[Path] = []

    def new(self, name: str) -> Path:
        path = self.output / f"{TEMP_PREFIX}{os.getpid()}-{name}"
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self.paths.clear()


class Terminated(SystemExit):
    """SIGTERM arrived: unwind (removing temporary files) and exit with 128 + 15."""


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` for the duration, so `finally` blocks run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
