"""The one place an ONNX Runtime session is built (server members, reference, export checks, benchmarks).

Thread settings are deliberate: the ensemble runs ten members side by side, so each session gets one
intra-op thread unless told otherwise ($FRACSCAN_ORT_THREADS or `threads`), and spin-waiting is off
whenever a session gets more than one (ten spinning sessions measured 10x slower on 2 cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fracscan import settings

Optimization = Literal["basic", "all"]
CPU: tuple[str, ...] = ("CPUExecutionProvider",)


def ort_session(
    onnx_path: str | Path,
    threads: int | None = None,
    *,
    optimization: Optimization = "all",
    providers: Sequence[Any] = CPU,
    save_optimized_to: str | Path | None = None,
) -> Any:
    """An `onnxruntime.InferenceSession` on `onnx_path` (CPU unless `providers` says otherwise).

    `save_optimized_to` writes the graph after ONNX Runtime's optimizations (the "basic" level keeps
    it standard ONNX, which TensorRT's parser can still read).
    """
    import onnxruntime as ort  # server-side dependency (extra "server")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or settings.current().ort_threads
    opts.inter_op_num_threads = 1
    if opts.intra_op_num_threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts.graph_optimization_level = levels[optimization]
    if save_optimized_to is not None:
        opts.optimized_model_filepath = str(save_optimized_to)
    return ort.InferenceSession(str(onnx_path), opts, providers=list(providers))
