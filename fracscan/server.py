"""The embedded CPU Triton server: the `tritonserver` binary from the nvidia-pytriton wheel.

It is a real Triton server (HTTP, gRPC, metrics, ensemble scheduler, dynamic batching)
serving python-backend models that run ONNX Runtime. The wheel ships the server for PyTriton's
own launcher, which prepares its environment itself; started directly from a virtual
environment, the python backend works once three facts hold, and this module sees to them:

1. the stub for the running Python is copied next to `libtriton_python.so`, in a writable
   copy of the wheel's backends folder;
2. the wheel's bundled shared libraries (nvidia_pytriton.libs) are on LD_LIBRARY_PATH, since
   the copied stub no longer finds them relative to itself;
3. this environment's `bin/` is first on the server's PATH, so the stub's `python` imports
   this environment's packages (numpy, onnxruntime, pydicom, fracscan).

`DEMO_REPOSITORY` is the committed demo repository of a source checkout; an installed wheel does
not include it, so starting on a repository that does not exist fails with a message that names
the path and says to pass one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fracscan.pipeline import EnsembleRepository

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_REPOSITORY = PROJECT_ROOT / "model_repository"
SHM_DIR = Path("/dev/shm")  # where the python backend keeps its shared-memory regions


class ServerError(RuntimeError):
    """The embedded server could not be started or did not become ready."""


class RepositoryNotFoundError(ServerError):
    """The model repository to serve does not exist (e.g. the checkout's demo default, from a wheel)."""


def require_repository(path: Path) -> Path:
    """`path` if it is a directory; else a RepositoryNotFoundError naming it and the way out."""
    path = Path(path)
    if path.is_dir():
        return path
    raise RepositoryNotFoundError(
        f"no model repository at {path}; pass --repository DIR, a repository written by `fracscan export` "
        "(the demo repository, the default, exists only in a source checkout)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pytriton_root() -> Path:
    try:
        import pytriton  # the nvidia-pytriton wheel (extra "server")
    except ImportError:
        raise ServerError("the embedded server needs the server extra: pip install 'fracscan[server]'") from None
    root = Path(pytriton.__file__).parent
    if not (root / "tritonserver" / "bin" / "tritonserver").exists():
        raise ServerError(f"no tritonserver binary in {root}/tritonserver/bin")
    return root


def backends_dir_name(root: Path, python_version: str) -> str:
    """The cache folder for one pytriton install and Python: the same name in every process.

    A digest of the wheel's version and location (not `hash()`, which is salted per process), so
    a second start reuses the first one's copy and a new wheel gets a fresh one.
    """
    try:
        wheel = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        wheel = "unknown"
    key = hashlib.sha256(f"{wheel}\0{root.resolve()}".encode()).hexdigest()[:16]
    return f"triton-backends-py{python_version}-{key}"


def prepare_backends(cache_dir: Path | None = None) -> Path:
    """A writable copy of the wheel's backends with this Python's stub beside libtriton_python.so."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fracscan"
    target = cache_dir / backends_dir_name(root, version)
    if not (target / "python" / "triton_python_backend_stub").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir))
        shutil.copytree(root / "tritonserver" / "backends", tmp / "backends")
        shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
        with contextlib.suppress(OSError):  # another process won the race; its copy is complete
            (tmp / "backends").rename(target)  # atomic: concurrent starts never see half a copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class EmbeddedServer:
    """Start/stop `tritonserver` on a repository; a context manager.

    Ports default to free ones. The server runs in its own process group, so stopping it
    also stops every python stub it started (no stray processes).
    """

    repository: Path = DEMO_REPOSITORY
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    ort_threads: int = 1
    shm_bytes: int = 64 * 1024 * 1024
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).resolve()
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        # Our own name for the python backend's /dev/shm regions, so stop() can remove what a
        # killed server leaves behind (64 MiB each; Triton removes them only on a clean exit).
        self.shm_prefix = f"fracscan_{os.getpid()}_{self.http_port}_"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        root = _pytriton_root()
        return [
            str(root / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={prepare_backends()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            "--model-control-mode=none",  # no remote load/unload
            "--strict-readiness=true",
            "--exit-on-error=true",
            # Python-backend tensors travel through /dev/shm: start large enough for a batch
            # of 8 pre-processed frames at S = 1024 (8 x 8 MiB) and grow in big steps.
            f"--backend-config=python,shm-default-byte-size={self.shm_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_bytes}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = _pytriton_root().parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["FRACSCAN_ORT_THREADS"] = str(self.ort_threads)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout: float = 180.0) -> EmbeddedServer:
        require_repository(self.repository)
        EnsembleRepository.open(self.repository)  # fail early, with a clear message, on a bad repository
        # The log is closed here once the child has started: it keeps its own copy of the descriptor.
        with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext(subprocess.DEVNULL) as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while loading{where}")
            try:
                if httpx.get(f"{self.http_url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # tritonserver unloads the models and stops its python stubs
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its process group is left
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):  # left behind if the server was killed
            region.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
