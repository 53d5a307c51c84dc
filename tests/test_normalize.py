"""The `normalize` step (FRAME -> PIXELS): every path against `prepare()`, per channel.

Paths: the served `preprocess` + `normalize` models of the shared test server (the committed demo, cpu
target: the numpy path), and the ONNX graph of the GPU targets in ONNX Runtime, at the demo's S = 128
and the full-size S = 1024. The tolerance: plain channel exact, LCN's mean absolute
difference <= 0.005.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tritonclient.http as httpclient
from conftest import example_files, synthetic_png

from fracscan import contract as c

pytest.importorskip("onnx")

from fracscan.export.normalize import normalize_graph, reflect_indices, write_normalize_onnx
from fracscan.export.repository import (
    RepositoryOptions,
    config_text,
    normalize_config,
    parse_config,
    preprocess_instances_for,
)
from fracscan.onnxrt import ort_session
from fracscan.pipeline import EnsembleRepository, prepare, prepare_frame
from fracscan.spec import PreprocessSpec, builtin_spec_path, load_spec, save_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from reference_preprocess import local_contrast_normalize as scipy_lcn

LCN_MAD = 0.005


def _inputs() -> list[bytes]:
    return [p.read_bytes() for p in example_files()[:5]] + [synthetic_png(1), synthetic_png(2, (900, 640))]


def _assert_channels(pixels: np.ndarray, expected: np.ndarray) -> None:
    assert pixels.shape == expected.shape and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], expected[0])  # the plain channel: exact
    assert float(np.abs(pixels[1] - expected[1]).mean()) <= LCN_MAD
    assert pixels[1].min() >= -1.0 and pixels[1].max() <= 1.0


def _ort_session_for(spec: PreprocessSpec):
    import onnxruntime as ort

    return ort.InferenceSession(normalize_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])


def _call(client: httpclient.InferenceServerClient, model: str, name: str, value: np.ndarray, outputs: list[str]):
    datatype = "BYTES" if value.dtype == np.object_ else "FP32"
    request = httpclient.InferInput(name, list(value.shape), datatype)
    request.set_data_from_numpy(value)
    result = client.infer(model, [request], outputs=[httpclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_served_preprocess_and_normalize_equal_prepare(server, repository):
    spec = EnsembleRepository.open(repository).spec
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    images = _inputs()
    framed = _call(
        client, c.PREPROCESS_MODEL, c.IMAGE, np.array([[x] for x in images], dtype=np.object_), [c.FRAME, c.GEOMETRY]
    )
    assert framed[c.FRAME].shape == (len(images), 1, spec.preprocess.size, spec.preprocess.size)
    served = _call(client, c.NORMALIZE_MODEL, c.FRAME, framed[c.FRAME], [c.PIXELS])[c.PIXELS]
    for i, data in enumerate(images):
        expected = prepare(data, None, spec)
        np.testing.assert_array_equal(framed[c.FRAME][i, 0], expected.pixels[0])
        np.testing.assert_array_equal(framed[c.GEOMETRY][i], expected.geometry.to_array())
        _assert_channels(served[i], expected.pixels)


@pytest.mark.parametrize("spec_source", ["demo", "jones2020"])
def test_onnx_graph_equals_prepare(spec_source, repository, tmp_path):
    path = repository / c.SPEC_FILE if spec_source == "demo" else builtin_spec_path("jones2020")
    spec = load_spec(path)
    session = ort_session(write_normalize_onnx(spec.preprocess, tmp_path / c.ONNX_FILE))
    images = _inputs()[:4]
    frames = np.stack([prepare_frame(data, None, spec).frame for data in images])
    pixels = session.run([c.PIXELS], {c.FRAME: frames})[0]  # one batch: the batch dimension is dynamic
    for data, got in zip(images, pixels, strict=True):
        _assert_channels(got, prepare(data, None, spec).pixels)


@pytest.mark.parametrize("spec", [PreprocessSpec(size=96, lcn_sigma=2.0), PreprocessSpec(size=256, lcn_sigma=4.0)])
def test_onnx_graph_borders_are_scipys_reflect(spec):
    """Against the frozen scipy LCN at full resolution, borders included: REFLECT_101 padding would fail this."""
    rng = np.random.default_rng(7)
    size = spec.size
    frame = np.clip(rng.normal(0, 0.4, (size, size)) + np.linspace(-1, 1, size)[None, :], -1, 1).astype(np.float32)
    frame[:, :3] = 1.0  # a bright edge column: the border rule decides the first columns' local mean
    got = _ort_session_for(spec).run([c.PIXELS], {c.FRAME: frame[None, None]})[0][0]
    np.testing.assert_array_equal(got[0], frame)
    np.testing.assert_allclose(got[1], scipy_lcn(frame, spec), atol=1e-4)


@pytest.mark.parametrize("size, radius", [(10, 3), (10, 10), (5, 12), (1, 2)])
def test_reflect_indices_are_scipys_reflect(size, radius):
    x = np.arange(size, dtype=np.float64) * 3.0 + 1.0
    padded = x[reflect_indices(size, radius)]
    for shift in range(-radius, radius + 1):
        delta = np.zeros(2 * radius + 1)
        delta[radius + shift] = 1.0  # correlating with a shifted delta reads scipy's own padded signal
        np.testing.assert_array_equal(
            ndi.correlate1d(x, delta, mode="reflect"), padded[radius + shift : radius + shift + size]
        )
    if radius <= size:
        np.testing.assert_array_equal(padded, np.pad(x, radius, mode="symmetric"))


def test_normalize_configs_per_target():
    spec = load_spec(builtin_spec_path("jones2020"))
    options = RepositoryOptions(preprocess_instances=3)
    cpu = parse_config(config_text(normalize_config(spec, "cpu", options)))
    assert cpu.backend == "python" and cpu.instance_group[0].count == 3
    ort = parse_config(config_text(normalize_config(spec, "onnxruntime", options)))
    assert ort.backend == "onnxruntime" and ort.default_model_filename == c.ONNX_FILE
    trt = parse_config(config_text(normalize_config(spec, "tensorrt", options)))
    assert trt.platform == "tensorrt_plan" and trt.parameters["precision"].string_value == "fp32"
    assert trt.model_warmup[0].inputs[c.FRAME].dims == [1, 1024, 1024]
    for cfg in (cpu, ort, trt):
        assert [(t.name, list(t.dims)) for t in cfg.input] == [(c.FRAME, [1, 1024, 1024])]
        assert [(t.name, list(t.dims)) for t in cfg.output] == [(c.PIXELS, [2, 1024, 1024])]


def test_tensorrt_build_reads_normalize_as_fp32(tmp_path):
    """The engine build picks up `normalize` with precision fp32, the members with the build's own."""
    from fracscan.export.repository import write_repository
    from fracscan.export.tensorrt.config import tensorrt_members

    spec = load_spec(builtin_spec_path("jones2020"))
    members = []
    for i in range(len(spec.members)):  # stand-ins: the build only reads the member files' presence here
        members.append(tmp_path / f"m{i}.onnx")
        members[-1].write_bytes(b"onnx")
    repo = write_repository(spec, tmp_path / "repo", "tensorrt", members)
    found = {m.name: m for m in tensorrt_members(repo)}
    assert found[c.NORMALIZE_MODEL].precision == "fp32" and found[c.NORMALIZE_MODEL].input_name == c.FRAME
    assert found[c.member_model(0)].precision is None
    assert (repo / c.NORMALIZE_MODEL / c.MODEL_VERSION / c.ONNX_FILE).is_file()


@pytest.mark.parametrize(
    "cores, target, instances", [(None, "cpu", 2), (1, "tensorrt", 1), (4, "tensorrt", 3), (4, "cpu", 4)]
)
def test_preprocess_instances_for_the_cores(cores, target, instances):
    assert preprocess_instances_for(cores, target) == instances


def test_export_cpu_cores_sizes_preprocess_and_normalize(repository, tmp_path):
    repo = EnsembleRepository.open(repository)
    members = tuple(replace(m, onnx=str(repo.member_onnx(i))) for i, m in enumerate(repo.spec.members))
    save_spec(replace(repo.spec, members=members), tmp_path / "spec.toml")
    out = tmp_path / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fracscan.cli",
            "export",
            "--spec",
            str(tmp_path / "spec.toml"),
            "--target",
            "cpu",
            "-o",
            str(out),
            "--cpu-cores",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for model in (c.PREPROCESS_MODEL, c.NORMALIZE_MODEL):
        assert parse_config((out / model / c.CONFIG_FILE).read_text()).instance_group[0].count == 5
