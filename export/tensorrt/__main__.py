"""`python -m fracscan.export.tensorrt build|plan|check`: the engine build's command line.

`build` runs inside the serving container (docker/entrypoint.sh, before `tritonserver`); `plan` shows
what `build` would do and the equivalent trtexec commands on any machine (TensorRT version and GPU as
options); `check` runs `fracscan.export.onnx_check` on every tensorrt member. Exit codes: 0 done,
1 a build / check / input error, 2 no TensorRT builder, runtime or GPU here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fracscan.export.tensorrt.build import build_repository_engines, plan_member, resolve_profile
from fracscan.export.tensorrt.builders import detect_gpu, select_builder, system_tensorrt_version, trtexec_command
from fracscan.export.tensorrt.cache import (
    PRECISIONS,
    BuildEnvironment,
    BuildOptions,
    default_timing_cache,
    normalize_trt_version,
)
from fracscan.export.tensorrt.config import MemberInfo, cc_tag, tensorrt_members
from fracscan.export.tensorrt.errors import BuilderUnavailable, EngineBuildError
from fracscan.export.tensorrt.verify import DEFAULT_MAX_ABS_DIFF


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fracscan.export.tensorrt",
        description="Build TensorRT engines for the tensorrt members of a fracscan repository.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, detect_help: str) -> None:
        sp.add_argument(
            "--repository", type=Path, required=True, help="Triton model repository (fracscan export -o DIR)"
        )
        sp.add_argument("--precision", choices=PRECISIONS, default="fp16")
        sp.add_argument("--min-batch", type=int, default=None, help="profile minimum batch (default 1)")
        sp.add_argument("--opt-batch", type=int, default=None, help="profile optimum batch (default min(4, max))")
        sp.add_argument(
            "--max-batch", type=int, default=None, help="profile maximum batch (default: config max_batch_size)"
        )
        sp.add_argument(
            "--timing-cache",
            type=Path,
            default=None,
            help="timing cache file (default: CACHE_DIR/timing-trt<ver>-sm<cc>.cache)",
        )
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
    b.add_argument(
        "--max-abs-diff",
        type=float,
        default=None,
        help=f"verification limit (default per precision: {DEFAULT_MAX_ABS_DIFF})",
    )
    b.add_argument(
        "--allow-version-mismatch",
        action="store_true",
        help="build even if the builder's TensorRT differs from the container's libnvinfer",
    )

    pl = sub.add_parser("plan", help="show what build would do, and the trtexec commands (any machine)")
    common(pl, "GPU to plan for (default: detect)")
    pl.add_argument("--trt-version", default=None, help="TensorRT version to plan for (default: detect)")
    pl.add_argument("--trtexec", default="trtexec", help="trtexec path shown in the commands")

    c = sub.add_parser("check", help="check every tensorrt member's model.onnx for a TensorRT build")
    c.add_argument("--repository", type=Path, required=True)
    return p


def _environment(args: argparse.Namespace, trt_version: str | None) -> BuildEnvironment:
    if args.gpu_name and args.compute_capability:
        name, cc = args.gpu_name, args.compute_capability
    else:
        name, cc = detect_gpu(args.device)
        name, cc = args.gpu_name or name, args.compute_capability or cc
    if trt_version is None:
        raise BuilderUnavailable("unknown TensorRT version (pass --trt-version)")
    return BuildEnvironment(trt_version, name, cc)


def _options_for(args: argparse.Namespace) -> Callable[[MemberInfo], BuildOptions]:
    def options(member: MemberInfo) -> BuildOptions:
        profile = resolve_profile(member, args.min_batch, args.opt_batch, args.max_batch)
        return BuildOptions(member.precision or args.precision, profile, args.workspace_mib)  # normalize: fp32

    return options


def _log(msg: str) -> None:
    print(msg, flush=True)


def _check(args: argparse.Namespace) -> int:
    from fracscan.export.onnx_check import check_onnx_for_tensorrt

    bad = 0
    for member in tensorrt_members(args.repository):
        report = check_onnx_for_tensorrt(member.onnx_path, expected_inputs={member.input_name: list(member.input_dims)})
        _log(f"{member.name}: " + report.summary())
        bad += not report.ok
    return 1 if bad else 0


def _plan(args: argparse.Namespace, only: list[str] | None) -> int:
    trt_version = args.trt_version
    if trt_version is None:
        trt_version = select_builder(args.builder).version
    env = _environment(args, trt_version)
    _log(
        f"plan for TensorRT {env.trt_version} on {env.gpu_name} (sm{cc_tag(env.compute_capability)}), "
        f"precision {args.precision}"
    )
    options_for = _options_for(args)
    timing = args.timing_cache or default_timing_cache(args.cache_dir, env)
    for member in tensorrt_members(args.repository, only):
        options = options_for(member)
        step = plan_member(member, env, options, args.cache_dir, args.force)
        _log(step.describe())
        if step.action == "build":
            cmd = trtexec_command(
                args.trtexec, member.onnx_path, step.plan_path, options, member.input_dims, member.input_name, timing
            )
            _log("  $ " + " ".join(cmd))
    return 0


def _build(args: argparse.Namespace, only: list[str] | None) -> int:
    builder = select_builder(args.builder)
    system = system_tensorrt_version()
    if system and system != normalize_trt_version(builder.version):
        msg = (
            f"the builder is TensorRT {builder.version} but the container's libnvinfer is {system}: "
            "Triton's TensorRT backend would refuse these engines"
        )
        if not args.allow_version_mismatch:
            raise BuilderUnavailable(msg + " (install the matching tensorrt package, or --allow-version-mismatch)")
        _log("warning: " + msg)
    env = _environment(args, builder.version)
    _log(
        f"building for TensorRT {builder.version} ({builder.name}) on {env.gpu_name} "
        f"(sm{cc_tag(env.compute_capability)}), precision {args.precision}"
    )
    build_repository_engines(
        args.repository,
        env,
        builder,
        _options_for(args),
        args.cache_dir,
        args.timing_cache,
        verify=not args.no_verify,
        max_abs_diff=args.max_abs_diff,
        force=args.force,
        only=only,
        log=_log,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code (0 done, 1 failed, 2 no TensorRT here)."""
    args = _parser().parse_args(argv)
    only = [m.strip() for m in args.members.split(",") if m.strip()] if getattr(args, "members", None) else None
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "plan":
            return _plan(args, only)
        return _build(args, only)
    except BuilderUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EngineBuildError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
