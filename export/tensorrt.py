"""The `tensorrt` target: member configs for `platform: "tensorrt_plan"` and the engine build.

Two halves, kept apart on purpose:

* **Pure (runs anywhere, tested here):** the config fields `fracscan export --target tensorrt`
  writes (`tensorrt_member_fields`), engine file names per compute capability, cache keys,
  the sidecar JSON, the skip/restore/build decision, the trtexec command line, reading a
  generated repository. Versions and GPUs are plain arguments.
* **GPU side (runs only inside the serving container):** building engines with the TensorRT
  Python builder API (imported lazily) or `trtexec`, detecting the GPU, and checking each
  engine against ONNX Runtime (`verify_engine`, with torch, polygraphy or cuda-python as the
  CUDA array library - whichever is installed). Every line it prints names which one ran.

The engine must be built by the same TensorRT version that Triton's TensorRT backend links,
i.e. inside the serving container on the serving GPU; `docker/entrypoint.sh` runs

    python -m fracscan.export.tensorrt build --repository /models --cache-dir /var/cache/fracscan/engines

before `tritonserver`. For each member folder whose config says `tensorrt_plan` it builds
`member_XX/1/model.sm<cc>.plan` from `member_XX/1/model.onnx` (FP16 by default, one
optimization profile over the batch dimension of input `image`, a persistent timing cache),
writes `model.sm<cc>.plan.json` beside it and adds `"<cc>": "model.sm<cc>.plan"` to the
config's `cc_model_filenames` if it is missing. A member is skipped exactly when its sidecar
holds the same cache key - sha256 over the ONNX bytes, the TensorRT version, the GPU name and
compute capability, the precision and the profile - and the plan's own sha256; an engine with
that key in `--cache-dir` (a volume) is copied instead of rebuilt.

Other commands: `plan` (what `build` would do, and the equivalent trtexec commands; takes the
TensorRT version and GPU as options so it runs on any machine) and `check` (the ONNX check of
`fracscan.export.onnx_check` on every member).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "fp32")
KEY_SCHEMA = 1  # bump when the meaning of the key (or of an engine) changes
INPUT_NAME = "image"
ONNX_FILE = "model.onnx"
DEFAULT_PLAN = "model.plan"  # Triton's fallback when the GPU's compute capability is not mapped
TRT_PLATFORM = "tensorrt_plan"
# Verification tolerance on the members' outputs (probabilities in [0, 1]), per precision.
DEFAULT_MAX_ABS_DIFF = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}
TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec",)

_CC = re.compile(r"^(\d+)\.(\d+)$")


class EngineBuildError(RuntimeError):
    """An engine could not be built, verified or installed; the message says which member and why."""


class BuilderUnavailable(RuntimeError):
    """No usable TensorRT builder / runtime / GPU here; the message says what is missing."""


# ============================================================================================
# Pure part: names, keys, sidecars, decisions, commands, config fields
# ============================================================================================


def cc_tag(compute_capability: str) -> str:
    """'9.0' -> '90', '8.6' -> '86', '12.0' -> '120' (the sm_XY naming)."""
    m = _CC.match(str(compute_capability).strip())
    if not m:
        raise ValueError(f"compute capability must look like '8.6', got {compute_capability!r}")
    return f"{int(m.group(1))}{int(m.group(2))}"


def engine_filename(compute_capability: str) -> str:
    """The plan file for one compute capability: 'model.sm90.plan'."""
    return f"model.sm{cc_tag(compute_capability)}.plan"


def sidecar_path(plan: Path) -> Path:
    """'model.sm90.plan' -> 'model.sm90.plan.json' (same folder)."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def normalize_trt_version(version: str) -> str:
    """'10.8.0.43' -> '10.8.0' (what libnvinfer file names and trtexec banners show)."""
    parts = re.findall(r"\d+", str(version))
    if len(parts) < 3:
        raise ValueError(f"TensorRT version must have major.minor.patch, got {version!r}")
    return ".".join(str(int(p)) for p in parts[:3])


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile over the batch dimension (the other dims are static)."""

    min: int = 1
    opt: int = 4
    max: int = 8

    def __post_init__(self):
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def shapes(self, dims: list[int] | tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) full shapes for an input with non-batch `dims`."""
        dims = tuple(int(d) for d in dims)
        if any(d <= 0 for d in dims):
            raise ValueError(f"non-batch dims must be static and positive, got {list(dims)}")
        return tuple((b, *dims) for b in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class BuildEnvironment:
    """What the engine depends on besides the ONNX and the build options."""

    trt_version: str  # as reported by the builder: '10.8.0.43' (Python API) or '10.8.0' (trtexec banner)
    gpu_name: str
    compute_capability: str  # '9.0'

    def __post_init__(self):
        cc_tag(self.compute_capability)  # validates
        normalize_trt_version(self.trt_version)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    profile: BatchProfile = BatchProfile()
    workspace_mib: int = 4096  # builder scratch memory; not part of the key (does not change results)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def key_inputs(onnx_sha256: str, env: BuildEnvironment, options: BuildOptions, input_name: str,
               input_dims: list[int] | tuple[int, ...]) -> dict:
    """Everything the cache key covers, as a JSON-able dict (also stored in the sidecar)."""
    mn, op, mx = options.profile.shapes(input_dims)
    return {
        "schema": KEY_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "tensorrt": env.trt_version.strip(),
        "gpu": env.gpu_name.strip(),
        "compute_capability": env.compute_capability,
        "precision": options.precision,
        "profile": {"input": input_name, "min": list(mn), "opt": list(op), "max": list(mx)},
    }


def cache_key(onnx_sha256: str, env: BuildEnvironment, options: BuildOptions, input_name: str = INPUT_NAME,
              input_dims: list[int] | tuple[int, ...] = (2, 1024, 1024)) -> str:
    """sha256 over the ONNX hash + TensorRT version + GPU name/cc + precision + profile."""
    blob = json.dumps(key_inputs(onnx_sha256, env, options, input_name, input_dims), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_sidecar(plan: Path) -> dict | None:
    """The sidecar's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(plan).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sidecar(plan: Path, record: dict) -> Path:
    """Write the sidecar for an engine that is already in place (records its sha256 and size)."""
    plan = Path(plan)
    data = dict(record)
    data["plan_sha256"] = sha256_file(plan)
    data["plan_bytes"] = plan.stat().st_size
    _atomic_write_bytes(sidecar_path(plan), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return sidecar_path(plan)


def engine_status(plan: Path, key: str, inputs: dict | None = None) -> tuple[bool, str]:
    """(up_to_date, reason). Up to date exactly when the plan exists, its sidecar holds `key`
    and the plan's sha256 matches the one recorded (so a truncated or swapped plan rebuilds)."""
    plan = Path(plan)
    if not plan.is_file():
        return False, "no engine"
    side = read_sidecar(plan)
    if side is None:
        return False, "engine without a readable sidecar"
    if side.get("key") != key:
        changed = []
        if inputs is not None:
            for name in ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "precision", "profile", "schema"):
                if side.get(name) != inputs.get(name):
                    old, new = side.get(name), inputs.get(name)
                    changed.append("onnx changed" if name == "onnx_sha256" else f"{name} {old} -> {new}")
        return False, "stale: " + (", ".join(changed) if changed else "cache key differs")
    if side.get("plan_sha256") != sha256_file(plan):
        return False, "engine bytes differ from the sidecar"
    return True, "up to date"


def trtexec_command(trtexec: str, onnx_path: Path, plan_path: Path, options: BuildOptions,
                    input_dims: list[int] | tuple[int, ...], input_name: str = INPUT_NAME,
                    timing_cache: Path | None = None) -> list[str]:
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
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append("--skipInference")  # build only; verification is done separately against ONNX Runtime
    return cmd


# ---------------------------------------------------------------------------- repository side


def tensorrt_member_fields(spec, index: int, opt) -> dict:
    """ModelConfig fields of a `tensorrt` member (used by repository.member_config).

    platform + GPU instance group + cc_model_filenames (one engine per compute capability,
    `model.plan` as Triton's fallback name) + model_warmup (a zero- or random-data `image`
    sample at batch 1 and at max_batch_size) + optional CUDA graphs for the preferred batch
    sizes and max_batch_size.
    """
    s = spec.preprocess.size
    dims = [2, s, s]
    fields: dict = {
        "platform": TRT_PLATFORM,
        "default_model_filename": DEFAULT_PLAN,
        "instance_group": [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.Kind.KIND_GPU, count=opt.gpu_instances)],
        "cc_model_filenames": {cc: engine_filename(cc) for cc in opt.trt_compute_capabilities},
    }
    if opt.warmup not in ("zero", "random", "none"):
        raise ValueError(f"warmup must be 'zero', 'random' or 'none', got {opt.warmup!r}")
    if opt.warmup != "none":
        warmups = []
        for batch in sorted({1, opt.max_batch_size}):
            sample = mc.ModelWarmup.Input(data_type=mc.DataType.TYPE_FP32, dims=dims)
            if opt.warmup == "zero":
                sample.zero_data = True
            else:
                sample.random_data = True
            warmups.append(mc.ModelWarmup(name=f"{opt.warmup}_batch{batch}", batch_size=batch,
                                          inputs={INPUT_NAME: sample}))
        fields["model_warmup"] = warmups
    if opt.cuda_graphs:
        batches = sorted({b for b in opt.preferred_batch_sizes if b <= opt.max_batch_size} | {1, opt.max_batch_size})
        graphs = [mc.ModelOptimizationPolicy.Cuda.GraphSpec(
            batch_size=b, input={INPUT_NAME: mc.ModelOptimizationPolicy.Cuda.GraphSpec.Shape(dim=dims)})
            for b in batches]
        fields["optimization"] = mc.ModelOptimizationPolicy(
            cuda=mc.ModelOptimizationPolicy.Cuda(graphs=True, graph_spec=graphs))
    return fields


@dataclass(frozen=True)
class MemberInfo:
    name: str
    folder: Path  # repository/member_XX
    onnx_path: Path  # repository/member_XX/1/model.onnx
    input_name: str
    input_dims: tuple[int, ...]  # non-batch dims from config.pbtxt
    max_batch_size: int

    @property
    def version_dir(self) -> Path:
        return self.onnx_path.parent


def _parse_config(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise EngineBuildError(f"{path}: cannot read the model config: {exc}") from None


def tensorrt_members(repository: Path, only: list[str] | None = None) -> list[MemberInfo]:
    """The repository's models whose config says `platform: "tensorrt_plan"`, sorted by name."""
    repository = Path(repository)
    if not repository.is_dir():
        raise EngineBuildError(f"repository {repository} does not exist")
    members = []
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        cfg = _parse_config(cfg_path)
        if cfg.platform != TRT_PLATFORM or (only and cfg.name not in only and cfg_path.parent.name not in only):
            continue
        inputs = list(cfg.input)
        if len(inputs) != 1:
            raise EngineBuildError(f"{cfg_path}: a member takes exactly one input, found {len(inputs)}")
        versions = sorted((p for p in cfg_path.parent.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise EngineBuildError(f"{cfg_path.parent}: no version folder (expected 1/)")
        onnx_path = versions[-1] / ONNX_FILE
        if not onnx_path.is_file():
            raise EngineBuildError(f"{cfg_path.parent.name}: {onnx_path} not found (the engine is built from it)")
        members.append(MemberInfo(cfg.name or cfg_path.parent.name, cfg_path.parent, onnx_path, inputs[0].name,
                                  tuple(int(d) for d in inputs[0].dims), int(cfg.max_batch_size)))
    if only:
        missing = set(only) - {m.name for m in members} - {m.folder.name for m in members}
        if missing:
            raise EngineBuildError(f"no tensorrt member(s) named {sorted(missing)} in {repository}")
    return members


def ensure_cc_mapping(member_folder: Path, compute_capability: str) -> bool:
    """Add '<cc>': 'model.sm<cc>.plan' to the config's cc_model_filenames if it is missing.

    Returns True when config.pbtxt was rewritten. Without the entry Triton would look for the
    fallback `model.plan` on a GPU of this compute capability.
    """
    path = Path(member_folder) / "config.pbtxt"
    cfg = _parse_config(path)
    want = engine_filename(compute_capability)
    if cfg.cc_model_filenames.get(compute_capability) == want:
        return False
    cfg.cc_model_filenames[compute_capability] = want
    _atomic_write_bytes(path, text_format.MessageToString(cfg).encode())
    return True


@dataclass
class MemberPlan:
    """What `build` will do for one member."""

    member: MemberInfo
    plan_path: Path
    key: str
    inputs: dict
    action: str  # "skip" | "restore" | "build"
    reason: str
    cache_path: Path | None = None  # where the engine is (or will be) kept in --cache-dir

    def describe(self) -> str:
        where = f" from {self.cache_path}" if self.action == "restore" else ""
        return f"{self.member.name}: {self.action}{where} ({self.reason}) -> {self.plan_path}"


def resolve_profile(member: MemberInfo, min_batch: int | None, opt_batch: int | None,
                    max_batch: int | None) -> BatchProfile:
    """Defaults: min 1, max = the config's max_batch_size, opt = min(4, max). The profile must
    cover the config's max_batch_size, or Triton would send batches the engine cannot take."""
    mx = max_batch if max_batch is not None else max(member.max_batch_size, 1)
    mn = min_batch if min_batch is not None else 1
    op = opt_batch if opt_batch is not None else max(mn, min(4, mx))
    profile = BatchProfile(mn, op, mx)
    if member.max_batch_size > profile.max:
        raise ValueError(f"{member.name}: --max-batch {profile.max} < the config's max_batch_size "
                         f"{member.max_batch_size}")
    return profile


def plan_member(member: MemberInfo, env: BuildEnvironment, options: BuildOptions,
                cache_dir: Path | None = None, force: bool = False) -> MemberPlan:
    """Decide skip / restore-from-cache / build for one member (reads files, builds nothing)."""
    onnx_sha = sha256_file(member.onnx_path)
    inputs = key_inputs(onnx_sha, env, options, member.input_name, member.input_dims)
    key = cache_key(onnx_sha, env, options, member.input_name, member.input_dims)
    plan_path = member.version_dir / engine_filename(env.compute_capability)
    cache_path = Path(cache_dir) / f"{key}.plan" if cache_dir else None
    up_to_date, reason = engine_status(plan_path, key, inputs)
    if force:
        return MemberPlan(member, plan_path, key, inputs, "build", "forced", cache_path)
    if up_to_date:
        return MemberPlan(member, plan_path, key, inputs, "skip", reason, cache_path)
    if cache_path is not None and engine_status(cache_path, key)[0]:
        return MemberPlan(member, plan_path, key, inputs, "restore", reason, cache_path)
    return MemberPlan(member, plan_path, key, inputs, "build", reason, cache_path)


def default_timing_cache(cache_dir: Path | None, env: BuildEnvironment) -> Path | None:
    """One timing cache per TensorRT version and compute capability (they are not portable)."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"timing-trt{normalize_trt_version(env.trt_version)}-sm{cc_tag(env.compute_capability)}.cache"


def parse_libnvinfer_version(names: list[str]) -> str | None:
    """'libnvinfer.so.10.8.0' among file names -> '10.8.0' (the highest such version)."""
    found = []
    for name in names:
        m = re.fullmatch(r"libnvinfer\.so\.(\d+)\.(\d+)\.(\d+)(?:\.\d+)?", Path(name).name)
        if m:
            found.append(tuple(int(x) for x in m.groups()))
    return ".".join(map(str, max(found))) if found else None


# ============================================================================================
# GPU side: runs only inside the serving container (TensorRT + a GPU). Not executed in tests.
# ============================================================================================


def system_tensorrt_version() -> str | None:
    """The libnvinfer version in the container's library folders (what Triton's backend links)."""
    dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib",
            *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep))]
    names = []
    for d in dirs:
        try:
            names += [p.name for p in Path(d).glob("libnvinfer.so.*")]
        except OSError:
            continue
    return parse_libnvinfer_version(names)


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_FALLBACKS if os.access(p, os.X_OK)), None)


def detect_gpu(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability) via nvidia-smi, else torch, else cuda-python."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-i", str(device), "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
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
        cudart = _import_cudart()
        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    raise BuilderUnavailable("cannot find the GPU: no nvidia-smi, torch or cuda-python here "
                            "(run inside the serving container with a GPU, or pass --gpu-name/--compute-capability)")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class PythonTensorRTBuilder:
    """The TensorRT Python builder API (`import tensorrt`)."""

    name = "tensorrt-python"

    def __init__(self, trt_module):
        self.trt = trt_module
        self.version = str(trt_module.__version__)

    def build(self, member: MemberInfo, options: BuildOptions, out: Path, timing_cache: Path | None,
              log: Callable[[str], None]) -> None:
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
        _atomic_write_bytes(out, bytes(memoryview(serialized)))
        if timing_cache is not None:
            _atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))


class TrtexecBuilder:
    """`trtexec` on PATH (or in /usr/src/tensorrt/bin)."""

    name = "trtexec"

    def __init__(self, path: str):
        self.path = path
        self.version = self._version()

    def _version(self) -> str:
        out = subprocess.run([self.path, "--help"], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"TensorRT v(\d+)", out)  # banner: "[TensorRT v100800]" = 10.8.0
        if not m:
            raise BuilderUnavailable(f"cannot read the TensorRT version from `{self.path} --help`")
        v = int(m.group(1))
        return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"

    def build(self, member: MemberInfo, options: BuildOptions, out: Path, timing_cache: Path | None,
              log: Callable[[str], None]) -> None:
        tmp = out.with_name(f".{out.name}.trtexec.tmp")
        cmd = trtexec_command(self.path, member.onnx_path, tmp, options, member.input_dims, member.input_name,
                              timing_cache)
        log("  $ " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise EngineBuildError(f"{member.name}: trtexec failed ({proc.returncode}):\n{tail}")
        os.replace(tmp, out)


def select_builder(prefer: str = "auto"):
    """The TensorRT Python API if importable, else trtexec, else a clear error."""
    if prefer in ("auto", "python"):
        try:
            import tensorrt  # noqa: PLC0415 - lazy: only inside the serving container

            return PythonTensorRTBuilder(tensorrt)
        except ImportError:
            if prefer == "python":
                raise BuilderUnavailable("the TensorRT Python package is not installed "
                                        "(pip install tensorrt-cu12==<the container's TensorRT version>)") from None
    if prefer in ("auto", "trtexec"):
        path = find_trtexec()
        if path:
            return TrtexecBuilder(path)
    raise BuilderUnavailable(
        "no TensorRT builder here: neither `import tensorrt` nor `trtexec` works. Engines must be built "
        "inside the serving Triton container (see docker/README.md); `python -m fracscan.export.tensorrt plan` "
        "shows what would be built on any machine")


# -------------------------------------------------------------- verification against ORT


@dataclass
class VerifyResult:
    backend: str  # which CUDA array library ran the engine
    batches: list[int]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # output name -> max |TRT - ORT|

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def _run_with_torch(trt, plan: bytes, feeds: list, input_name: str):
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        raise ImportError("torch has no CUDA here")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    results = []
    stream = torch.cuda.Stream()
    for x in feeds:
        x_dev = torch.from_numpy(x).cuda()
        context.set_input_shape(input_name, tuple(x.shape))
        context.set_tensor_address(input_name, x_dev.data_ptr())
        bufs = {}
        for n in outputs:
            np_dtype = trt.nptype(engine.get_tensor_dtype(n))
            torch_dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
            bufs[n] = torch.empty(tuple(context.get_tensor_shape(n)), dtype=torch_dtype, device="cuda")
            context.set_tensor_address(n, bufs[n].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("execute_async_v3 failed")
        stream.synchronize()
        results.append({n: b.cpu().numpy() for n, b in bufs.items()})
    return results


def _run_with_polygraphy(trt, plan: bytes, feeds: list, input_name: str):
    import numpy as np
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    results = []
    with TrtRunner(EngineFromBytes(plan)) as runner:
        for x in feeds:
            out = runner.infer(feed_dict={input_name: x})
            results.append({n: np.array(v) for n, v in out.items()})  # copy: buffers are reused
    return results


def _run_with_cuda_python(trt, plan: bytes, feeds: list, input_name: str):
    import numpy as np

    cudart = _import_cudart()

    def ok(ret):
        err, *rest = ret if isinstance(ret, tuple) else (ret,)
        if int(err) != 0:
            raise EngineBuildError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    stream = ok(cudart.cudaStreamCreate())
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    results = []
    try:
        for x in feeds:
            x = np.ascontiguousarray(x)
            allocations = []
            try:
                d_in = ok(cudart.cudaMalloc(x.nbytes))
                allocations.append(d_in)
                ok(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, h2d))
                context.set_input_shape(input_name, tuple(x.shape))
                context.set_tensor_address(input_name, int(d_in))
                host = {}
                for n in outputs:
                    host[n] = np.empty(tuple(context.get_tensor_shape(n)), trt.nptype(engine.get_tensor_dtype(n)))
                    d_out = ok(cudart.cudaMalloc(max(host[n].nbytes, 1)))
                    allocations.append(d_out)
                    context.set_tensor_address(n, int(d_out))
                if not context.execute_async_v3(int(stream)):
                    raise EngineBuildError("execute_async_v3 failed")
                ok(cudart.cudaStreamSynchronize(stream))
                for n, d_out in zip(outputs, allocations[1:], strict=True):
                    ok(cudart.cudaMemcpy(host[n].ctypes.data, d_out, host[n].nbytes, d2h))
                results.append(host)
            finally:
                for a in allocations:
                    cudart.cudaFree(a)
    finally:
        cudart.cudaStreamDestroy(stream)
    return results


_RUNNERS = (("torch", _run_with_torch), ("polygraphy", _run_with_polygraphy), ("cuda-python", _run_with_cuda_python))


def verification_inputs(input_dims: tuple[int, ...], batches: list[int], seed: int = 0) -> list:
    """Random inputs in [-1, 1] (the range of pre-processed radiographs), one per batch size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (b, *input_dims)).astype(np.float32) for b in batches]


def verify_engine(plan_path: Path, member: MemberInfo, profile: BatchProfile, seed: int = 0) -> VerifyResult:
    """Run the engine and ONNX Runtime (CPU) on a few random inputs; max |difference| per output.

    Needs the TensorRT runtime and a CUDA array library: torch (with CUDA), else polygraphy,
    else cuda-python - the first one importable. The result names which one ran.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        import tensorrt as trt  # noqa: PLC0415 - the runtime, only inside the serving container
    except ImportError:
        raise BuilderUnavailable("verification needs the TensorRT Python runtime (pip install "
                                 "tensorrt-cu12==<the container's TensorRT version>), or pass --no-verify") from None

    batches = sorted({profile.min, profile.opt, profile.max})
    feeds = verification_inputs(member.input_dims, batches, seed)
    plan = Path(plan_path).read_bytes()
    got, backend, failures = None, None, []
    for name, run in _RUNNERS:
        try:
            got = run(trt, plan, feeds, member.input_name)
            backend = name
            break
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    if got is None:
        raise BuilderUnavailable("cannot run the engine for verification: no CUDA array library "
                                f"({'; '.join(failures)}); install polygraphy or cuda-python, or pass --no-verify")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(member.onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    result = VerifyResult(backend=backend, batches=batches)
    for x, trt_out in zip(feeds, got, strict=True):
        for name, ref in zip(names, session.run(names, {member.input_name: x}), strict=True):
            if name not in trt_out:
                raise EngineBuildError(f"{member.name}: engine has no output {name!r} (has {sorted(trt_out)})")
            out = np.asarray(trt_out[name], dtype=np.float32).reshape(ref.shape)
            diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            result.max_abs_diff[name] = max(result.max_abs_diff.get(name, 0.0), diff)
    return result


# ------------------------------------------------------------------------------ build driver


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_repository_engines(
    repository: Path,
    env: BuildEnvironment,
    builder,
    options_for: Callable[[MemberInfo], BuildOptions],
    cache_dir: Path | None = None,
    timing_cache: Path | None = None,
    verify: bool = True,
    max_abs_diff: float | None = None,
    force: bool = False,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[MemberPlan]:
    """Build (or skip, or restore from the cache) every tensorrt member's engine."""
    members = tensorrt_members(repository, only)
    if not members:
        log(f"no tensorrt_plan members in {repository}: nothing to build")
        return []
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    timing_cache = timing_cache or default_timing_cache(cache_dir, env)
    done, failures = [], []
    for member in members:
        try:
            done.append(_build_member(member, env, builder, options_for(member), cache_dir, timing_cache,
                                      verify, max_abs_diff, force, log))
        except EngineBuildError as exc:
            log(f"  FAILED: {exc}")
            failures.append(str(exc))
    if failures:
        raise EngineBuildError(f"{len(failures)} of {len(members)} engine(s) failed:\n" + "\n".join(failures))
    return done


def _build_member(member: MemberInfo, env: BuildEnvironment, builder, options: BuildOptions,
                  cache_dir: Path | None, timing_cache: Path | None, verify: bool, max_abs_diff: float | None,
                  force: bool, log: Callable[[str], None]) -> MemberPlan:
    step = plan_member(member, env, options, cache_dir, force)
    log(step.describe())
    if step.action == "restore":
        _atomic_copy(step.cache_path, step.plan_path)
        _atomic_copy(sidecar_path(step.cache_path), sidecar_path(step.plan_path))
    elif step.action == "build":
        tmp = step.plan_path.with_name(f".{step.plan_path.name}.building")
        started = time.monotonic()
        try:
            try:
                builder.build(member, options, tmp, timing_cache, log)
            except (EngineBuildError, BuilderUnavailable):
                raise
            except Exception as exc:  # noqa: BLE001 - TensorRT raises plain RuntimeError/TypeError
                raise EngineBuildError(f"{member.name}: {builder.name} failed: {type(exc).__name__}: {exc}") from exc
            seconds = time.monotonic() - started
            record = {"key": step.key, **step.inputs, "tensorrt_full": builder.version, "builder": builder.name,
                      "built_at": _now(), "build_seconds": round(seconds, 1)}
            log(f"  built with {builder.name} (TensorRT {builder.version}) in {seconds:.1f} s")
            if verify:
                try:
                    result = verify_engine(tmp, member, options.profile)
                except (EngineBuildError, BuilderUnavailable):
                    raise
                except Exception as exc:  # noqa: BLE001 - CUDA/TensorRT runtime errors
                    raise EngineBuildError(f"{member.name}: verification failed: {type(exc).__name__}: {exc}") from exc
                limit = max_abs_diff if max_abs_diff is not None else DEFAULT_MAX_ABS_DIFF[options.precision]
                diffs = ", ".join(f"{n} {d:.3g}" for n, d in result.max_abs_diff.items())
                log(f"  verify ({result.backend} + TensorRT runtime vs ONNX Runtime CPU, batches {result.batches}): "
                    f"max |diff| {diffs} (limit {limit:g})")
                record["verify"] = {"backend": result.backend, "batches": result.batches,
                                    "max_abs_diff": result.max_abs_diff, "limit": limit}
                if not result.worst <= limit:
                    raise EngineBuildError(f"{member.name}: engine differs from ONNX Runtime by {result.worst:.3g} "
                                           f"> {limit:g}; not installed (use --precision fp32 or --max-abs-diff)")
            else:
                log("  verify: skipped (--no-verify)")
            os.replace(tmp, step.plan_path)
        finally:
            tmp.unlink(missing_ok=True)
        write_sidecar(step.plan_path, record)
        if step.cache_path is not None:
            _atomic_copy(step.plan_path, step.cache_path)
            _atomic_copy(sidecar_path(step.plan_path), sidecar_path(step.cache_path))
    if ensure_cc_mapping(member.folder, env.compute_capability):
        log(f"  added cc_model_filenames {{\"{env.compute_capability}\": \"{engine_filename(env.compute_capability)}\"}}"
            f" to {member.folder / 'config.pbtxt'}")
    return step


# ------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fracscan.export.tensorrt",
                                description="Build TensorRT engines for the tensorrt members of a fracscan repository.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, detect_help: str):
        sp.add_argument("--repository", type=Path, required=True, help="Triton model repository (fracscan export -o DIR)")
        sp.add_argument("--precision", choices=PRECISIONS, default="fp16")
        sp.add_argument("--min-batch", type=int, default=None, help="profile minimum batch (default 1)")
        sp.add_argument("--opt-batch", type=int, default=None, help="profile optimum batch (default min(4, max))")
        sp.add_argument("--max-batch", type=int, default=None, help="profile maximum batch (default: config max_batch_size)")
        sp.add_argument("--timing-cache", type=Path, default=None,
                        help="timing cache file (default: CACHE_DIR/timing-trt<ver>-sm<cc>.cache)")
        sp.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder, e.g. a volume")
        sp.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace (MiB)")
        sp.add_argument("--members", default=None, help="comma-separated member names (default: all)")
        sp.add_argument("--force", action="store_true", help="rebuild even when an up-to-date engine exists")
        sp.add_argument("--builder", choices=("auto", "python", "trtexec"), default="auto")
        sp.add_argument("--device", type=int, default=0, help="GPU index for detection")
        sp.add_argument("--gpu-name", default=None, help=detect_help)
        sp.add_argument("--compute-capability", default=None, help="e.g. 9.0 (" + detect_help + ")")

    b = sub.add_parser("build", help="build missing/stale engines (inside the serving container)")
    common(b, "override the detected GPU")
    b.add_argument("--no-verify", action="store_true", help="skip the check against ONNX Runtime")
    b.add_argument("--max-abs-diff", type=float, default=None,
                   help=f"verification limit (default per precision: {DEFAULT_MAX_ABS_DIFF})")
    b.add_argument("--allow-version-mismatch", action="store_true",
                   help="build even if the builder's TensorRT differs from the container's libnvinfer")

    pl = sub.add_parser("plan", help="show what build would do, and the trtexec commands (any machine)")
    common(pl, "GPU to plan for (default: detect)")
    pl.add_argument("--trt-version", default=None, help="TensorRT version to plan for (default: detect)")
    pl.add_argument("--trtexec", default="trtexec", help="trtexec path shown in the commands")

    c = sub.add_parser("check", help="check every tensorrt member's model.onnx for a TensorRT build")
    c.add_argument("--repository", type=Path, required=True)
    return p


def _environment(args, trt_version: str | None) -> BuildEnvironment:
    if args.gpu_name and args.compute_capability:
        name, cc = args.gpu_name, args.compute_capability
    else:
        name, cc = detect_gpu(args.device)
        name, cc = args.gpu_name or name, args.compute_capability or cc
    if trt_version is None:
        raise BuilderUnavailable("unknown TensorRT version (pass --trt-version)")
    return BuildEnvironment(trt_version, name, cc)


def _options_for(args) -> Callable[[MemberInfo], BuildOptions]:
    def options(member: MemberInfo) -> BuildOptions:
        profile = resolve_profile(member, args.min_batch, args.opt_batch, args.max_batch)
        return BuildOptions(args.precision, profile, args.workspace_mib)

    return options


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    only = [m.strip() for m in args.members.split(",") if m.strip()] if getattr(args, "members", None) else None
    try:
        if args.command == "check":
            from fracscan.export.onnx_check import check_onnx_for_tensorrt

            bad = 0
            for member in tensorrt_members(args.repository):
                report = check_onnx_for_tensorrt(member.onnx_path, expected_inputs={member.input_name: list(member.input_dims)})
                log(f"{member.name}: " + report.summary())
                bad += not report.ok
            return 1 if bad else 0
        if args.command == "plan":
            trt_version = args.trt_version
            if trt_version is None:
                trt_version = select_builder(args.builder).version
            env = _environment(args, trt_version)
            log(f"plan for TensorRT {env.trt_version} on {env.gpu_name} (sm{cc_tag(env.compute_capability)}), "
                f"precision {args.precision}")
            options_for = _options_for(args)
            timing = args.timing_cache or default_timing_cache(args.cache_dir, env)
            for member in tensorrt_members(args.repository, only):
                options = options_for(member)
                step = plan_member(member, env, options, args.cache_dir, args.force)
                log(step.describe())
                if step.action == "build":
                    cmd = trtexec_command(args.trtexec, member.onnx_path, step.plan_path, options, member.input_dims,
                                          member.input_name, timing)
                    log("  $ " + " ".join(cmd))
            return 0
        # build
        builder = select_builder(args.builder)
        system = system_tensorrt_version()
        if system and system != normalize_trt_version(builder.version):
            msg = (f"the builder is TensorRT {builder.version} but the container's libnvinfer is {system}: "
                   "Triton's TensorRT backend would refuse these engines")
            if not args.allow_version_mismatch:
                raise BuilderUnavailable(msg + " (install the matching tensorrt package, or --allow-version-mismatch)")
            log("warning: " + msg)
        env = _environment(args, builder.version)
        log(f"building for TensorRT {builder.version} ({builder.name}) on {env.gpu_name} "
            f"(sm{cc_tag(env.compute_capability)}), precision {args.precision}")
        build_repository_engines(args.repository, env, builder, _options_for(args), args.cache_dir,
                                 args.timing_cache, verify=not args.no_verify, max_abs_diff=args.max_abs_diff,
                                 force=args.force, only=only, log=log)
        return 0
    except BuilderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EngineBuildError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
