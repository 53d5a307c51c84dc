"""The `normalize` model's ONNX graph, generated from the spec: FRAME [B, 1, S, S] -> PIXELS [B, channels, S, S].

With LCN, channels = 2 (the plain frame, its LCN); a spec with `lcn = false` (Olczak et al. 2017) gets
PIXELS [B, 1, S, S] = FRAME: one Identity node, so the repository keeps its shape (every target's
`normalize` is the same step) at no cost on the GPU.

On the GPU targets the per-pixel S x S work (LCN's Gaussian local moments) runs on the GPU, in this
graph (TensorRT in FP32, or ONNX Runtime); on the CPU target the `normalize` model runs
`fracscan.preprocess.normalize_frame` instead. Both compute

    lcn = clip((x - mean) / (max(std, lcn_floor) * lcn_clip), -1, 1),   PIXELS = [x, lcn]

with mean and std the Gaussian-weighted (sigma = lcn_sigma, radius round(4 sigma)) local moments of
the plain frame x. The graph filters at full resolution (the CPU path uses a coarser grid at large
sigma; they agree to ~1e-3). Borders: scipy's `mode="reflect"` (OpenCV BORDER_REFLECT, the edge
pixel repeated: d c b a | a b c d | d c b a) is what the CPU path computes, while ONNX Pad's
"reflect" is REFLECT_101 (c b | a b c d); so the padding is built explicitly as a Gather with the
reflected indices along each axis, which is exact for any radius, then the filter is a pair of
unpadded separable depthwise convolutions over the two channels (x, x^2).

Built with the `onnx` helper API (no torch), opset 17, only the batch dimension dynamic - as the
members, so `onnx_check` and the TensorRT build treat it like one.

FP32 under TensorRT means what the build's "fp32" does: on Ampere and later GPUs TensorRT also
allows TF32 convolutions unless the builder clears its TF32 flag (10-bit mantissa on the moments:
an error of order 1e-3 on LCN), which `fracscan.export.tensorrt.builders` does not do today.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from fracscan import contract as c
from fracscan.spec import PreprocessSpec

OPSET = 17
IR_VERSION = 8  # the members' (torch.onnx at opset 17): older TensorRT parsers refuse newer IR versions


def gaussian_taps(sigma: float) -> NDArray[np.float32]:
    """scipy.ndimage's 1-D Gaussian kernel for `gaussian_filter(sigma)` (truncate 4): radius int(4 sigma + 0.5)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps: NDArray[np.float64] = np.exp(-0.5 * (x / sigma) ** 2)
    return np.asarray(taps / taps.sum(), dtype=np.float32)


def reflect_indices(size: int, radius: int) -> NDArray[np.int64]:
    """Indices that pad `size` samples by `radius` on each side the way scipy's "reflect" does.

    The signal is extended as its mirror image including the edge sample (period 2 * size), so a
    radius larger than the image is handled as scipy does.
    """
    i = np.arange(-radius, size + radius) % (2 * size)
    return np.where(i < size, i, 2 * size - 1 - i).astype(np.int64)


def normalize_graph(spec: PreprocessSpec) -> onnx.ModelProto:
    """The ONNX model of `normalize` for this spec's S and LCN parameters (an Identity when lcn = false)."""
    if not spec.lcn:
        return _finish(spec, [helper.make_node("Identity", [c.FRAME], [c.PIXELS])], [], "lcn=false (plain frame)")
    size, taps = spec.size, gaussian_taps(spec.lcn_sigma)
    radius = (len(taps) - 1) // 2
    pad = reflect_indices(size, radius)
    kernel_x = np.stack([taps, taps]).reshape(2, 1, 1, -1)  # depthwise over (x, x^2)
    kernel_y = kernel_x.reshape(2, 1, -1, 1)
    constants: dict[str, Any] = {
        "reflect": pad,
        "kernel_x": kernel_x,
        "kernel_y": kernel_y,
        "floor_x_clip": np.float32(spec.lcn_floor * spec.lcn_clip),
        "clip": np.float32(spec.lcn_clip),
        "zero": np.float32(0.0),
        "minus_one": np.float32(-1.0),
        "one": np.float32(1.0),
        "split": np.array([1, 1], dtype=np.int64),
    }
    node = helper.make_node
    nodes = [
        node("Mul", [c.FRAME, c.FRAME], ["squared"]),
        node("Concat", [c.FRAME, "squared"], ["moments_in"], axis=1),
        node("Gather", ["moments_in", "reflect"], ["padded_x"], axis=3),
        node("Conv", ["padded_x", "kernel_x"], ["blurred_x"], group=2),
        node("Gather", ["blurred_x", "reflect"], ["padded_y"], axis=2),
        node("Conv", ["padded_y", "kernel_y"], ["moments"], group=2),
        node("Split", ["moments", "split"], ["mean", "mean_sq"], axis=1),
        node("Mul", ["mean", "mean"], ["mean_squared"]),
        node("Sub", ["mean_sq", "mean_squared"], ["variance_raw"]),
        node("Max", ["variance_raw", "zero"], ["variance"]),
        node("Sqrt", ["variance"], ["std"]),
        # max(std, floor) * clip == max(std * clip, floor * clip): one constant fewer at run time
        node("Mul", ["std", "clip"], ["std_x_clip"]),
        node("Max", ["std_x_clip", "floor_x_clip"], ["denominator"]),
        node("Sub", [c.FRAME, "mean"], ["centred"]),
        node("Div", ["centred", "denominator"], ["scaled"]),
        node("Clip", ["scaled", "minus_one", "one"], ["lcn"]),
        node("Concat", [c.FRAME, "lcn"], [c.PIXELS], axis=1),
    ]
    initializers = [numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()]
    parameters = f"lcn_sigma={spec.lcn_sigma} lcn_floor={spec.lcn_floor} lcn_clip={spec.lcn_clip}"
    return _finish(spec, nodes, initializers, parameters)


def _finish(spec: PreprocessSpec, nodes: list[Any], initializers: list[Any], parameters: str) -> onnx.ModelProto:
    """The model around `nodes`: FRAME [batch, 1, S, S] in, PIXELS [batch, channels, S, S] out, checked."""
    (frame,), (pixels,) = c.normalize_inputs(spec.size), c.normalize_outputs(spec.size, spec.channels)
    graph = helper.make_graph(
        nodes,
        c.NORMALIZE_MODEL,
        [helper.make_tensor_value_info(frame.name, TensorProto.FLOAT, ["batch", *frame.dims])],
        [helper.make_tensor_value_info(pixels.name, TensorProto.FLOAT, ["batch", *pixels.dims])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fracscan", ir_version=IR_VERSION
    )
    model.doc_string = f"fracscan normalize: S={spec.size} {parameters}"
    onnx.checker.check_model(model, full_check=True)
    return model


def write_normalize_onnx(spec: PreprocessSpec, path: Path) -> Path:
    """Write the graph to `path` (the `normalize/1/model.onnx` of a GPU-target repository)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(normalize_graph(spec), str(path))
    return path
