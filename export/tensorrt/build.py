"""The build driver: for every tensorrt member, skip, restore from the cache, or build + verify + install.

For each member it decides (`plan_member`) from the sidecar and the cache; a build goes to a hidden
temporary file, is verified against ONNX Runtime, then renamed into `member_XX/1/model.sm<cc>.plan`
with its sidecar, copied into `--cache-dir`, and the compute capability is added to the config's
`cc_model_filenames` if missing. Every member is attempted; the failures are reported together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fracscan import contract
from fracscan.atomic import atomic_copy
from fracscan.export.tensorrt.builders import EngineBuilder
from fracscan.export.tensorrt.cache import (
    BatchProfile,
    BuildEnvironment,
    BuildOptions,
    cache_key,
    default_timing_cache,
    engine_status,
    key_inputs,
    sha256_file,
    sidecar_path,
    write_sidecar,
)
from fracscan.export.tensorrt.config import MemberInfo, engine_filename, ensure_cc_mapping, tensorrt_members
from fracscan.export.tensorrt.errors import BuilderUnavailable, EngineBuildError
from fracscan.export.tensorrt.verify import DEFAULT_MAX_ABS_DIFF, verify_engine


@dataclass
class MemberPlan:
    """What `build` will do for one member."""

    member: MemberInfo
    plan_path: Path
    key: str
    inputs: dict[str, Any]
    action: str  # "skip" | "restore" | "build"
    reason: str
    cache_path: Path | None = None  # where the engine is (or will be) kept in --cache-dir

    def describe(self) -> str:
        where = f" from {self.cache_path}" if self.action == "restore" else ""
        return f"{self.member.name}: {self.action}{where} ({self.reason}) -> {self.plan_path}"


def resolve_profile(
    member: MemberInfo, min_batch: int | None, opt_batch: int | None, max_batch: int | None
) -> BatchProfile:
    """Defaults: min 1, max = the config's max_batch_size, opt = min(4, max). The profile must
    cover the config's max_batch_size, or Triton would send batches the engine cannot take."""
    mx = max_batch if max_batch is not None else max(member.max_batch_size, 1)
    mn = min_batch if min_batch is not None else 1
    op = opt_batch if opt_batch is not None else max(mn, min(4, mx))
    profile = BatchProfile(mn, op, mx)
    if member.max_batch_size > profile.max:
        raise ValueError(
            f"{member.name}: --max-batch {profile.max} < the config's max_batch_size {member.max_batch_size}"
        )
    return profile


def plan_member(
    member: MemberInfo, env: BuildEnvironment, options: BuildOptions, cache_dir: Path | None = None, force: bool = False
) -> MemberPlan:
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_repository_engines(
    repository: Path,
    env: BuildEnvironment,
    builder: EngineBuilder,
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
            done.append(
                _build_member(
                    member, env, builder, options_for(member), cache_dir, timing_cache, verify, max_abs_diff, force, log
                )
            )
        except EngineBuildError as exc:
            log(f"  FAILED: {exc}")
            failures.append(str(exc))
    if failures:
        raise EngineBuildError(f"{len(failures)} of {len(members)} engine(s) failed:\n" + "\n".join(failures))
    return done


def _build_member(
    member: MemberInfo,
    env: BuildEnvironment,
    builder: EngineBuilder,
    options: BuildOptions,
    cache_dir: Path | None,
    timing_cache: Path | None,
    verify: bool,
    max_abs_diff: float | None,
    force: bool,
    log: Callable[[str], None],
) -> MemberPlan:
    step = plan_member(member, env, options, cache_dir, force)
    log(step.describe())
    if step.action == "restore" and step.cache_path is not None:  # restore is only chosen from the cache
        atomic_copy(step.cache_path, step.plan_path)
        atomic_copy(sidecar_path(step.cache_path), sidecar_path(step.plan_path))
    elif step.action == "build":
        record = _build_verified(step, member, builder, options, timing_cache, verify, max_abs_diff, log)
        write_sidecar(step.plan_path, record)
        if step.cache_path is not None:
            atomic_copy(step.plan_path, step.cache_path)
            atomic_copy(sidecar_path(step.plan_path), sidecar_path(step.cache_path))
    if ensure_cc_mapping(member.folder, env.compute_capability):
        mapping = f'{{"{env.compute_capability}": "{engine_filename(env.compute_capability)}"}}'
        log(f"  added cc_model_filenames {mapping} to {member.folder / contract.CONFIG_FILE}")
    return step


def _build_verified(
    step: MemberPlan,
    member: MemberInfo,
    builder: EngineBuilder,
    options: BuildOptions,
    timing_cache: Path | None,
    verify: bool,
    max_abs_diff: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Build into a hidden file, verify it, rename it into place; the sidecar record (without the hashes)."""
    tmp = step.plan_path.with_name(f".{step.plan_path.name}.building")
    started = time.monotonic()
    try:
        try:
            builder.build(member, options, tmp, timing_cache, log)
        except (EngineBuildError, BuilderUnavailable):
            raise
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError
            raise EngineBuildError(f"{member.name}: {builder.name} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - started
        record = {
            "key": step.key,
            **step.inputs,
            "tensorrt_full": builder.version,
            "builder": builder.name,
            "built_at": _now(),
            "build_seconds": round(seconds, 1),
        }
        log(f"  built with {builder.name} (TensorRT {builder.version}) in {seconds:.1f} s")
        if verify:
            try:
                result = verify_engine(tmp, member, options.profile)
            except (EngineBuildError, BuilderUnavailable):
                raise
            except Exception as exc:  # CUDA/TensorRT runtime errors
                raise EngineBuildError(f"{member.name}: verification failed: {type(exc).__name__}: {exc}") from exc
            limit = max_abs_diff if max_abs_diff is not None else DEFAULT_MAX_ABS_DIFF[options.precision]
            diffs = ", ".join(f"{n} {d:.3g}" for n, d in result.max_abs_diff.items())
            log(
                f"  verify ({result.backend} + TensorRT runtime vs ONNX Runtime CPU, batches {result.batches}): "
                f"max |diff| {diffs} (limit {limit:g})"
            )
            record["verify"] = {
                "backend": result.backend,
                "batches": result.batches,
                "max_abs_diff": result.max_abs_diff,
                "limit": limit,
            }
            if not result.worst <= limit:
                raise EngineBuildError(
                    f"{member.name}: engine differs from ONNX Runtime by {result.worst:.3g} "
                    f"> {limit:g}; not installed (use --precision fp32 or --max-abs-diff)"
                )
        else:
            log("  verify: skipped (--no-verify)")
        os.replace(tmp, step.plan_path)
    finally:
        tmp.unlink(missing_ok=True)
    return record
