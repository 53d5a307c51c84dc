"""Export a member to ONNX and check parity: input `image` [batch, pixel_channels, S, S]; outputs `score`,
`map` (map members), `head_<name>` [batch, K] (each classification head).

The graph is meant for TensorRT as well as ONNX Runtime: opset 17, only the batch dimension is
dynamic (named `batch`), every channel/spatial dim is static, and only plain ops are allowed
(`fracscan.export.onnx_check.member_ops`: the DRN or the VGG-16 set, with Softmax for heads). We use the TorchScript exporter (`dynamo=False`): in torch 2.13 it is
deprecated but still present, is fast, and writes opset 17 directly, while the dynamo exporter
starts at opset 18 and its down-conversion to 17 is not reliable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from fracscan import contract
from fracscan.onnxrt import ort_session
from fracscan.spec import MAP_STRIDE, VGG_ARCHS, VGG_STRIDE, MemberSpec

from .drn import SPP_GRIDS
from .members import Member
from .onnx_check import DRN_MEMBER_OPS, member_ops
from .phantoms import phantom_frames
from .vgg import VGGMember, fold_batchnorm, pooling_to_7

# What a fracscan DRN member without heads may contain: one home (onnx_check), beside the full TensorRT
# list (BatchNormalization is folded into Conv in eval-mode export; it is listed in case it is not).
TRT_FRIENDLY_OPS = DRN_MEMBER_OPS


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


class ExportError(RuntimeError):
    """The exported graph is not what the serving side expects."""


def _check_size(spec: MemberSpec, size: int) -> None:
    if size % MAP_STRIDE or size < 32:
        raise ValueError(f"member {spec.name!r}: size must be a multiple of {MAP_STRIDE} and >= 32, got {size}")
    if spec.arch in VGG_ARCHS:
        if size % VGG_STRIDE:
            raise ValueError(f"member {spec.name!r}: a {spec.arch} member needs size 224 x k or 256, got {size}")
        pooling_to_7(size // VGG_STRIDE)  # raises, naming the sizes that pool exactly
    grid = max(SPP_GRIDS)
    if spec.head == "spp" and (size // MAP_STRIDE) % grid:
        # adaptive max pooling becomes a plain MaxPool only when the bins tile the map exactly
        raise ValueError(
            f"member {spec.name!r}: an spp head needs size divisible by {MAP_STRIDE * grid} for ONNX export, got {size}"
        )


def expected_outputs(spec: MemberSpec, size: int) -> dict[str, list]:
    """Output name -> shape (with 'batch' for the dynamic dim)."""
    out: dict[str, list] = {contract.MEMBER_SCORE: ["batch", 1]}
    if spec.map:
        out[contract.MEMBER_MAP] = ["batch", 1, size // MAP_STRIDE, size // MAP_STRIDE]
    return out | {contract.member_head(h.name): ["batch", len(h.classes)] for h in spec.heads}


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def validate_onnx(model: onnx.ModelProto, spec: MemberSpec, size: int, opset: int = 17) -> onnx.ModelProto:
    """checker + strict shape inference + the serving contract; returns the shape-inferred model."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    where = f"member {spec.name!r}"
    ops = {n.op_type for n in inferred.graph.node}
    allowed = member_ops(spec.arch, heads=bool(spec.heads))
    if ops - allowed:
        raise ExportError(f"{where}: ops outside the TensorRT-friendly set: {sorted(ops - allowed)}")
    version = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), None)
    if version != opset:
        raise ExportError(f"{where}: opset {version}, expected {opset}")
    inputs = {i.name: _dims(i) for i in inferred.graph.input}
    channels = spec.pixel_channels
    if inputs != {contract.MEMBER_INPUT: ["batch", channels, size, size]}:
        raise ExportError(f"{where}: inputs {inputs}, expected image [batch, {channels}, {size}, {size}]")
    outputs = {o.name: _dims(o) for o in inferred.graph.output}
    if outputs != expected_outputs(spec, size):
        raise ExportError(f"{where}: outputs {outputs}, expected {expected_outputs(spec, size)}")
    return inferred


def export_member(model: Member, spec_member: MemberSpec, size: int, path: str | Path, opset: int = 17) -> Path:
    """Write `model` (exported in eval mode) to `path` as ONNX and validate it; returns the path.

    A vgg16_bn member is exported with its batch norm folded into its convs (`fold_batchnorm`): the graph
    has no BatchNormalization and computes what the eval-mode member computes.
    """
    if model.spec != spec_member:
        raise ValueError(f"model was built for member {model.spec.name!r}, not {spec_member.name!r}")
    _check_size(spec_member, size)
    if isinstance(model, VGGMember) and spec_member.arch == "vgg16_bn":
        model = fold_batchnorm(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(model.output_names)
    dummy = torch.zeros(2, spec_member.pixel_channels, size, size)  # batch 2 so nothing specialises on a batch of 1
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter"
            # the static sizes (VGG-16's 7 x 7 pooling) become constants, as they should: only the batch varies
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[contract.MEMBER_INPUT],
                output_names=names,
                do_constant_folding=True,
                dynamic_axes={n: {0: "batch"} for n in [contract.MEMBER_INPUT, *names]},
            )
    finally:
        model.train(was_training)
    onnx_model = onnx.load(str(path))
    validate_onnx(onnx_model, spec_member, size, opset)
    onnx_model.doc_string = f"fracscan member {spec_member.name}"
    meta = {
        "name": spec_member.name,
        "arch": spec_member.arch,
        "input": spec_member.input,
        "head": spec_member.head,
        "attention": spec_member.attention,
        "map": spec_member.map,
        "width": spec_member.width,
        "size": size,
    }
    # only where they differ from the Jones members', so those export byte for byte as before
    if spec_member.pixel_channels != 2:
        meta["pixel_channels"] = spec_member.pixel_channels
    if spec_member.heads:
        meta["heads"] = ",".join(f"{h.name}:{len(h.classes)}" for h in spec_member.heads)
    for key, value in meta.items():
        onnx_model.metadata_props.add(
            key=f"fracscan.{key}", value=str(value).lower() if isinstance(value, bool) else str(value)
        )
    onnx.save(onnx_model, str(path))
    return path


def check_parity(model: Member, onnx_path: str | Path, size: int, inputs=None, atol: float = 1e-4) -> float:
    """Max |ONNX Runtime - PyTorch| over all outputs (heads' probabilities included); ParityError above `atol`.

    Default inputs: uniform noise and `phantom_frames` (phantom radiographs through the core
    pre-processing), each at batch 1 and 3, with the member's `pixel_channels`.
    """
    if inputs is None:
        channels = model.spec.pixel_channels
        rng = np.random.default_rng(1)
        inputs = [
            rng.uniform(-1, 1, (1, channels, size, size)).astype(np.float32),
            rng.uniform(-1, 1, (3, channels, size, size)).astype(np.float32),
            phantom_frames(1, size, seed=2, channels=channels),
            phantom_frames(3, size, seed=3, channels=channels),
        ]
    session = ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    if names != list(model.output_names):
        raise ParityError(f"member {model.spec.name!r}: ONNX outputs {names}, model outputs {list(model.output_names)}")
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for x in inputs:
            x = np.ascontiguousarray(x, dtype=np.float32)
            got = session.run(names, {contract.MEMBER_INPUT: x})
            with torch.no_grad():
                ref = model(torch.from_numpy(x))
            for name, g in zip(names, got, strict=True):
                r = ref[name].numpy()
                if g.shape != r.shape:
                    raise ParityError(f"member {model.spec.name!r}: output {name} shape {g.shape} vs {r.shape}")
                diff = float(np.max(np.abs(g - r)))
                worst = max(worst, diff)
                if not diff <= atol:  # also catches NaN
                    raise ParityError(
                        f"member {model.spec.name!r}: output {name} at batch {len(x)} "
                        f"differs by {diff:.3g} > atol {atol:g} ({onnx_path})"
                    )
    finally:
        model.train(was_training)
    return worst
