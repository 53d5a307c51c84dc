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

The server is locked down (`RESTRICTED_APIS`: registering system shared memory, changing the log and
trace settings need a header whose value is a random key made per start, so nobody has it) unless
`allow_apis` opens them; it never outlives the Python process that started it, however that ends and from
whichever thread it was started (fracscan.watchdog); a start removes the /dev/shm regions that a killed
earlier server left behind.

`DEMO_REPOSITORY` is the committed demo repository of a source checkout; an installed wheel does
not include it, so starting on a repository that does not exist fails with a message that names
the path and says to pass one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import secrets
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

from fracscan import contract as c
from fracscan import procfs, settings, watchdog
from fracscan.pipeline import EnsembleRepository
from fracscan.ports import require_free_ports

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_REPOSITORY = PROJECT_ROOT / "model_repository"
OLCZAK_DEMO_REPOSITORY = PROJECT_ROOT / "model_repository_olczak"  # the Olczak et al. 2017 system's DEMO
SHM_DIR = Path("/dev/shm")  # where the python backend keeps its shared-memory regions
SHM_PREFIX = re.compile(r"fracscan_(\d+)_\d+_")  # our regions: fracscan_<owner pid>_<http port>_<uuid>
_MAPPED_REGION = re.compile(r"/dev/shm/(fracscan_\S+)")
# APIs refused without the admin header: anyone who reaches the port could otherwise make the server
# read inputs from / write outputs into any /dev/shm name, or change what it logs. `model-repository`
# stays open: model control is `none` (no load / unload), and the SDK's health check reads its index.
RESTRICTED_APIS = ("shared-memory", "logging", "trace")
ADMIN_HEADER = "fracscan-admin-key"  # gRPC clients send it as metadata triton-grpc-protocol-fracscan-admin-key
STUB_COMM = "triton_python_b"  # /proc/<pid>/comm of triton_python_backend_stub (the kernel keeps 15 characters)


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


def restricted_api_args(allow: tuple[str, ...] | list[str], key: str) -> list[str]:
    """Triton's flags refusing RESTRICTED_APIS but those in `allow`, over HTTP and gRPC, without header `key`."""
    unknown = set(allow) - set(RESTRICTED_APIS)
    if unknown:
        raise ValueError(
            f"cannot allow {', '.join(sorted(unknown))}: the APIs to allow are {', '.join(RESTRICTED_APIS)}"
        )
    restricted = ",".join(api for api in RESTRICTED_APIS if api not in allow)
    if not restricted:
        return []
    return [
        f"--http-restricted-api={restricted}:{ADMIN_HEADER}={key}",
        f"--grpc-restricted-protocol={restricted}:{ADMIN_HEADER}={key}",
    ]


# Python-backend tensors travel through /dev/shm: start large enough for a batch of 8 pre-processed
# frames at S = 1024 (8 x 8 MiB) and grow in the same big steps (Triton's defaults are 1 MiB).
SHM_BYTES = 64 * 1024 * 1024


def tritonserver_command(
    repository: Path | str,
    *,
    admin_key: str,
    allow_apis: tuple[str, ...] | list[str] = (),
    http_port: int = c.HTTP_PORT,
    grpc_port: int = c.GRPC_PORT,
    metrics_port: int = c.METRICS_PORT,
    shm_bytes: int = SHM_BYTES,
    shm_growth_bytes: int | None = None,
    binary: str = "tritonserver",
    host: str | None = None,
    backend_dir: Path | None = None,
    shm_prefix: str | None = None,
    exit_timeout_s: int | None = None,
) -> list[str]:
    """The tritonserver command line fracscan serves with: the embedded server's (EmbeddedServer.command) and
    the container's (docker/entrypoint.sh prints it with `python -m fracscan.server --command`).

    Models are fixed at start (no model control), the server is ready only once every model is, a model
    that fails to load stops it, and RESTRICTED_APIS but `allow_apis` need header ADMIN_HEADER = `admin_key`.
    `host` None listens on every address; `backend_dir`, `shm_prefix`, `exit_timeout_s` None keep Triton's.
    """
    args = [
        binary,
        f"--model-repository={repository}",
        *([f"--backend-directory={backend_dir}"] if backend_dir is not None else []),
        "--model-control-mode=none",  # no remote load/unload
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        *([f"--http-address={host}", f"--grpc-address={host}"] if host is not None else []),
        "--allow-metrics=true",
        *([f"--exit-timeout-secs={exit_timeout_s}"] if exit_timeout_s is not None else []),
        f"--backend-config=python,shm-default-byte-size={shm_bytes}",
        f"--backend-config=python,shm-growth-byte-size={shm_bytes if shm_growth_bytes is None else shm_growth_bytes}",
        *([f"--backend-config=python,shm-region-prefix-name={shm_prefix}"] if shm_prefix is not None else []),
        *restricted_api_args(allow_apis, admin_key),
    ]
    return args


@dataclass(frozen=True)
class StubProcess:
    """One python-backend stub, a child of tritonserver."""

    pid: int
    model: str  # "" once it is a zombie (the kernel drops its command line)
    running: bool  # False: exited (a zombie nobody reaps)


def stub_processes(server_pid: int) -> dict[int, StubProcess]:
    """The python stubs tritonserver `server_pid` started (children of each of its threads)."""
    stubs = {}
    for pid in procfs.children(server_pid):
        if procfs.comm(pid) != STUB_COMM:
            continue
        argv = procfs.cmdline(pid)
        model = Path(os.fsdecode(argv[1])).parts[-3] if len(argv) > 1 and argv[1].endswith(b"model.py") else ""
        stubs[pid] = StubProcess(pid, model, procfs.running(pid))
    return stubs


def remove_stale_regions(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove our /dev/shm regions whose owner process is gone and that no process maps (a killed server's).

    A region of a dead owner that some process still maps belongs to a server that outlived it: left alone.
    """
    stale = []
    for region in shm_dir.glob("fracscan_*"):
        match = SHM_PREFIX.match(region.name)
        if match and procfs.state(int(match.group(1))) is None:
            stale.append(region)
    if not stale:
        return []
    mapped = procfs.mapped_files(_MAPPED_REGION)
    removed = []
    for region in stale:
        if region.name not in mapped:
            with contextlib.suppress(OSError):
                region.unlink()
                removed.append(region.name)
    return removed


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
    cache_dir = cache_dir or settings.current().cache_home / "fracscan"
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

    Ports default to free ones. The server runs in the process group of its watchdog (fracscan.watchdog),
    so stopping it also stops every python stub it started (no stray processes), and the watchdog ends
    them all when this process ends, however it ends and whichever thread started the server.
    `allow_apis`: which of RESTRICTED_APIS to leave open. Stop and start again to restart on the same ports.
    """

    repository: Path = DEMO_REPOSITORY
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    ort_threads: int = 1
    shm_bytes: int = SHM_BYTES
    extra_args: list[str] = field(default_factory=list)
    allow_apis: tuple[str, ...] = ()
    exit_timeout_s: int = 10  # Triton's wait for requests in flight at SIGTERM
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False)  # leads the server's group

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).resolve()
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        # Our own name for the python backend's /dev/shm regions, so stop() can remove what a
        # killed server leaves behind (64 MiB each; Triton removes them only on a clean exit).
        self.shm_prefix = f"fracscan_{os.getpid()}_{self.http_port}_"
        restricted_api_args(self.allow_apis, "")  # an unknown API name fails here, not at start
        self.admin_key = secrets.token_hex(16)

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
        return [
            *tritonserver_command(
                self.repository,
                admin_key=self.admin_key,
                allow_apis=self.allow_apis,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                metrics_port=self.metrics_port,
                shm_bytes=self.shm_bytes,
                binary=str(_pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
                host=self.host,
                backend_dir=prepare_backends(),
                shm_prefix=self.shm_prefix,
                exit_timeout_s=self.exit_timeout_s,
            ),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = _pytriton_root().parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env[settings.ORT_THREADS_ENV] = str(self.ort_threads)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout: float = 180.0) -> EmbeddedServer:
        require_repository(self.repository)
        EnsembleRepository.open(self.repository)  # fail early, with a clear message, on a bad repository
        # A busy port: refuse now, naming it (tritonserver would fail only after its stubs started).
        require_free_ports(self.host, http=self.http_port, grpc=self.grpc_port, metrics=self.metrics_port)
        remove_stale_regions()
        self.admin_key = secrets.token_hex(16)  # a new one per start: a key seen in a process list dies with it
        command, env = self.command(), self.environment()
        self.watchdog = watchdog.spawn()
        try:
            # The log is closed here once the child has started: it keeps its own copy of the descriptor.
            with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext(subprocess.DEVNULL) as log:
                self.process = subprocess.Popen(
                    command,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    process_group=self.watchdog.pid,  # set before exec: no moment without a watchdog
                )
        except OSError as exc:
            self.stop()
            raise ServerError(f"tritonserver could not be started: {exc}") from None
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

    def stubs(self) -> dict[int, StubProcess]:
        """The running server's python stubs by PID (empty when it is not running)."""
        proc = self.process
        return stub_processes(proc.pid) if proc is not None and proc.poll() is None else {}

    def stop(self, timeout: float | None = None, force: bool = False) -> None:
        """Stop the server: SIGTERM and up to `timeout` s (exit_timeout_s + 5) to finish, then SIGKILL.

        `force`, or a dead python stub (Triton's unload then waits for it forever), kills at once.
        The process stays recorded until it is gone, so an interrupted stop can be repeated.
        """
        proc = self.process
        try:
            if proc is not None and proc.poll() is None:
                if not force and all(stub.running for stub in self.stubs().values()):
                    proc.terminate()  # tritonserver unloads the models and stops its python stubs
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(self.exit_timeout_s + 5.0 if timeout is None else timeout)
                proc.kill()
                proc.wait()
        finally:
            self._end_group()
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):  # left behind if the server was killed
                region.unlink(missing_ok=True)
            self.process = None

    def _end_group(self) -> None:
        """SIGKILL whatever is left of the server's group (stubs, the watchdog), then reap the watchdog.

        The group is signalled before the watchdog is reaped: until then its PID, the group's ID, cannot
        be given to another process.
        """
        dog = self.watchdog
        if dog is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(dog.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            dog.stdin.close()  # type: ignore[union-attr]
        dog.wait()
        self.watchdog = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m fracscan.server --command ...`: print tritonserver_command, one argument a line (exit 2 on a
    bad setting, naming it). docker/entrypoint.sh runs it, so a container serves with the same command line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fracscan.server", description=main.__doc__)
    parser.add_argument("--command", action="store_true", required=True, help="print the command line")
    parser.add_argument("--repository", required=True)
    parser.add_argument("--allow-api", default="", help=f"comma-separated, of {','.join(RESTRICTED_APIS)}")
    parser.add_argument("--http-port", type=int, default=c.HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=c.GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=c.METRICS_PORT)
    parser.add_argument("--shm-default-bytes", type=int, default=SHM_BYTES)
    parser.add_argument("--shm-growth-bytes", type=int, default=SHM_BYTES)
    args = parser.parse_args(argv)
    allowed = tuple(a.strip() for a in args.allow_api.split(",") if a.strip())
    try:
        command = tritonserver_command(
            args.repository,
            admin_key=secrets.token_hex(16),  # a new one per start, written nowhere
            allow_apis=allowed,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            shm_bytes=args.shm_default_bytes,
            shm_growth_bytes=args.shm_growth_bytes,
        )
        if any("\n" in arg for arg in command):
            raise ValueError("an argument of the tritonserver command holds a line break")
    except ValueError as exc:
        print(f"fracscan: {exc}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(command))


if __name__ == "__main__":
    main()
