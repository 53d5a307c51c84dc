"""The `tensorrt` target: member configs for `platform: "tensorrt_plan"` and the engine build.

One file a job; everything but `builders.py` and `verify.py` runs (and is tested) on any machine,
with versions and GPUs as plain arguments:

    config.py     the repository side: the config fields `fracscan export --target tensorrt` writes
                  (`tensorrt_member_fields`), engine file names per compute capability, reading the
                  tensorrt members of a generated repository, adding a compute capability to a config
    cache.py      what an engine depends on (`BuildEnvironment`, `BuildOptions`, `BatchProfile`),
                  the cache key, the sidecar JSON and the up-to-date decision (`engine_status`)
    builders.py   GPU side: GPU detection, TensorRT version discovery, the TensorRT Python builder
                  API and `trtexec` (imported lazily), and the equivalent trtexec command line
    verify.py     GPU side: the engine against ONNX Runtime, with torch, polygraphy or cuda-python as
                  the CUDA array library - whichever is installed; every line names which one ran
    build.py      the build driver: skip / restore from the cache / build + verify + install, per member
    __main__.py   the command line: `python -m fracscan.export.tensorrt build|plan|check`
    atomic.py, errors.py   atomic file writes; `EngineBuildError` and `BuilderUnavailable`

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

from fracscan.export.tensorrt.build import MemberPlan, build_repository_engines, plan_member, resolve_profile
from fracscan.export.tensorrt.builders import (
    EngineBuilder,
    PythonTensorRTBuilder,
    TrtexecBuilder,
    detect_gpu,
    find_trtexec,
    parse_libnvinfer_version,
    select_builder,
    system_tensorrt_version,
    trtexec_command,
)
from fracscan.export.tensorrt.cache import (
    KEY_SCHEMA,
    PRECISIONS,
    BatchProfile,
    BuildEnvironment,
    BuildOptions,
    cache_key,
    default_timing_cache,
    engine_status,
    key_inputs,
    normalize_trt_version,
    read_sidecar,
    sha256_file,
    sidecar_path,
    write_sidecar,
)
from fracscan.export.tensorrt.config import (
    DEFAULT_PLAN,
    INPUT_NAME,
    ONNX_FILE,
    TRT_PLATFORM,
    MemberInfo,
    cc_tag,
    engine_filename,
    ensure_cc_mapping,
    tensorrt_member_fields,
    tensorrt_members,
)
from fracscan.export.tensorrt.errors import BuilderUnavailable, EngineBuildError
from fracscan.export.tensorrt.verify import DEFAULT_MAX_ABS_DIFF, VerifyResult, verification_inputs, verify_engine

__all__ = [
    "DEFAULT_MAX_ABS_DIFF",
    "DEFAULT_PLAN",
    "INPUT_NAME",
    "KEY_SCHEMA",
    "ONNX_FILE",
    "PRECISIONS",
    "TRT_PLATFORM",
    "BatchProfile",
    "BuildEnvironment",
    "BuildOptions",
    "BuilderUnavailable",
    "EngineBuildError",
    "EngineBuilder",
    "MemberInfo",
    "MemberPlan",
    "PythonTensorRTBuilder",
    "TrtexecBuilder",
    "VerifyResult",
    "build_repository_engines",
    "cache_key",
    "cc_tag",
    "default_timing_cache",
    "detect_gpu",
    "engine_filename",
    "engine_status",
    "ensure_cc_mapping",
    "find_trtexec",
    "key_inputs",
    "normalize_trt_version",
    "parse_libnvinfer_version",
    "plan_member",
    "read_sidecar",
    "resolve_profile",
    "select_builder",
    "sha256_file",
    "sidecar_path",
    "system_tensorrt_version",
    "tensorrt_member_fields",
    "tensorrt_members",
    "trtexec_command",
    "verification_inputs",
    "verify_engine",
    "write_sidecar",
]
