"""What an engine depends on, its cache key, and the sidecar that records it: the skip/rebuild decision.

A member is up to date exactly when its sidecar (`model.sm<cc>.plan.json`) holds the same cache key -
sha256 over the ONNX bytes, the TensorRT version, the GPU name and compute capability, the precision
and the profile - and the plan's own sha256 (so a truncated or swapped plan rebuilds). Engines with
that key in `--cache-dir` (a volume) are copied instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracscan.atomic import atomic_write_bytes
from fracscan.export.tensorrt.config import INPUT_NAME, cc_tag

PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "fp32")
KEY_SCHEMA = 1  # bump when the meaning of the key (or of an engine) changes


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

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
        cc_tag(self.compute_capability)  # validates
        normalize_trt_version(self.trt_version)


@dataclass(frozen=True)
class BuildOptions:
    """How to build: precision, batch profile and builder scratch memory."""

    precision: str = "fp16"
    profile: BatchProfile = field(default_factory=BatchProfile)
    workspace_mib: int = 4096  # builder scratch memory; not part of the key (does not change results)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def key_inputs(
    onnx_sha256: str,
    env: BuildEnvironment,
    options: BuildOptions,
    input_name: str,
    input_dims: list[int] | tuple[int, ...],
) -> dict[str, Any]:
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


def cache_key(
    onnx_sha256: str,
    env: BuildEnvironment,
    options: BuildOptions,
    input_name: str = INPUT_NAME,
    input_dims: list[int] | tuple[int, ...] = (2, 1024, 1024),
) -> str:
    """sha256 over the ONNX hash + TensorRT version + GPU name/cc + precision + profile."""
    blob = json.dumps(
        key_inputs(onnx_sha256, env, options, input_name, input_dims), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def default_timing_cache(cache_dir: Path | None, env: BuildEnvironment) -> Path | None:
    """One timing cache per TensorRT version and compute capability (they are not portable)."""
    if cache_dir is None:
        return None
    version, tag = normalize_trt_version(env.trt_version), cc_tag(env.compute_capability)
    return Path(cache_dir) / f"timing-trt{version}-sm{tag}.cache"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read in chunks (engines and ONNX files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(plan: Path) -> Path:
    """'model.sm90.plan' -> 'model.sm90.plan.json' (same folder)."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def read_sidecar(plan: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(plan).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(plan: Path, record: dict[str, Any]) -> Path:
    """Write the sidecar for an engine that is already in place (records its sha256 and size)."""
    plan = Path(plan)
    data = dict(record)
    data["plan_sha256"] = sha256_file(plan)
    data["plan_bytes"] = plan.stat().st_size
    atomic_write_bytes(sidecar_path(plan), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return sidecar_path(plan)


def engine_status(plan: Path, key: str, inputs: dict[str, Any] | None = None) -> tuple[bool, str]:
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
