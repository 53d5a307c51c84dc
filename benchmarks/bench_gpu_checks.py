"""The GPU checks of `make bench-gpu` besides member timing (benchmarks/bench_gpu.py --report).

Each returns a JSON-ready dict; one whose library is missing returns {"skipped": why} instead of failing
the run, so the report always says what was and was not measured.

  decision_flips  the demo ensemble's decisions on the demo test split with its ONNX members on CUDA in
                  FP32 and in FP16 (onnxconverter-common, inputs and outputs kept FP32), through the
                  in-process pipeline (fracscan.pipeline.ReferenceRunner): flips, score differences;
  normalize       the `normalize` ONNX graph (fracscan.export.normalize) on CUDA against numpy's
                  normalize_frame, at the demo's S and at S = 1024: time per frame and parity;
  nvimgcodec      a 3000 x 2500 JPEG 2000 lossless codestream (12-bit values) decoded by nvImageCodec (nvJPEG2000)
                  on the GPU against Pillow (OpenJPEG) on one core: time and pixel equality.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np

from fracscan import contract as c
from fracscan.onnxrt import ort_session
from fracscan.pipeline import ReferenceRunner, prepare_frame
from fracscan.preprocess import normalize_frame
from fracscan.spec import builtin_spec_path, load_spec

CUDA_EP = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _cuda_session(path: Path, device: str):
    providers = CUDA_EP if device == "cuda" else ("CPUExecutionProvider",)
    session = ort_session(path, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime did not place {path} on CUDA: {session.get_providers()}")
    return session


def _ort_cuda_missing(device: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def decision_flips(repository: Path, device: str) -> dict:
    """FP16 against FP32 members on the demo test split: decisions that flip, and how far scores move."""
    if device != "cuda":
        return {"skipped": "dry run on CPU: FP16 members need CUDA"}
    missing = _ort_cuda_missing(device)
    if missing:
        return {"skipped": missing}
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        return {"skipped": "FP16 members need onnx and onnxconverter-common (pip install onnxconverter-common)"}
    from fracscan.demo.build import make_split, predictions

    recorded = Path(__file__).resolve().parent.parent / "demo" / "test_predictions.jsonl"
    n = sum(1 for line in recorded.read_text().splitlines() if line.strip())
    runner = ReferenceRunner(repository)
    split = make_split("test", n, runner.repo.spec)
    members = range(len(runner.repo.spec.members))
    answers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            paths = []
            for i in members:
                path = runner.repo.member_onnx(i)
                if precision == "fp16":
                    half = float16.convert_float_to_float16(onnx.load(path), keep_io_types=True)
                    path = Path(tmp) / f"{c.member_model(i)}_fp16.onnx"
                    onnx.save(half, path)
                paths.append(path)
            runner.sessions = [_cuda_session(p, device) for p in paths]
            answers[precision] = predictions(runner, split, "test")
    diffs = [abs(a["score"] - b["score"]) for a, b in zip(answers["fp32"], answers["fp16"], strict=True)]
    flips = [
        a["source"] for a, b in zip(answers["fp32"], answers["fp16"], strict=True) if a["fracture"] != b["fracture"]
    ]
    return {
        "cases": n,
        "flipped_decisions": len(flips),
        "flipped_sources": flips,
        "max_abs_score_difference": max(diffs),
        "mean_abs_score_difference": float(np.mean(diffs)),
    }


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def normalize(repository_spec, device: str, reps: int = 20, batch: int = 8) -> dict:
    """The normalize graph on CUDA (I/O through host memory, as Triton's ONNX backend would copy it) against numpy."""
    missing = _ort_cuda_missing(device)
    if missing:
        return {"skipped": missing}
    try:
        from fracscan.export.normalize import write_normalize_onnx
    except ImportError as exc:
        return {"skipped": f"the normalize graph needs the export extra: {exc}"}
    from fracscan.demo.synthetic import make_case, png_bytes

    out = {}
    specs = {"demo": repository_spec, "full_size": load_spec(builtin_spec_path("jones2020"))}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            pre = spec.preprocess
            session = _cuda_session(write_normalize_onnx(pre, Path(tmp) / f"{name}.onnx"), device)
            frames = np.stack(
                [prepare_frame(png_bytes(make_case(s, fracture=bool(s % 2))), None, spec).frame for s in range(batch)]
            )
            out[name] = _normalize_one(session, frames, pre, reps, device)
    return out


def _normalize_one(session, frames: np.ndarray, pre, reps: int, device: str) -> dict:
    graph = session.run([c.PIXELS], {c.FRAME: frames})[0]
    reference = np.stack([normalize_frame(f[0], pre) for f in frames])
    diff = np.abs(graph - reference).reshape(len(frames), pre.channels, -1).mean(axis=2)
    return {
        "size": pre.size,
        "batch": len(frames),
        "graph_device": device,
        "graph_ms_per_batch": _median_ms(lambda: session.run([c.PIXELS], {c.FRAME: frames}), reps),
        "numpy_ms_per_frame": _median_ms(lambda: normalize_frame(frames[0, 0], pre), max(reps // 4, 3)),
        "max_mean_abs_difference_per_channel": [float(x) for x in diff.max(axis=0)],
    }


def nvimgcodec_decode(reps: int = 10) -> dict:
    """nvImageCodec's JPEG 2000 decode on the GPU against Pillow's on the CPU, one 3000 x 2500 lossless image."""
    try:
        from nvidia import nvimgcodec
    except ImportError:
        return {"skipped": "nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu12[nvjpeg2k])"}
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2500, 0:3000]
    pixels = ((np.sin(xx / 150.0) + np.cos(yy / 90.0) + 2) * 1000 + rng.integers(0, 32, (2500, 3000))).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    data = buf.getvalue()
    params = nvimgcodec.DecodeParams(allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED)
    decoder = nvimgcodec.Decoder()
    try:
        decoded = np.asarray(decoder.decode(data, params=params).cpu()).reshape(pixels.shape)
    except Exception as exc:  # an API or codec difference on this install: say so in the report
        return {"error": f"{type(exc).__name__}: {exc}"}

    def pillow() -> None:
        with Image.open(io.BytesIO(data)) as img:
            img.load()

    return {
        "image": "3000 x 2500, values below 4096, JPEG 2000 lossless codestream",
        "bytes": len(data),
        "identical_to_source": bool(np.array_equal(decoded, pixels)),
        "gpu_ms": _median_ms(lambda: decoder.decode(data, params=params).cpu(), reps),
        "pillow_cpu_ms": _median_ms(pillow, max(reps // 3, 3)),
    }
