"""The repository side of the tensorrt target: member config fields, engine file names, reading a repository.

`fracscan export --target tensorrt` writes the fields of `tensorrt_member_fields` into each member's
config.pbtxt, and those of `tensorrt_normalize_fields` into the `normalize` model's (an engine too,
built in FP32); the engine build reads them back (`tensorrt_members`: every `tensorrt_plan` model) and,
on a GPU whose compute capability the config does not list yet, adds it (`ensure_cc_mapping`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fracscan import contract
from fracscan.atomic import atomic_write_bytes
from fracscan.export.model_config import RepositoryOptions, parse_config
from fracscan.export.tensorrt.errors import EngineBuildError

if TYPE_CHECKING:
    from fracscan.spec import EnsembleSpec

INPUT_NAME = contract.MEMBER_INPUT
ONNX_FILE = contract.ONNX_FILE
DEFAULT_PLAN = "model.plan"  # Triton's fallback when the GPU's compute capability is not mapped
TRT_PLATFORM = "tensorrt_plan"
PRECISION_PARAMETER = "precision"  # a config parameter that overrides the build's --precision
NORMALIZE_PRECISION = "fp32"

_CC = re.compile(r"^(\d+)\.(\d+)$")


def cc_tag(compute_capability: str) -> str:
    """'9.0' -> '90', '8.6' -> '86', '12.0' -> '120' (the sm_XY naming)."""
    m = _CC.match(str(compute_capability).strip())
    if not m:
        raise ValueError(f"compute capability must look like '8.6', got {compute_capability!r}")
    return f"{int(m.group(1))}{int(m.group(2))}"


def engine_filename(compute_capability: str) -> str:
    """The plan file for one compute capability: 'model.sm90.plan'."""
    return f"model.sm{cc_tag(compute_capability)}.plan"


def tensorrt_member_fields(spec: EnsembleSpec, index: int, opt: RepositoryOptions) -> dict[str, Any]:
    """ModelConfig fields of a `tensorrt` member (used by repository.member_config).

    platform + GPU instance group + cc_model_filenames (one engine per compute capability,
    `model.plan` as Triton's fallback name) + model_warmup (a zero- or random-data `image`
    sample at batch 1 and at max_batch_size) + optional CUDA graphs for the preferred batch
    sizes and max_batch_size.
    """
    (image,) = contract.member_inputs(spec.preprocess.size, spec.preprocess.channels)
    return _plan_fields(INPUT_NAME, list(image.dims), opt)


def tensorrt_normalize_fields(spec: EnsembleSpec, opt: RepositoryOptions) -> dict[str, Any]:
    """ModelConfig fields of the `tensorrt` target's `normalize` model: a member's, on FRAME, built in FP32.

    LCN divides by a local standard deviation computed as E[x^2] - E[x]^2: in FP16 that difference
    loses most of its digits, so the config says `precision: fp32` and the engine build honours it
    whatever precision the members are built in (`MemberInfo.precision`).
    """
    (frame,) = contract.normalize_inputs(spec.preprocess.size)
    fields = _plan_fields(frame.name, list(frame.dims), opt)
    fields["parameters"] = {PRECISION_PARAMETER: mc.ModelParameter(string_value=NORMALIZE_PRECISION)}
    return fields


def _plan_fields(input_name: str, dims: list[int], opt: RepositoryOptions) -> dict[str, Any]:
    fields: dict[str, Any] = {
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
            warmups.append(
                mc.ModelWarmup(name=f"{opt.warmup}_batch{batch}", batch_size=batch, inputs={input_name: sample})
            )
        fields["model_warmup"] = warmups
    if opt.cuda_graphs:
        batches = sorted({b for b in opt.preferred_batch_sizes if b <= opt.max_batch_size} | {1, opt.max_batch_size})
        graphs = [
            mc.ModelOptimizationPolicy.Cuda.GraphSpec(
                batch_size=b, input={input_name: mc.ModelOptimizationPolicy.Cuda.GraphSpec.Shape(dim=dims)}
            )
            for b in batches
        ]
        fields["optimization"] = mc.ModelOptimizationPolicy(
            cuda=mc.ModelOptimizationPolicy.Cuda(graphs=True, graph_spec=graphs)
        )
    return fields


@dataclass(frozen=True)
class MemberInfo:
    """One tensorrt member as its config.pbtxt and version folder describe it."""

    name: str
    folder: Path  # repository/member_XX
    onnx_path: Path  # repository/member_XX/1/model.onnx
    input_name: str
    input_dims: tuple[int, ...]  # non-batch dims from config.pbtxt
    max_batch_size: int
    precision: str | None = None  # the config's `precision` parameter: overrides the build's (normalize: fp32)

    @property
    def version_dir(self) -> Path:
        return self.onnx_path.parent


def _read_config(path: Path) -> mc.ModelConfig:
    """`model_config.parse_config` on a file, with the file named in the error."""
    try:
        return parse_config(path.read_text())
    except (OSError, text_format.ParseError) as exc:
        raise EngineBuildError(f"{path}: cannot read the model config: {exc}") from None


def tensorrt_members(repository: Path, only: list[str] | None = None) -> list[MemberInfo]:
    """The repository's models whose config says `platform: "tensorrt_plan"`, sorted by name."""
    repository = Path(repository)
    if not repository.is_dir():
        raise EngineBuildError(f"repository {repository} does not exist")
    members = []
    for cfg_path in sorted(repository.glob(f"*/{contract.CONFIG_FILE}")):
        cfg = _read_config(cfg_path)
        if cfg.platform != TRT_PLATFORM or (only and cfg.name not in only and cfg_path.parent.name not in only):
            continue
        inputs = list(cfg.input)
        if len(inputs) != 1:
            raise EngineBuildError(f"{cfg_path}: a member takes exactly one input, found {len(inputs)}")
        versions = sorted(
            (p for p in cfg_path.parent.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        if not versions:
            raise EngineBuildError(f"{cfg_path.parent}: no version folder (expected 1/)")
        onnx_path = versions[-1] / ONNX_FILE
        if not onnx_path.is_file():
            raise EngineBuildError(f"{cfg_path.parent.name}: {onnx_path} not found (the engine is built from it)")
        members.append(
            MemberInfo(
                cfg.name or cfg_path.parent.name,
                cfg_path.parent,
                onnx_path,
                inputs[0].name,
                tuple(int(d) for d in inputs[0].dims),
                int(cfg.max_batch_size),
                _precision(cfg),
            )
        )
    if only:
        missing = set(only) - {m.name for m in members} - {m.folder.name for m in members}
        if missing:
            raise EngineBuildError(f"no tensorrt member(s) named {sorted(missing)} in {repository}")
    return members


def _precision(cfg: mc.ModelConfig) -> str | None:
    return (cfg.parameters[PRECISION_PARAMETER].string_value if PRECISION_PARAMETER in cfg.parameters else "") or None


def ensure_cc_mapping(member_folder: Path, compute_capability: str) -> bool:
    """Add '<cc>': 'model.sm<cc>.plan' to the config's cc_model_filenames if it is missing.

    Returns True when config.pbtxt was rewritten. Without the entry Triton would look for the
    fallback `model.plan` on a GPU of this compute capability.
    """
    path = Path(member_folder) / contract.CONFIG_FILE
    cfg = _read_config(path)
    want = engine_filename(compute_capability)
    if cfg.cc_model_filenames.get(compute_capability) == want:
        return False
    cfg.cc_model_filenames[compute_capability] = want
    atomic_write_bytes(path, text_format.MessageToString(cfg).encode())
    return True
