"""Will this ONNX file build as a TensorRT engine?  A check that runs without TensorRT.

`check_onnx_for_tensorrt(path)` runs, in order:

1. `onnx.checker.check_model(..., full_check=True)` (structure, types, and full shape checks);
2. strict shape inference (`onnx.shape_inference.infer_shapes(strict_mode=True)`);
3. the opset of the default domain (TensorRT's ONNX parser reads opset 9 and later) and the IR
   version (parsers built against an older `onnx` refuse newer IR versions);
4. static non-batch dimensions: every graph input and output may have a dynamic dimension 0
   (the batch, covered by the engine's optimization profile) and nothing else, because the
   Triton config lists fixed `dims` and the engine profile only varies the batch;
5. every operator against `TENSORRT_OPS`: the ONNX operators TensorRT's parser imports, as
   listed by the ONNX-TensorRT operator support matrix, restricted to the ones a member uses
   (`member_ops`: DRN, VGG-16, classification heads) plus common ones. Anything else (or a custom
   domain) is flagged: verify it with `trtexec` inside the serving container, then pass it in `allowed_ops`.

Optionally (`fold_constants=True`) the graph is first constant-folded with ONNX Runtime's basic
graph optimizer (standard ONNX ops only) and the check runs on the folded copy; the report says
how many nodes that removed.

The report lists errors (the engine build would fail or serve the wrong shapes) and warnings.
`fracscan export --target tensorrt` runs it for every member; `report.raise_for_errors()` raises
`OnnxCheckError` (a ValueError) with every problem in one message.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fracscan.onnxrt import ort_session
from fracscan.spec import VGG_ARCHS

# ONNX operators (default domain) that TensorRT's ONNX parser supports. A DRN member exported
# by fracscan uses Conv, Relu, Add, Mul, Sigmoid, MaxPool, GlobalAveragePool, Concat, Flatten,
# Reshape, Gemm/MatMul, Slice, Constant, Identity (BatchNormalization is folded into Conv).
DRN_MEMBER_OPS: frozenset[str] = frozenset(
    {
        "Conv",
        "BatchNormalization",
        "Relu",
        "Add",
        "Mul",
        "Sigmoid",
        "GlobalAveragePool",
        "ReduceMean",
        "MaxPool",
        "AveragePool",
        "Concat",
        "Flatten",
        "Reshape",
        "Gemm",
        "MatMul",
        "Slice",
        "Constant",
        "Identity",
    }
)
TENSORRT_OPS: frozenset[str] = DRN_MEMBER_OPS | frozenset(
    {
        # common CNN / classification ops
        "Sub",
        "Div",
        "Pow",
        "Sqrt",
        "Exp",
        "Log",
        "Abs",
        "Neg",
        "Min",
        "Max",
        "Sum",
        "Mean",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "HardSigmoid",
        "Softplus",
        "Softsign",
        "Tanh",
        "Erf",
        "Softmax",
        "LogSoftmax",
        "ConvTranspose",
        "GlobalMaxPool",
        "LRN",
        "InstanceNormalization",
        "LayerNormalization",
        "Dropout",
        "Pad",
        "Resize",
        "Upsample",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "Gather",
        "GatherElements",
        "Expand",
        "Tile",
        "Shape",
        "Size",
        "Cast",
        "ConstantOfShape",
        "Range",
        "Where",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Not",
        "And",
        "Or",
        "Floor",
        "Ceil",
        "Round",
        "ReduceMax",
        "ReduceMin",
        "ReduceSum",
        "ReduceProd",
        "ReduceL2",
        "ArgMax",
        "ArgMin",
        "TopK",
        "DepthToSpace",
        "SpaceToDepth",
        "Einsum",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
# A vgg16 / vgg16_bn member (fracscan.export.vgg; vgg16_bn's batch norm folded into its convs): Slice picks its channel, Mul + Add broadcast the gray channel to
# ImageNet-normalised RGB (Expand / Concat if an exporter replicates explicitly), then convs, max pools,
# the exact 7 x 7 AveragePool, Flatten and the Gemm classifier.
VGG_MEMBER_OPS: frozenset[str] = frozenset(
    {
        "Slice",
        "Mul",
        "Add",
        "Sub",
        "Expand",
        "Concat",
        "Conv",
        "Relu",
        "MaxPool",
        "AveragePool",
        "Flatten",
        "Reshape",
        "Gemm",
        "MatMul",
        "Sigmoid",
        "Constant",
        "Identity",
    }
)
HEAD_OPS: frozenset[str] = frozenset({"Softmax"})  # a classification head's probabilities
assert VGG_MEMBER_OPS | HEAD_OPS <= TENSORRT_OPS, "a member op TensorRT's list lacks"

# Known to be rejected by the parser: named in the report so the fix is obvious.
TENSORRT_UNSUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "BitShift",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "Det",
        "DynamicQuantizeLinear",
        "Hardmax",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MeanVarianceNormalization",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "QLinearConv",
        "QLinearMatMul",
        "RandomNormal",
        "RandomNormalLike",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringNormalizer",
        "TfIdfVectorizer",
        "Unique",
    }
)


def member_ops(arch: str, heads: bool = False) -> frozenset[str]:
    """The ops an exported member of `arch` may contain (`heads`: it has classification heads)."""
    ops = VGG_MEMBER_OPS if arch in VGG_ARCHS else DRN_MEMBER_OPS
    return (ops | HEAD_OPS) if heads else ops


MIN_OPSET = 9  # the oldest opset TensorRT's ONNX parser imports
MAX_CHECKED_OPSET = 20  # newer opsets may parse, but fracscan has not checked them
MAX_IR_VERSION = 10  # IR version written by onnx 1.16/1.17, which TensorRT 10.x parsers read
DEFAULT_DOMAINS = ("", "ai.onnx")


class OnnxCheckError(ValueError):
    """The ONNX file would not build (or would serve the wrong shapes) as a TensorRT engine."""


Dim = int | str  # a static size, or a symbolic name ('batch'), or '?' when unknown


@dataclass
class OnnxCheckReport:
    path: Path
    opset: int | None = None
    ir_version: int | None = None
    ops: Counter[str] = field(default_factory=Counter)
    inputs: dict[str, list[Dim]] = field(default_factory=dict)  # name -> dims ('batch' style names for symbolic)
    outputs: dict[str, list[Dim]] = field(default_factory=dict)
    unsupported_ops: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    folded_nodes: int | None = None  # nodes removed by constant folding, when it ran

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = (
            f"{self.path.name}: opset {self.opset}, IR {self.ir_version}, "
            f"{sum(self.ops.values())} nodes / {len(self.ops)} op types"
        )
        lines = [head + (" - OK" if self.ok else f" - {len(self.errors)} error(s)")]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_for_errors(self) -> OnnxCheckReport:
        if self.errors:
            raise OnnxCheckError(
                f"{self.path}: not buildable with TensorRT:\n" + "\n".join(f"  - {e}" for e in self.errors)
            )
        return self


def _dims(value_info: onnx.ValueInfoProto) -> list[Dim]:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return []
    return [
        d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
        for d in t.tensor_type.shape.dim
    ]


def _is_static(dim: Dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _collect_ops(graph: onnx.GraphProto, counter: Counter[str], domains: set[str]) -> None:
    """Every node, including those in subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        domain = node.domain or ""
        counter[node.op_type if domain in DEFAULT_DOMAINS else f"{domain}::{node.op_type}"] += 1
        domains.add(domain)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_ops(attr.g, counter, domains)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _collect_ops(g, counter, domains)


def fold_onnx_constants(src: str | Path, dst: str | Path) -> Path:
    """Constant-fold `src` into `dst` with ONNX Runtime's *basic* graph optimizations.

    Basic level only: constant folding and redundant-node elimination, output stays standard
    ONNX (the extended level would write ORT-specific fused ops TensorRT cannot read).
    """
    ort_session(src, optimization="basic", save_optimized_to=dst)
    return Path(dst)


def check_onnx_for_tensorrt(
    path: str | Path,
    *,
    allowed_ops: frozenset[str] | set[str] = frozenset(),
    batch_dim_dynamic: bool = True,
    expected_inputs: dict[str, list[int]] | None = None,
    fold_constants: bool = False,
) -> OnnxCheckReport:
    """Check one ONNX file for a TensorRT engine build; never raises for a bad model.

    allowed_ops: extra operator types you have verified with trtexec.
    batch_dim_dynamic: dimension 0 of inputs/outputs may be symbolic (the batch).
    expected_inputs: optionally, input name -> non-batch dims that must match exactly
        (e.g. {"image": [2, 1024, 1024]}).
    fold_constants: check a constant-folded copy (ONNX Runtime basic optimizations).
    """
    path = Path(path)
    report = OnnxCheckReport(path=path)
    if not path.is_file():
        report.errors.append(f"file not found: {path}")
        return report
    check_path = path
    tmp = None
    if fold_constants:
        tmp = tempfile.TemporaryDirectory()
        try:
            check_path = fold_onnx_constants(path, Path(tmp.name) / path.name)
        except Exception as exc:  # reported, the unfolded file is checked instead
            report.warnings.append(f"constant folding failed ({type(exc).__name__}: {exc}); checked the file as is")
            check_path = path
    try:
        _check(check_path, report, frozenset(allowed_ops), batch_dim_dynamic, expected_inputs)
        if fold_constants and check_path != path:
            before: Counter[str] = Counter()
            _collect_ops(onnx.load(str(path), load_external_data=False).graph, before, set())
            report.folded_nodes = sum(before.values()) - sum(report.ops.values())
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


def _check(
    path: Path,
    report: OnnxCheckReport,
    allowed: frozenset[str],
    batch_dynamic: bool,
    expected_inputs: dict[str, list[int]] | None,
) -> None:
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # any load failure is the answer
        report.errors.append(f"not a readable ONNX file: {type(exc).__name__}: {exc}")
        return
    report.ir_version = model.ir_version
    report.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)

    # 1. checker (full_check includes strict shape inference over the whole graph)
    try:
        # by path: also works for models over 2 GB with external data
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        report.errors.append(f"onnx.checker: {str(exc).strip().splitlines()[0]}")
    # 2. shape inference: the shapes TensorRT and the Triton config will see
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # InferenceError, or a ValidationError on bad types
        report.errors.append(f"shape inference: {str(exc).strip().splitlines()[0]}")
        inferred = model

    # 3. opset / IR version
    if report.opset is None:
        report.errors.append("no opset for the default ONNX domain")
    elif report.opset < MIN_OPSET:
        report.errors.append(
            f"opset {report.opset} < {MIN_OPSET}: TensorRT's ONNX parser needs opset {MIN_OPSET} or later"
        )
    elif report.opset > MAX_CHECKED_OPSET:
        report.warnings.append(
            f"opset {report.opset} > {MAX_CHECKED_OPSET}: newer than fracscan has checked "
            "with TensorRT; export with opset 17 if the engine build fails"
        )
    if report.ir_version and report.ir_version > MAX_IR_VERSION:
        report.warnings.append(
            f"IR version {report.ir_version} > {MAX_IR_VERSION}: a TensorRT parser built "
            "against an older onnx may refuse it"
        )

    # 4. static non-batch dims on every graph input and output
    initializers = {i.name for i in inferred.graph.initializer}
    graph_inputs = [i for i in inferred.graph.input if i.name not in initializers]
    report.inputs = {i.name: _dims(i) for i in graph_inputs}
    report.outputs = {o.name: _dims(o) for o in inferred.graph.output}
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for name, dims in tensors.items():
            if not dims:
                report.errors.append(f"{kind} '{name}' has no known shape")
                continue
            rest = dims[1:] if batch_dynamic else dims
            if not batch_dynamic and not _is_static(dims[0]):
                report.errors.append(f"{kind} '{name}' dim 0 is dynamic ({dims[0]!r})")
            dynamic = [i + (1 if batch_dynamic else 0) for i, d in enumerate(rest) if not _is_static(d)]
            if dynamic:
                report.errors.append(
                    f"{kind} '{name}' has dynamic non-batch dims at axes {dynamic}: {dims} (only the batch may vary)"
                )
    for v in graph_inputs:
        elem = v.type.tensor_type.elem_type
        if elem and elem != onnx.TensorProto.FLOAT:
            report.warnings.append(
                f"input '{v.name}' is {onnx.TensorProto.DataType.Name(elem)}, the Triton member config expects FP32"
            )
    if expected_inputs is not None:
        for name, want in expected_inputs.items():
            got = report.inputs.get(name)
            if got is None:
                report.errors.append(f"expected input '{name}' is missing (inputs: {sorted(report.inputs)})")
            elif list(got[1:]) != list(want):
                report.errors.append(f"input '{name}' has non-batch dims {got[1:]}, expected {list(want)}")

    # 5. operators
    domains: set[str] = set()
    _collect_ops(model.graph, report.ops, domains)
    custom = sorted(d for d in domains if d not in DEFAULT_DOMAINS)
    if custom:
        report.errors.append(f"custom operator domains {custom}: TensorRT needs a plugin for these")
    for op in sorted(report.ops):
        if "::" in op or op in TENSORRT_OPS or op in allowed:
            continue
        report.unsupported_ops.append(op)
        if op in TENSORRT_UNSUPPORTED_OPS:
            report.errors.append(f"operator {op} ({report.ops[op]}x) is not supported by TensorRT's ONNX parser")
        else:
            report.errors.append(
                f"operator {op} ({report.ops[op]}x) is not in fracscan's list of TensorRT-supported "
                "ops; verify with trtexec in the serving container, then allow it"
            )


def check_members(paths: list[Path], size: int | None = None, channels: int = 2) -> list[OnnxCheckReport]:
    """Check each member file (input [channels, size, size]); raise one OnnxCheckError naming every failing member."""
    expected = {"image": [channels, size, size]} if size else None
    reports = [check_onnx_for_tensorrt(p, expected_inputs=expected) for p in paths]
    bad = [r for r in reports if not r.ok]
    if bad:
        raise OnnxCheckError("\n".join(r.summary() for r in bad))
    return reports
