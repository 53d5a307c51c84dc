"""The GPU side of the build: finding the GPU and TensorRT, and the two engine builders.

Runs only inside the serving container (TensorRT + a GPU); `tensorrt` and cuda-python are imported
lazily, so this module imports anywhere and `trtexec_command` / `parse_libnvinfer_version` are tested
without them. The engine must be built by the same TensorRT version that Triton's TensorRT backend
links: `system_tensorrt_version` reads it from the container's libnvinfer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fracscan.atomic import atomic_write_bytes
from fracscan.export.tensorrt.cache import BuildOptions
from fracscan.export.tensorrt.config import INPUT_NAME, MemberInfo, cc_tag
from fracscan.export.tensorrt.errors import BuilderUnavailable, EngineBuildError

TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec",)


class EngineBuilder(Protocol):
    """What the build driver needs of a builder (the tests pass a stand-in)."""

    name: str
    version: str

    def build(
        self,
        member: MemberInfo,
        options: BuildOptions,
        out: Path,
        timing_cache: Path | None,
        log: Callable[[str], None],
    ) -> None: ...


def parse_libnvinfer_version(names: list[str]) -> str | None:
    """'libnvinfer.so.10.8.0' among file names -> '10.8.0' (the highest such version)."""
    found = []
    for name in names:
        m = re.fullmatch(r"libnvinfer\.so\.(\d+)\.(\d+)\.(\d+)(?:\.\d+)?", Path(name).name)
        if m:
            found.append(tuple(int(x) for x in m.groups()))
    return ".".join(map(str, max(found))) if found else None


def system_tensorrt_version() -> str | None:
    """The libnvinfer version in the container's library folders (what Triton's backend links)."""
    dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/tensorrt/lib",
        *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)),
    ]
    names = []
    for d in dirs:
        try:
            names += [p.name for p in Path(d).glob("libnvinfer.so.*")]
        except OSError:
            continue
    return parse_libnvinfer_version(names)


def find_trtexec() -> str | None:
    """`trtexec` on PATH, else where the TensorRT containers install it."""
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_FALLBACKS if os.access(p, os.X_OK)), None)


def import_cudart() -> Any:
    """cuda-python's runtime module under its new (>= 12.6) or old name."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def detect_gpu(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability) via nvidia-smi, else torch, else cuda-python."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "-i", str(device), "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
            name, cc = (part.strip() for part in out.splitlines()[0].rsplit(",", 1))
            cc_tag(cc)
            return name, cc
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        cudart = import_cudart()
        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    raise BuilderUnavailable(
        "cannot find the GPU: no nvidia-smi, torch or cuda-python here "
        "(run inside the serving container with a GPU, or pass --gpu-name/--compute-capability)"
    )


def trtexec_command(
    trtexec: str,
    onnx_path: Path,
    plan_path: Path,
    options: BuildOptions,
    input_dims: list[int] | tuple[int, ...],
    input_name: str = INPUT_NAME,
    timing_cache: Path | None = None,
) -> list[str]:
    """The trtexec command line equivalent to the Python builder's settings."""
    mn, op, mx = options.profile.shapes(input_dims)

    def shape(s: tuple[int, ...]) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in s)

    cmd = [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        f"--minShapes={shape(mn)}",
        f"--optShapes={shape(op)}",
        f"--maxShapes={shape(mx)}",
        f"--memPoolSize=workspace:{options.workspace_mib}M",
    ]
    if options.precision in ("fp16", "bf16"):
        cmd.append(f"--{options.precision}")
    else:  # fp32 means fp32: TensorRT otherwise allows TF32 convolutions (LCN's variance needs the bits)
        cmd.append("--noTF32")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append("--skipInference")  # build only; verification is done separately against ONNX Runtime
    return cmd


class PythonTensorRTBuilder:
    """The TensorRT Python builder API (`import tensorrt`)."""

    name = "tensorrt-python"

    def __init__(self, trt_module: Any) -> None:
        self.trt = trt_module
        self.version = str(trt_module.__version__)

    def build(
        self,
        member: MemberInfo,
        options: BuildOptions,
        out: Path,
        timing_cache: Path | None,
        log: Callable[[str], None],
    ) -> None:
        trt = self.trt
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if int(self.version.split(".")[0]) < 10:  # TensorRT 8.x: explicit batch is a flag
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(member.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(f"{member.name}: TensorRT's ONNX parser rejected {member.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
        if options.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif options.precision == "bf16":
            if not hasattr(trt.BuilderFlag, "BF16"):
                raise EngineBuildError(f"TensorRT {self.version} has no BF16 builder flag")
            config.set_flag(trt.BuilderFlag.BF16)
        else:  # fp32 means fp32, not TF32 (see trtexec_command)
            config.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        mn, op, mx = options.profile.shapes(member.input_dims)
        profile.set_shape(member.input_name, mn, op, mx)
        config.add_optimization_profile(profile)
        cache = None
        if timing_cache is not None:
            data = timing_cache.read_bytes() if timing_cache.is_file() else b""
            cache = config.create_timing_cache(data)
            if not config.set_timing_cache(cache, ignore_mismatch=False):
                log(f"  timing cache {timing_cache} does not match this GPU/TensorRT; starting a new one")
                cache = config.create_timing_cache(b"")
                config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(f"{member.name}: TensorRT could not build an engine (see the TensorRT log above)")
        atomic_write_bytes(out, bytes(memoryview(serialized)))
        if timing_cache is not None:
            atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))


class TrtexecBuilder:
    """`trtexec` on PATH (or in /usr/src/tensorrt/bin)."""

    name = "trtexec"

    def __init__(self, path: str) -> None:
        self.path = path
        self.version = self._version()

    def _version(self) -> str:
        out = subprocess.run([self.path, "--help"], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"TensorRT v(\d+)", out)  # banner: "[TensorRT v100800]" = 10.8.0
        if not m:
            raise BuilderUnavailable(f"cannot read the TensorRT version from `{self.path} --help`")
        v = int(m.group(1))
        return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"

    def build(
        self,
        member: MemberInfo,
        options: BuildOptions,
        out: Path,
        timing_cache: Path | None,
        log: Callable[[str], None],
    ) -> None:
        tmp = out.with_name(f".{out.name}.trtexec.tmp")
        cmd = trtexec_command(
            self.path, member.onnx_path, tmp, options, member.input_dims, member.input_name, timing_cache
        )
        log("  $ " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise EngineBuildError(f"{member.name}: trtexec failed ({proc.returncode}):\n{tail}")
        os.replace(tmp, out)


def select_builder(prefer: str = "auto") -> PythonTensorRTBuilder | TrtexecBuilder:
    """The TensorRT Python API if importable, else trtexec, else a clear error."""
    if prefer in ("auto", "python"):
        try:
            import tensorrt  # lazy: only inside the serving container

            return PythonTensorRTBuilder(tensorrt)
        except ImportError:
            if prefer == "python":
                raise BuilderUnavailable(
                    "the TensorRT Python package is not installed "
                    "(pip install tensorrt-cu12==<the container's TensorRT version>)"
                ) from None
    if prefer in ("auto", "trtexec"):
        path = find_trtexec()
        if path:
            return TrtexecBuilder(path)
    raise BuilderUnavailable(
        "no TensorRT builder here: neither `import tensorrt` nor `trtexec` works. Engines must be built "
        "inside the serving Triton container (see docker/README.md); `python -m fracscan.export.tensorrt plan` "
        "shows what would be built on any machine"
    )
