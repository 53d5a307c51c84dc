"""Generate a Triton model repository from an ensemble spec.

Every config.pbtxt is built as Triton's own `ModelConfig` protobuf (shipped in tritonclient)
and printed with protobuf's text format, so it parses by construction. Only the member
models and `normalize` differ between targets; preprocess, average, threshold and the `fracscan`
ensemble are identical everywhere.

    repository/
      fracscan.toml         the spec (the python models read it)
      thresholds.json       per-region operating points (the threshold model reads it)
      fracscan/             platform "ensemble" (with heads: <head>_labels.txt beside its config, see below)
      fracscan_study/       python backend (BLS): all views of one study -> the study answer
      preprocess/ average/ threshold/      python backend, one-line model.py adapters
      normalize/                           FRAME -> PIXELS (LCN): cpu: python (numpy); onnxruntime /
                                           tensorrt (FP32): the ONNX graph of fracscan.export.normalize
      member_00/ ... member_NN/            target-specific (cpu: python + onnxruntime;
                                           onnxruntime: onnxruntime backend; tensorrt: plans)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tritonclient.grpc import model_config_pb2 as mc

from fracscan import contract as c
from fracscan import provenance
from fracscan.export.model_config import RepositoryOptions, config_text, parse_config
from fracscan.provenance import Provenance
from fracscan.spec import EnsembleSpec, save_spec
from fracscan.thresholds import Thresholds, is_calibrated, uncalibrated

Target = Literal["cpu", "onnxruntime", "tensorrt"]
TARGETS: tuple[str, ...] = ("cpu", "onnxruntime", "tensorrt")
ENSEMBLE_NAME = c.ENSEMBLE_MODEL

_DATATYPES = {
    "FP32": mc.DataType.TYPE_FP32,
    "BOOL": mc.DataType.TYPE_BOOL,
    "BYTES": mc.DataType.TYPE_STRING,
    "INT32": mc.DataType.TYPE_INT32,
}

_ADAPTER = "from fracscan.triton_models import {cls} as TritonPythonModel  # noqa: F401\n"


def preprocess_instances_for(cpu_cores: int | None, target: Target) -> int:
    """`preprocess` instances for the CPU cores a server has (None: the default, 2).

    One instance is one process scoring one radiograph at a time on one core, so instances = cores:
    more than the cores measured no faster (benchmarks/README.md, tuning), fewer leaves cores idle.
    On a GPU target one core is left to `tritonserver` and the GPU steps' feeding; the cpu target's
    members share all cores anyway. What the cores then feed (docker/README.md, "CPU cores per GPU"):
    ~60 ms of CPU per 3000 x 2500 uncompressed radiograph served, i.e. ~16 radiographs/s per core
    (~57 ms, ~17/s, on the GPU targets, where `normalize` runs LCN on the GPU).
    """
    if cpu_cores is None:
        return RepositoryOptions.preprocess_instances
    if cpu_cores < 1:
        raise ValueError(f"cpu_cores must be >= 1, got {cpu_cores}")
    return max(1, cpu_cores if target == "cpu" else cpu_cores - 1)


def _config(
    name: str, inputs: tuple[c.Tensor, ...], outputs: tuple[c.Tensor, ...], max_batch_size: int, **extra: Any
) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch_size, **extra)
    for t in inputs:
        cfg.input.add(name=t.name, data_type=_DATATYPES[t.datatype], dims=list(t.dims), optional=t.optional)
    for t in outputs:
        cfg.output.add(name=t.name, data_type=_DATATYPES[t.datatype], dims=list(t.dims))
    return cfg


def _cpu_instances(count: int) -> list[mc.ModelInstanceGroup]:
    return [mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.Kind.KIND_CPU, count=count)]


def member_io(spec: EnsembleSpec, index: int) -> tuple[tuple[c.Tensor, ...], tuple[c.Tensor, ...]]:
    pre = spec.preprocess
    return (
        c.member_inputs(pre.size, pre.channels),
        c.member_outputs(pre.map_size, spec.members[index].map, spec.head_dims),
    )


def head_labels(spec: EnsembleSpec) -> dict[str, str]:
    """Each head's probabilities output -> its label file (`contract.labels_file`, one class a line: label_filename)."""
    return {c.head_outputs(h.name)[1]: c.labels_file(h.name) for h in spec.heads}


def _label_outputs(cfg: mc.ModelConfig, spec: EnsembleSpec) -> mc.ModelConfig:
    labels = head_labels(spec)
    for output in cfg.output:
        if output.name in labels:
            output.label_filename = labels[output.name]
    return cfg


def write_labels(spec: EnsembleSpec, model_dir: Path) -> None:
    """Each head's classes, one a line, in the spec's order: the label files the config names."""
    for head in spec.heads:
        (model_dir / c.labels_file(head.name)).write_text("".join(f"{label}\n" for label in head.classes))


def preprocess_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    return _config(
        c.PREPROCESS_MODEL,
        c.ENSEMBLE_INPUTS,
        c.preprocess_outputs(spec.preprocess.size, spec.head_dims),
        opt.max_batch_size,
        backend="python",
        instance_group=_cpu_instances(opt.preprocess_instances),
        dynamic_batching=mc.ModelDynamicBatching(),
    )


def normalize_config(spec: EnsembleSpec, target: Target, opt: RepositoryOptions) -> mc.ModelConfig:
    """FRAME -> PIXELS: the S x S per-pixel work, on the GPU on the GPU targets.

    The cpu target runs the numpy path in as many instances as `preprocess` has (the same kind of
    CPU work, moved out of it); the GPU targets serve the spec's ONNX graph, FP32 under TensorRT.
    """
    size = spec.preprocess.size
    extra: dict[str, Any]
    if target == "cpu":
        extra = {"backend": "python", "instance_group": _cpu_instances(opt.preprocess_instances)}
    elif target == "onnxruntime":
        extra = {"backend": "onnxruntime", "default_model_filename": c.ONNX_FILE}
    elif target == "tensorrt":
        from fracscan.export.tensorrt.config import tensorrt_normalize_fields

        extra = tensorrt_normalize_fields(spec, opt)
    else:
        raise ValueError(f"unknown target {target!r}, expected one of {TARGETS}")
    return _config(
        c.NORMALIZE_MODEL,
        c.normalize_inputs(size),
        c.normalize_outputs(size, spec.preprocess.channels),
        opt.max_batch_size,
        dynamic_batching=mc.ModelDynamicBatching(),
        **extra,
    )


def average_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    h, m = spec.preprocess.map_size, len(spec.members)
    return _config(
        c.AVERAGE_MODEL,
        c.average_inputs(m, spec.map_members, h, spec.head_dims),
        c.average_outputs(m, h, bool(spec.map_members), spec.head_dims),
        opt.max_batch_size,
        backend="python",
        instance_group=_cpu_instances(1),
    )


def threshold_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    heads = spec.head_dims
    cfg = _config(
        c.THRESHOLD_MODEL,
        c.threshold_inputs(len(spec.members), spec.preprocess.map_size, bool(spec.map_members), heads),
        c.ensemble_outputs(len(spec.members), heads),
        opt.max_batch_size,
        backend="python",
        instance_group=_cpu_instances(1),
    )
    return _label_outputs(cfg, spec)


def study_config(spec: EnsembleSpec, opt: RepositoryOptions) -> mc.ModelConfig:
    """The BLS study model: no batching (one request is one study, its views along IMAGE's only dimension)."""
    return _config(
        c.STUDY_MODEL,
        c.STUDY_INPUTS,
        c.study_outputs(spec.head_dims),
        0,
        backend="python",
        instance_group=_cpu_instances(opt.study_instances),
    )


def member_config(spec: EnsembleSpec, index: int, target: Target, opt: RepositoryOptions) -> mc.ModelConfig:
    inputs, outputs = member_io(spec, index)
    batching = mc.ModelDynamicBatching(
        preferred_batch_size=[b for b in opt.preferred_batch_sizes if b <= opt.max_batch_size],
        max_queue_delay_microseconds=opt.max_queue_delay_us,
    )
    name = c.member_model(index)
    extra: dict[str, Any]
    if target == "cpu":
        extra = {"backend": "python", "instance_group": _cpu_instances(opt.member_instances)}
    elif target == "onnxruntime":
        extra = {"backend": "onnxruntime", "default_model_filename": c.ONNX_FILE}
    elif target == "tensorrt":
        from fracscan.export.tensorrt import tensorrt_member_fields  # platform, GPU instances, engines, warmup

        extra = tensorrt_member_fields(spec, index, opt)
    else:
        raise ValueError(f"unknown target {target!r}, expected one of {TARGETS}")
    return _config(name, inputs, outputs, opt.max_batch_size, dynamic_batching=batching, **extra)


def _served(record: Provenance) -> str:
    """The provenance as the ensemble config carries it (no date: the same members give the same config)."""
    return json.dumps({k: v for k, v in record.to_json().items() if k != "created"}, sort_keys=True)


def _same(names: Any) -> dict[str, str]:
    return {n: n for n in names}


def _onward(names: Any, heads: c.Heads = ()) -> dict[str, str]:
    """An early step's output map: answers the last step passes on travel under their passed-through names."""
    passed = c.passed_on(heads)
    return {n: c.passed_through(n) if n in passed else n for n in names}


def ensemble_config(spec: EnsembleSpec, opt: RepositoryOptions, record: Provenance | None = None) -> mc.ModelConfig:
    """preprocess -> normalize -> member_00..NN (fan-out) -> average -> threshold, one request in, one answer out.

    An ensemble with heads names their classes twice: the `heads` parameter (JSON {head: [classes]}) and,
    per Triton's label_filename convention, each probabilities output's label file beside this config
    (the same file beside `threshold`'s config, whose outputs these are).
    """
    members, heads = len(spec.members), spec.head_dims
    cfg = _config(
        c.ENSEMBLE_MODEL, c.ENSEMBLE_INPUTS, c.ensemble_outputs(members, heads), opt.max_batch_size, platform="ensemble"
    )
    _label_outputs(cfg, spec)
    # Clients read these to tell users which ensemble answered (the demo notice, random weights, calibration).
    cfg.parameters[c.PARAM_SPEC].string_value = spec.name
    cfg.parameters[c.PARAM_DESCRIPTION].string_value = spec.description
    if record is not None:
        cfg.parameters[c.PARAM_PROVENANCE].string_value = _served(record)
    if spec.heads:
        cfg.parameters[c.PARAM_HEADS].string_value = json.dumps({h.name: list(h.classes) for h in spec.heads})
    size, channels = spec.preprocess.size, spec.preprocess.channels
    steps = cfg.ensemble_scheduling.step
    steps.add(
        model_name=c.PREPROCESS_MODEL,
        model_version=-1,
        input_map=_same(t.name for t in c.ENSEMBLE_INPUTS),
        output_map=_onward((t.name for t in c.preprocess_outputs(size, heads)), heads),
    )
    steps.add(
        model_name=c.NORMALIZE_MODEL,
        model_version=-1,
        input_map=_same(t.name for t in c.normalize_inputs(size)),
        output_map=_same(t.name for t in c.normalize_outputs(size, channels)),
    )
    for i, member in enumerate(spec.members):
        outputs = {c.MEMBER_SCORE: c.member_score(i)}
        if member.map:
            outputs[c.MEMBER_MAP] = c.member_map(i)
        outputs.update({c.member_head(h): c.member_head_probs(i, h) for h, _ in heads})
        steps.add(
            model_name=c.member_model(i), model_version=-1, input_map={c.MEMBER_INPUT: c.PIXELS}, output_map=outputs
        )
    has_map = bool(spec.map_members)
    h = spec.preprocess.map_size
    steps.add(
        model_name=c.AVERAGE_MODEL,
        model_version=-1,
        input_map=_same(t.name for t in c.average_inputs(members, spec.map_members, h, heads)),
        output_map=_onward((t.name for t in c.average_outputs(members, h, has_map, heads)), heads),
    )
    steps.add(
        model_name=c.THRESHOLD_MODEL,
        model_version=-1,
        input_map=_same(t.name for t in c.threshold_inputs(members, h, has_map, heads)),
        output_map=_same(t.name for t in c.ensemble_outputs(members, heads)),
    )
    return cfg


def _write_ensemble(output: Path, spec: EnsembleSpec, options: RepositoryOptions, record: Provenance) -> Path:
    version = output / c.ENSEMBLE_MODEL / c.MODEL_VERSION
    version.mkdir(parents=True, exist_ok=True)
    (output / c.ENSEMBLE_MODEL / c.CONFIG_FILE).write_text(config_text(ensemble_config(spec, options, record)))
    write_labels(spec, output / c.ENSEMBLE_MODEL)
    (version / ".gitkeep").touch()  # an ensemble's version folder is empty, and git keeps no empty folders
    return version


def write_repository(
    spec: EnsembleSpec,
    output: Path,
    target: Target,
    member_onnx: list[Path],
    thresholds: Thresholds | None = None,
    options: RepositoryOptions = RepositoryOptions(),
    *,
    random_weights: bool = False,
) -> Path:
    """Write a complete repository; member_onnx[i] is member i's exported ONNX file."""
    if len(member_onnx) != len(spec.members):
        raise ValueError(f"{len(spec.members)} members in the spec but {len(member_onnx)} ONNX files")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    def write(cfg: mc.ModelConfig, adapter: str | None = None) -> Path:
        version = output / str(cfg.name) / c.MODEL_VERSION
        version.mkdir(parents=True, exist_ok=True)
        (output / cfg.name / c.CONFIG_FILE).write_text(config_text(cfg))
        if adapter:
            (version / c.PYTHON_MODEL_FILE).write_text(_ADAPTER.format(cls=adapter))
        return version

    write(preprocess_config(spec, options), "PreprocessModel")
    normalize_version = write(normalize_config(spec, target, options), "NormalizeModel" if target == "cpu" else None)
    if target != "cpu":
        from fracscan.export.normalize import write_normalize_onnx  # needs onnx (the export extra)

        write_normalize_onnx(spec.preprocess, normalize_version / c.ONNX_FILE)
    write(average_config(spec, options), "AverageModel")
    write_labels(spec, write(threshold_config(spec, options), "ThresholdModel").parent)
    write(study_config(spec, options), "StudyModel")
    hashes = []
    for i, onnx_path in enumerate(member_onnx):
        version = write(member_config(spec, i, target, options), "MemberModel" if target == "cpu" else None)
        if Path(onnx_path).resolve() != (version / c.ONNX_FILE).resolve():
            shutil.copyfile(onnx_path, version / c.ONNX_FILE)
        hashes.append(provenance.sha256_file(version / c.ONNX_FILE))
    # The spec as served (member files live in the repository, so their source paths are dropped).
    served = replace(spec, members=tuple(replace(m, checkpoint=None, onnx=None) for m in spec.members))
    save_spec(served, output / c.SPEC_FILE)
    thresholds = thresholds or uncalibrated(spec.regions, spec.name)
    thresholds.save(output / c.THRESHOLDS_FILE)
    record = Provenance(
        spec=spec.name,
        demo=spec.demo,
        random_weights=random_weights,
        calibrated=is_calibrated(thresholds.provenance),
        member_hashes=tuple(hashes),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    ).with_thresholds(thresholds.to_json())
    provenance.write(output, record)
    _write_ensemble(output, spec, options, record)
    return output


def install_thresholds(repository: Path, thresholds: Thresholds) -> Provenance:
    """Install a thresholds file into a repository; its provenance (file and served config) follows.

    The server reads both at start: restart it (no rebuild) for the new thresholds to apply.
    """
    from fracscan.spec import load_spec

    repository = Path(repository)
    load_spec(repository / c.SPEC_FILE)  # fail before writing anything if this is not a fracscan repository
    thresholds.save(repository / c.THRESHOLDS_FILE)
    record = provenance.read(repository)
    provenance.write(repository, record)
    config_path = repository / c.ENSEMBLE_MODEL / c.CONFIG_FILE
    cfg = parse_config(config_path.read_text())
    cfg.parameters[c.PARAM_PROVENANCE].string_value = _served(record)
    config_path.write_text(config_text(cfg))
    return record
