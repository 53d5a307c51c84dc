"""Checking a freshly built engine against ONNX Runtime before it is installed.

The engine runs through the TensorRT runtime on whichever CUDA array library is installed - torch
(with CUDA), else polygraphy, else cuda-python - and ONNX Runtime (CPU) runs the same `model.onnx`
on the same random inputs at the profile's batch sizes. The result names the library that ran, and
the build driver refuses an engine whose outputs differ by more than the precision's limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracscan.export.tensorrt.builders import import_cudart
from fracscan.export.tensorrt.cache import BatchProfile
from fracscan.export.tensorrt.config import MemberInfo
from fracscan.export.tensorrt.errors import BuilderUnavailable, EngineBuildError
from fracscan.onnxrt import ort_session

# Verification tolerance on the members' outputs (probabilities in [0, 1]), per precision.
DEFAULT_MAX_ABS_DIFF = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}

Outputs = list[dict[str, Any]]  # one {output name: array} per input batch


@dataclass
class VerifyResult:
    """How far the engine is from ONNX Runtime, per output, and which library ran it."""

    backend: str  # which CUDA array library ran the engine
    batches: list[int]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # output name -> max |TRT - ORT|

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def _run_with_torch(trt: Any, plan: bytes, feeds: list[Any], input_name: str) -> Outputs:
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        raise ImportError("torch has no CUDA here")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    results = []
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch leaves Stream's constructor unannotated
    for x in feeds:
        x_dev = torch.from_numpy(x).cuda()
        context.set_input_shape(input_name, tuple(x.shape))
        context.set_tensor_address(input_name, x_dev.data_ptr())
        bufs = {}
        for n in outputs:
            np_dtype = trt.nptype(engine.get_tensor_dtype(n))
            torch_dtype = torch.from_numpy(np.empty(0, np_dtype)).dtype
            bufs[n] = torch.empty(tuple(context.get_tensor_shape(n)), dtype=torch_dtype, device="cuda")
            context.set_tensor_address(n, bufs[n].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("execute_async_v3 failed")
        stream.synchronize()
        results.append({n: b.cpu().numpy() for n, b in bufs.items()})
    return results


def _run_with_polygraphy(trt: Any, plan: bytes, feeds: list[Any], input_name: str) -> Outputs:
    import numpy as np
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    results = []
    with TrtRunner(EngineFromBytes(plan)) as runner:
        for x in feeds:
            out = runner.infer(feed_dict={input_name: x})
            results.append({n: np.array(v) for n, v in out.items()})  # copy: buffers are reused
    return results


def _run_with_cuda_python(trt: Any, plan: bytes, feeds: list[Any], input_name: str) -> Outputs:
    import numpy as np

    cudart = import_cudart()

    def ok(ret: Any) -> Any:
        err, *rest = ret if isinstance(ret, tuple) else (ret,)
        if int(err) != 0:
            raise EngineBuildError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    stream = ok(cudart.cudaStreamCreate())
    h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    results = []
    try:
        for x in feeds:
            x = np.ascontiguousarray(x)
            allocations = []
            try:
                d_in = ok(cudart.cudaMalloc(x.nbytes))
                allocations.append(d_in)
                ok(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, h2d))
                context.set_input_shape(input_name, tuple(x.shape))
                context.set_tensor_address(input_name, int(d_in))
                host = {}
                for n in outputs:
                    host[n] = np.empty(tuple(context.get_tensor_shape(n)), trt.nptype(engine.get_tensor_dtype(n)))
                    d_out = ok(cudart.cudaMalloc(max(host[n].nbytes, 1)))
                    allocations.append(d_out)
                    context.set_tensor_address(n, int(d_out))
                if not context.execute_async_v3(int(stream)):
                    raise EngineBuildError("execute_async_v3 failed")
                ok(cudart.cudaStreamSynchronize(stream))
                for n, d_out in zip(outputs, allocations[1:], strict=True):
                    ok(cudart.cudaMemcpy(host[n].ctypes.data, d_out, host[n].nbytes, d2h))
                results.append(host)
            finally:
                for a in allocations:
                    cudart.cudaFree(a)
    finally:
        cudart.cudaStreamDestroy(stream)
    return results


_RUNNERS: tuple[tuple[str, Callable[[Any, bytes, list[Any], str], Outputs]], ...] = (
    ("torch", _run_with_torch),
    ("polygraphy", _run_with_polygraphy),
    ("cuda-python", _run_with_cuda_python),
)


def verification_inputs(input_dims: tuple[int, ...], batches: list[int], seed: int = 0) -> list[Any]:
    """Random inputs in [-1, 1] (the range of pre-processed radiographs), one per batch size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (b, *input_dims)).astype(np.float32) for b in batches]


def verify_engine(plan_path: Path, member: MemberInfo, profile: BatchProfile, seed: int = 0) -> VerifyResult:
    """Run the engine and ONNX Runtime (CPU) on a few random inputs; max |difference| per output.

    Needs the TensorRT runtime and a CUDA array library: torch (with CUDA), else polygraphy,
    else cuda-python - the first one importable. The result names which one ran.
    """
    import numpy as np

    try:
        import tensorrt as trt  # the runtime, only inside the serving container
    except ImportError:
        raise BuilderUnavailable(
            "verification needs the TensorRT Python runtime (pip install "
            "tensorrt-cu12==<the container's TensorRT version>), or pass --no-verify"
        ) from None

    batches = sorted({profile.min, profile.opt, profile.max})
    feeds = verification_inputs(member.input_dims, batches, seed)
    plan = Path(plan_path).read_bytes()
    got, backend, failures = None, None, []
    for name, run in _RUNNERS:
        try:
            got = run(trt, plan, feeds, member.input_name)
            backend = name
            break
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    if got is None or backend is None:
        raise BuilderUnavailable(
            "cannot run the engine for verification: no CUDA array library "
            f"({'; '.join(failures)}); install polygraphy or cuda-python, or pass --no-verify"
        )
    session = ort_session(member.onnx_path)
    names = [o.name for o in session.get_outputs()]
    result = VerifyResult(backend=backend, batches=batches)
    for x, trt_out in zip(feeds, got, strict=True):
        for name, ref in zip(names, session.run(names, {member.input_name: x}), strict=True):
            if name not in trt_out:
                raise EngineBuildError(f"{member.name}: engine has no output {name!r} (has {sorted(trt_out)})")
            out = np.asarray(trt_out[name], dtype=np.float32).reshape(ref.shape)
            diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            result.max_abs_diff[name] = max(result.max_abs_diff.get(name, 0.0), diff)
    return result
