"""Generate a Triton model repository from an ensemble spec.

Every config.pbtxt is built as Triton's own `ModelConfig` protobuf (shipped in tritonclient)
and printed with protobuf's text format, so it parses by construction. Only the member
models differ between targets; preprocess, average, threshold and the `fracscan` ensemble
are identical everywhere.

    repository/
      fracscan.toml         the spec (the python models read it)
      thresholds.json       per-region operating points (the threshold model reads it)
      fracscan/             platform "ensemble"
      preprocess/ average/ threshold/      python backend, one-line model.py adapters
      member_00/ ... member_NN/            target-specific (cpu: python + onnxruntime;
                                           onnxruntime: onnxruntime backend; tensorrt: plans)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fracscan.pipeline import SPEC_FILE, THRESHOLDS_FILE
from fracscan.postprocess import OperatingPoint, Thresholds
from fracscan.spec import EnsembleSpec, save_spec

Target = Literal["cpu", "onnxruntime", "tensorrt"]
TARGETS: tuple[str, ...] = ("cpu", "onnxruntime", "tensorrt")
ENSEMBLE_NAME = "fracscan"

FP32, BOOL, STRING = mc.DataType.TYPE_FP32, mc.DataType.TYPE_BOOL, mc.DataType.TYPE_STRING

_ADAPTER = "from fracscan.triton_models import {cls} as TritonPythonModel  # noqa: F401\n"


@dataclass(frozen=True)
class RepositoryOptions:
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    preprocess_instances: int = 2  # decoding + LCN is the CPU-heavy python step
    member_instances: int = 1
    gpu_instances: int = 1  # tensorrt / onnxruntime-on-GPU members
    # tensorrt target only (fracscan.export.tensorrt): one engine file per compute capability,
    # a model_warmup sample of `image` ("zero", "random" or "none"), optional CUDA graphs
    trt_compute_capabilities: tuple[str, ...] = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")
    warmup: str = "zero"
    cuda_graphs: bool = False


def _tensor(name: str, dtype: int, dims: list[int], optional: bool = False) -> dict:
    return {"name": name, "data_type": dtype, "dims": dims, "optional": optional}


def _config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int, **extra) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch_size, **extra)
    for t in inputs:
        cfg.input.add(**{k: v for k, v in t.items() if k != "optional" or v})
    for t in outputs:
        cfg.output.add(**{k: v for k, v in t.items() if k != "optional"})
    return cfg


def _cpu_instances(count: int) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.Kind.KIND_CPU, count=count)]


def member_io(spec: EnsembleSpec, index: int) -> tuple[list[dict], list[dict]]:
    s, h = spec.preprocess.size, spec.preprocess.map_size
    outputs = [_tensor("score", FP32, [1])]
    if spec.members[index].map:
        outputs.append(_tensor("map", FP32, [1, h, h]))
    return [_tensor("image", FP32, [2, s, s])], outputs


def preprocess_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    s = spec.preprocess.size
    return _config(
        "preprocess",
        [_tensor("IMAGE", STRING, [1]), _tensor("REGION", STRING, [1], optional=True)],
        [
            _tensor("PIXELS", FP32, [2, s, s]),
            _tensor("GEOMETRY", FP32, [9]),
            _tensor("REGION_USED", STRING, [1]),
            _tensor("REGION_SOURCE", STRING, [1]),
        ],
        opt.max_batch_size,
        backend="python",
        instance_group=_cpu_instances(opt.preprocess_instances),
        dynamic_batching=mc.ModelDynamicBatching(),
    )


def average_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    h = spec.preprocess.map_size
    m = len(spec.members)
    inputs = [_tensor(f"SCORE_{i:02d}", FP32, [1]) for i in range(m)]
    inputs += [_tensor(f"MAP_{i:02d}", FP32, [1, h, h]) for i in spec.map_members]
    outputs = [_tensor("SCORE", FP32, [1]), _tensor("MEMBER_SCORES", FP32, [m])]
    if spec.map_members:
        outputs.append(_tensor("MAP", FP32, [h, h]))
    return _config(
        "average", inputs, outputs, opt.max_batch_size, backend="python", instance_group=_cpu_instances(1)
    )


def threshold_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    h = spec.preprocess.map_size
    inputs = [_tensor("SCORE", FP32, [1]), _tensor("GEOMETRY", FP32, [9]), _tensor("REGION_USED", STRING, [1])]
    if spec.map_members:
        inputs.append(_tensor("MAP", FP32, [h, h]))
    outputs = [
        _tensor("FRACTURE", BOOL, [1]),
        _tensor("THRESHOLD", FP32, [1]),
        _tensor("FALLBACK", BOOL, [1]),
        _tensor("BOXES", FP32, [-1, 5]),
    ]
    return _config(
        "threshold", inputs, outputs, opt.max_batch_size, backend="python", instance_group=_cpu_instances(1)
    )


def member_config(spec: EnsembleSpec, index: int, target: Target, opt: RepositoryOptions) -> mc.ModelConfig:
    inputs, outputs = member_io(spec, index)
    batching = mc.ModelDynamicBatching(
        preferred_batch_size=[b for b in opt.preferred_batch_sizes if b <= opt.max_batch_size],
        max_queue_delay_microseconds=opt.max_queue_delay_us,
    )
    name = spec.member_model_name(index)
    if target == "cpu":
        extra = {"backend": "python", "instance_group": _cpu_instances(opt.member_instances)}
    elif target == "onnxruntime":
        extra = {"backend": "onnxruntime", "default_model_filename": "model.onnx"}
    elif target == "tensorrt":
        from fracscan.export.tensorrt import tensorrt_member_fields  # platform, GPU instances, engines, warmup

        extra = tensorrt_member_fields(spec, index, opt)
    else:
        raise ValueError(f"unknown target {target!r}, expected one of {TARGETS}")
    return _config(name, inputs, outputs, opt.max_batch_size, dynamic_batching=batching, **extra)


def ensemble_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    """preprocess -> member_00..NN (fan-out) -> average -> threshold, one request in, one answer out."""
    cfg = _config(
        ENSEMBLE_NAME,
        [_tensor("IMAGE", STRING, [1]), _tensor("REGION", STRING, [1], optional=True)],
        [
            _tensor("SCORE", FP32, [1]),
            _tensor("FRACTURE", BOOL, [1]),
            _tensor("THRESHOLD", FP32, [1]),
            _tensor("REGION_USED", STRING, [1]),
            _tensor("REGION_SOURCE", STRING, [1]),
            _tensor("FALLBACK", BOOL, [1]),
            _tensor("MEMBER_SCORES", FP32, [len(spec.members)]),
            _tensor("BOXES", FP32, [-1, 5]),
        ],
        opt.max_batch_size,
        platform="ensemble",
    )
    # Clients read these to tell users which ensemble answered (e.g. the demo notice).
    cfg.parameters["ensemble_spec"].string_value = spec.name
    cfg.parameters["description"].string_value = spec.description
    steps = cfg.ensemble_scheduling.step
    steps.add(
        model_name="preprocess",
        model_version=-1,
        input_map={"IMAGE": "IMAGE", "REGION": "REGION"},
        output_map={n: n for n in ("PIXELS", "GEOMETRY", "REGION_USED", "REGION_SOURCE")},
    )
    for i, member in enumerate(spec.members):
        outputs = {"score": f"SCORE_{i:02d}"}
        if member.map:
            outputs["map"] = f"MAP_{i:02d}"
        steps.add(model_name=spec.member_model_name(i), model_version=-1, input_map={"image": "PIXELS"}, output_map=outputs)
    avg_inputs = {f"SCORE_{i:02d}": f"SCORE_{i:02d}" for i in range(len(spec.members))}
    avg_inputs |= {f"MAP_{i:02d}": f"MAP_{i:02d}" for i in spec.map_members}
    avg_outputs = {"SCORE": "SCORE", "MEMBER_SCORES": "MEMBER_SCORES"}
    if spec.map_members:
        avg_outputs["MAP"] = "MAP"
    steps.add(model_name="average", model_version=-1, input_map=avg_inputs, output_map=avg_outputs)
    thr_inputs = {"SCORE": "SCORE", "GEOMETRY": "GEOMETRY", "REGION_USED": "REGION_USED"}
    if spec.map_members:
        thr_inputs["MAP"] = "MAP"
    steps.add(
        model_name="threshold",
        model_version=-1,
        input_map=thr_inputs,
        output_map={n: n for n in ("FRACTURE", "THRESHOLD", "FALLBACK", "BOXES")},
    )
    return cfg


def config_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text with Triton's model-config protobuf (raises on any error)."""
    return text_format.Parse(text, mc.ModelConfig())


def default_thresholds(spec: EnsembleSpec) -> Thresholds:
    """Uncalibrated 0.5 everywhere: a placeholder until `fracscan calibrate` runs."""
    point = OperatingPoint(0.5, 0.5)
    return Thresholds({r: point for r in spec.regions}, point, {"calibrated": False, "spec": spec.name})


def write_repository(
    spec: EnsembleSpec,
    output: Path,
    target: Target,
    member_onnx: list[Path],
    thresholds: Thresholds | None = None,
    options: RepositoryOptions = RepositoryOptions(),
) -> Path:
    """Write a complete repository; member_onnx[i] is member i's exported ONNX file."""
    if len(member_onnx) != len(spec.members):
        raise ValueError(f"{len(spec.members)} members in the spec but {len(member_onnx)} ONNX files")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    def write(cfg: mc.ModelConfig, adapter: str | None = None) -> Path:
        version = output / cfg.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (output / cfg.name / "config.pbtxt").write_text(config_text(cfg))
        if adapter:
            (version / "model.py").write_text(_ADAPTER.format(cls=adapter))
        return version

    write(preprocess_config(spec, options), "PreprocessModel")
    write(average_config(spec, options), "AverageModel")
    write(threshold_config(spec, options), "ThresholdModel")
    # An ensemble's version folder is empty, and git keeps no empty folders.
    (write(ensemble_config(spec, options)) / ".gitkeep").touch()
    for i, onnx_path in enumerate(member_onnx):
        version = write(member_config(spec, i, target, options), "MemberModel" if target == "cpu" else None)
        if Path(onnx_path).resolve() != (version / "model.onnx").resolve():
            shutil.copyfile(onnx_path, version / "model.onnx")
    # The spec as served (member files live in the repository, so their source paths are dropped).
    served = replace(spec, members=tuple(replace(m, checkpoint=None, onnx=None) for m in spec.members))
    save_spec(served, output / SPEC_FILE)
    (thresholds or default_thresholds(spec)).save(output / THRESHOLDS_FILE)
    return output
