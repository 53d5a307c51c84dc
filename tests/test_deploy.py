"""Deployment: TensorRT target configs, engine-build planning/caching, ONNX check, docker/ and k8s.

No GPU, Docker engine or TensorRT here: these tests run everything around the engine build
(configs parsed with Triton's model-config protobuf, cache keys, skip/restore/build decisions,
the build driver with a stand-in builder, trtexec command lines, the entrypoint with a stand-in
tritonserver) and the static checks (hadolint, kubernetes-validate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from fracscan.export import tensorrt as trt_mod  # noqa: E402
from fracscan.export.build import build_repository  # noqa: E402
from fracscan.export.onnx_check import OnnxCheckError, check_members, check_onnx_for_tensorrt  # noqa: E402
from fracscan.export.repository import RepositoryOptions, write_repository  # noqa: E402
from fracscan.export.tensorrt import (  # noqa: E402
    BatchProfile,
    BuildEnvironment,
    BuildOptions,
    EngineBuildError,
    build_repository_engines,
    cache_key,
    cc_tag,
    engine_filename,
    engine_status,
    ensure_cc_mapping,
    key_inputs,
    parse_libnvinfer_version,
    plan_member,
    resolve_profile,
    sha256_file,
    sidecar_path,
    tensorrt_members,
    trtexec_command,
    write_sidecar,
)
from fracscan.export.tensorrt.__main__ import main as tensorrt_main  # noqa: E402
from fracscan.spec import parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SIZE = 64
H100 = BuildEnvironment("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")

SPEC_TOML = """
name = "deploy-test"
[preprocess]
size = 64
[regions]
wrist = ["WRIST"]
hand = ["HAND"]
[[members]]
name = "plain"
arch = "drn_d_22"
input = "plain"
onnx = "score.onnx"
[[members]]
name = "mapped"
arch = "drn_d_22"
map = true
onnx = "score_map.onnx"
"""


class _ScoreNet(torch.nn.Module):
    """A tiny conv net with the members' I/O: image [B, 2, S, S] -> score [B, 1] (+ map [B, 1, S/8, S/8])."""

    def __init__(self, with_map: bool):
        super().__init__()
        self.with_map = with_map
        self.conv = torch.nn.Conv2d(2, 4, 3, stride=8, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Conv2d(4, 1, 1)
        self.fc = torch.nn.Linear(4, 1)

    def forward(self, image):
        y = torch.relu(self.bn(self.conv(image)))
        score = torch.sigmoid(self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)))
        return (score, torch.sigmoid(self.head(y))) if self.with_map else score


def _export(path: Path, with_map: bool) -> Path:
    torch.manual_seed(0)
    names = ["score", "map"] if with_map else ["score"]
    torch.onnx.export(
        _ScoreNet(with_map).eval(),
        (torch.zeros(2, 2, SIZE, SIZE),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=names,
        dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
    )
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deploy")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(d / "score.onnx", with_map=False)
        _export(d / "score_map.onnx", with_map=True)
    (d / "spec.toml").write_text(SPEC_TOML)
    return d


@pytest.fixture(scope="module")
def spec(workdir):
    return parse_spec(tomllib.loads(SPEC_TOML), workdir / "spec.toml")


def _repo(spec, workdir: Path, out: Path, target: str, **options) -> Path:
    return write_repository(
        spec, out, target, [workdir / "score.onnx", workdir / "score_map.onnx"], options=RepositoryOptions(**options)
    )


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# ----------------------------------------------------------------------------- configs


def test_tensorrt_member_configs_parse_and_carry_trt_fields(spec, workdir, tmp_path):
    # every option set here, so each expected value comes from this test, not from the generator's defaults
    repo = _repo(
        spec,
        workdir,
        tmp_path / "repo",
        "tensorrt",
        cuda_graphs=True,
        max_batch_size=6,
        preferred_batch_sizes=(2, 6),
        gpu_instances=2,
        trt_compute_capabilities=("8.0", "9.0", "12.0"),
        warmup="zero",
    )
    for index, name in enumerate(["member_00", "member_01"]):
        cfg = _parse(repo / name / "config.pbtxt")
        assert cfg.name == name and cfg.platform == "tensorrt_plan" and not cfg.backend
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
        assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 6]
        assert cfg.max_batch_size == 6
        assert cfg.default_model_filename == "model.plan"  # Triton's fallback for a GPU not in the mapping
        assert dict(cfg.cc_model_filenames) == {
            "8.0": "model.sm80.plan",
            "9.0": "model.sm90.plan",
            "12.0": "model.sm120.plan",
        }
        assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
            ("image", [2, SIZE, SIZE], model_config_pb2.TYPE_FP32)
        ]
        outputs = {o.name: list(o.dims) for o in cfg.output}
        assert outputs == ({"score": [1]} if index == 0 else {"score": [1], "map": [1, SIZE // 8, SIZE // 8]})
        # warmup: a zero-data `image` sample at batch 1 and at max_batch_size
        assert [w.batch_size for w in cfg.model_warmup] == [1, 6]
        for w in cfg.model_warmup:
            sample = w.inputs["image"]
            assert list(sample.dims) == [2, SIZE, SIZE] and sample.data_type == model_config_pb2.TYPE_FP32
            assert sample.WhichOneof("input_data_type") == "zero_data"
        cuda = cfg.optimization.cuda
        assert cuda.graphs
        assert [g.batch_size for g in cuda.graph_spec] == [1, 2, 6]
        assert all(list(g.input["image"].dim) == [2, SIZE, SIZE] for g in cuda.graph_spec)
        assert (repo / name / "1" / "model.onnx").is_file()  # the engine is built from it in the container
    ensemble = _parse(repo / "fracscan" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step][1:4] == ["normalize", "member_00", "member_01"]


def test_default_engine_mapping_covers_the_datacenter_gpus(spec, workdir, tmp_path):
    """NVIDIA's compute capabilities of the GPUs a hospital deploys on (T4 7.5, A100 8.0, A10 8.6, L4 8.9,
    H100 9.0, B200 10.0): each gets an engine file of its own by default, named after its capability."""
    cfg = _parse(_repo(spec, workdir, tmp_path / "repo", "tensorrt") / "member_00" / "config.pbtxt")
    gpus = {"T4": "7.5", "A100": "8.0", "A10": "8.6", "L4": "8.9", "H100": "9.0", "B200": "10.0"}
    mapping = dict(cfg.cc_model_filenames)
    for gpu, cc in gpus.items():
        assert mapping.get(cc) == f"model.sm{cc.replace('.', '')}.plan", gpu
    assert cfg.max_batch_size >= max(cfg.dynamic_batching.preferred_batch_size)


def test_tensorrt_warmup_and_graph_options(spec, workdir, tmp_path):
    repo = _repo(
        spec, workdir, tmp_path / "r", "tensorrt", warmup="random", max_batch_size=4, trt_compute_capabilities=("8.9",)
    )
    cfg = _parse(repo / "member_00" / "config.pbtxt")
    assert [w.batch_size for w in cfg.model_warmup] == [1, 4]
    assert all(w.inputs["image"].WhichOneof("input_data_type") == "random_data" for w in cfg.model_warmup)
    assert dict(cfg.cc_model_filenames) == {"8.9": "model.sm89.plan"}
    assert not cfg.HasField("optimization")  # CUDA graphs are opt-in
    repo = _repo(spec, workdir, tmp_path / "r2", "tensorrt", warmup="none")
    assert not _parse(repo / "member_00" / "config.pbtxt").model_warmup
    with pytest.raises(ValueError, match="warmup"):
        _repo(spec, workdir, tmp_path / "r3", "tensorrt", warmup="ones")


@pytest.mark.parametrize("target,backend", [("cpu", "python"), ("onnxruntime", "onnxruntime")])
def test_other_targets_configs_parse_unchanged(spec, workdir, tmp_path, target, backend):
    repo = _repo(spec, workdir, tmp_path / target, target)
    for name in ("member_00", "member_01", "preprocess", "average", "threshold", "fracscan"):
        cfg = _parse(repo / name / "config.pbtxt")
        assert cfg.name == name
    member = _parse(repo / "member_00" / "config.pbtxt")
    assert member.backend == backend and not member.platform
    assert not member.cc_model_filenames and not member.model_warmup
    if target == "cpu":
        assert member.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert member.default_model_filename == "model.onnx" and not member.instance_group


# ------------------------------------------------------------------ names, keys, commands


def test_engine_names():
    assert cc_tag("9.0") == "90" and cc_tag("8.6") == "86" and cc_tag("12.0") == "120"
    assert engine_filename("9.0") == "model.sm90.plan"
    assert sidecar_path(Path("a/model.sm90.plan")) == Path("a/model.sm90.plan.json")
    for bad in ("9", "sm90", "9.0.1", ""):
        with pytest.raises(ValueError):
            cc_tag(bad)
    with pytest.raises(ValueError):
        BuildEnvironment("10.8", "gpu", "9.0")
    with pytest.raises(ValueError):
        BatchProfile(4, 2, 8)
    with pytest.raises(ValueError):
        BuildOptions("int8")
    assert (
        parse_libnvinfer_version(["libnvinfer.so.10", "libnvinfer.so.10.8.0", "libnvinfer_plugin.so.10.8.0"])
        == "10.8.0"
    )
    assert parse_libnvinfer_version(["libcudart.so.12"]) is None


def test_trtexec_commands():
    options = BuildOptions("fp16", BatchProfile(1, 4, 8), workspace_mib=2048)
    cmd = trtexec_command(
        "trtexec",
        Path("m/1/model.onnx"),
        Path("m/1/model.sm90.plan"),
        options,
        (2, 1024, 1024),
        timing_cache=Path("/cache/timing.cache"),
    )
    assert cmd == [
        "trtexec",
        "--onnx=m/1/model.onnx",
        "--saveEngine=m/1/model.sm90.plan",
        "--minShapes=image:1x2x1024x1024",
        "--optShapes=image:4x2x1024x1024",
        "--maxShapes=image:8x2x1024x1024",
        "--memPoolSize=workspace:2048M",
        "--fp16",
        "--timingCacheFile=/cache/timing.cache",
        "--skipInference",
    ]
    bf16 = trtexec_command("trtexec", Path("a.onnx"), Path("a.plan"), BuildOptions("bf16"), (2, 64, 64))
    assert "--bf16" in bf16 and "--fp16" not in bf16 and not any(c.startswith("--timingCacheFile") for c in bf16)
    fp32 = trtexec_command("trtexec", Path("a.onnx"), Path("a.plan"), BuildOptions("fp32"), (2, 64, 64))
    assert not {"--fp16", "--bf16"} & set(fp32) and "--noTF32" in fp32 and "--noTF32" not in bf16


def test_cache_key_changes_with_each_component():
    base = dict(onnx_sha256="a" * 64, env=H100, options=BuildOptions(), input_name="image", input_dims=(2, 1024, 1024))
    key = cache_key(**base)
    assert key == cache_key(**base) and len(key) == 64
    assert cache_key(**{**base, "options": BuildOptions(workspace_mib=1024)}) == key  # scratch size: same engine
    variants = {
        "onnx bytes": {"onnx_sha256": "b" * 64},
        "tensorrt version": {"env": BuildEnvironment("10.9.0.34", H100.gpu_name, "9.0")},
        "tensorrt build": {"env": BuildEnvironment("10.8.0.44", H100.gpu_name, "9.0")},
        "gpu name": {"env": BuildEnvironment("10.8.0.43", "NVIDIA H100 NVL", "9.0")},
        "compute capability": {"env": BuildEnvironment("10.8.0.43", H100.gpu_name, "8.9")},
        "precision": {"options": BuildOptions("fp32")},
        "profile min": {"options": BuildOptions(profile=BatchProfile(2, 4, 8))},
        "profile opt": {"options": BuildOptions(profile=BatchProfile(1, 2, 8))},
        "profile max": {"options": BuildOptions(profile=BatchProfile(1, 4, 16))},
        "input shape": {"input_dims": (2, 512, 512)},
        "input name": {"input_name": "pixels"},
    }
    keys = {what: cache_key(**{**base, **change}) for what, change in variants.items()}
    assert all(k != key for k in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


# ------------------------------------------------------------------------ skip logic


@pytest.fixture
def trt_repo(spec, workdir, tmp_path) -> Path:
    return _repo(spec, workdir, tmp_path / "repo", "tensorrt")


def test_skip_exactly_when_sidecar_matches(trt_repo):
    member = tensorrt_members(trt_repo)[0]
    options = BuildOptions()
    onnx_sha = sha256_file(member.onnx_path)
    inputs = key_inputs(onnx_sha, H100, options, "image", member.input_dims)
    key = cache_key(onnx_sha, H100, options, "image", member.input_dims)
    plan = member.version_dir / engine_filename("9.0")

    assert engine_status(plan, key) == (False, "no engine")
    plan.write_bytes(b"engine-bytes")
    assert engine_status(plan, key) == (False, "engine without a readable sidecar")
    write_sidecar(plan, {"key": key, **inputs})
    assert engine_status(plan, key, inputs) == (True, "up to date")
    assert json.loads(sidecar_path(plan).read_text())["plan_sha256"] == sha256_file(plan)

    other = BuildOptions("fp32")
    ok, why = engine_status(
        plan,
        cache_key(onnx_sha, H100, other, "image", member.input_dims),
        key_inputs(onnx_sha, H100, other, "image", member.input_dims),
    )
    assert not ok and why == "stale: precision fp16 -> fp32"
    l4 = BuildEnvironment("10.8.0.43", "NVIDIA L4", "9.0")
    ok, why = engine_status(
        plan,
        cache_key(onnx_sha, l4, options, "image", member.input_dims),
        key_inputs(onnx_sha, l4, options, "image", member.input_dims),
    )
    assert not ok and "gpu NVIDIA H100 80GB HBM3 -> NVIDIA L4" in why

    plan.write_bytes(b"engine-bytes, truncated or replaced")
    assert engine_status(plan, key) == (False, "engine bytes differ from the sidecar")
    sidecar_path(plan).write_text("{not json")
    assert engine_status(plan, key)[0] is False


def test_plan_member_decides_skip_restore_build(trt_repo, tmp_path):
    member = tensorrt_members(trt_repo)[0]
    cache = tmp_path / "cache"
    options = BuildOptions()
    step = plan_member(member, H100, options, cache)
    assert step.action == "build" and step.reason == "no engine"
    assert step.plan_path == member.version_dir / "model.sm90.plan"
    assert step.cache_path == cache / f"{step.key}.plan"
    # an engine with this key in the cache: restore instead of building
    cache.mkdir()
    step.cache_path.write_bytes(b"cached engine")
    write_sidecar(step.cache_path, {"key": step.key, **step.inputs})
    assert plan_member(member, H100, options, cache).action == "restore"
    assert plan_member(member, H100, options, None).action == "build"
    # an up-to-date engine in the repository: skip; --force: build
    shutil.copyfile(step.cache_path, step.plan_path)
    write_sidecar(step.plan_path, {"key": step.key, **step.inputs})
    assert plan_member(member, H100, options, cache).action == "skip"
    assert plan_member(member, H100, options, cache, force=True).action == "build"
    # a changed ONNX file makes it stale
    member.onnx_path.write_bytes(member.onnx_path.read_bytes() + b"\0")
    step2 = plan_member(member, H100, options, cache)
    assert step2.action == "build" and step2.reason == "stale: onnx changed"


def test_resolve_profile_defaults_and_limits(trt_repo):
    member = tensorrt_members(trt_repo)[0]
    assert member.max_batch_size == 8 and member.input_dims == (2, SIZE, SIZE) and member.input_name == "image"
    assert resolve_profile(member, None, None, None) == BatchProfile(1, 4, 8)
    assert resolve_profile(member, 2, None, 16) == BatchProfile(2, 4, 16)
    with pytest.raises(ValueError, match="max_batch_size 8"):
        resolve_profile(member, None, None, 4)


class FakeBuilder:
    """Stands in for the TensorRT builder: writes bytes that depend on the inputs."""

    name = "fake"
    version = "10.8.0.43"

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail = fail

    def build(self, member, options, out, timing_cache, log):
        self.calls.append(member.name)
        if member.name in self.fail:
            raise RuntimeError("parser says no")
        out.write_bytes(
            f"{member.name}|{options.precision}|{options.profile}".encode() + member.onnx_path.read_bytes()[:64]
        )
        if timing_cache is not None:
            timing_cache.write_bytes(b"timing")


def test_build_driver_builds_skips_and_restores(trt_repo, tmp_path):
    cache = tmp_path / "engines"
    orin = BuildEnvironment("10.8.0.43", "Orin", "8.7")  # a compute capability the config does not list
    options = lambda member: BuildOptions()  # noqa: E731
    lines: list[str] = []
    builder = FakeBuilder()

    steps = build_repository_engines(trt_repo, orin, builder, options, cache, verify=False, log=lines.append)
    assert [s.action for s in steps] == ["build"] * 3 and builder.calls == ["member_00", "member_01", "normalize"]
    for name in ("member_00", "member_01"):
        plan = trt_repo / name / "1" / "model.sm87.plan"
        side = json.loads(sidecar_path(plan).read_text())
        assert side["builder"] == "fake" and side["compute_capability"] == "8.7" and side["precision"] == "fp16"
        assert (cache / f"{side['key']}.plan").read_bytes() == plan.read_bytes()
        cfg = _parse(trt_repo / name / "config.pbtxt")  # rewritten, still valid
        assert cfg.cc_model_filenames["8.7"] == "model.sm87.plan" and cfg.cc_model_filenames["9.0"] == "model.sm90.plan"
    assert (cache / "timing-trt10.8.0-sm87.cache").read_bytes() == b"timing"
    assert any("verify: skipped" in line for line in lines)

    builder.calls.clear()
    steps = build_repository_engines(trt_repo, orin, builder, options, cache, verify=False, log=lines.append)
    assert [s.action for s in steps] == ["skip"] * 3 and builder.calls == []

    (trt_repo / "member_01" / "1" / "model.sm87.plan").unlink()  # e.g. a fresh container, cache volume kept
    steps = build_repository_engines(trt_repo, orin, builder, options, cache, verify=False, log=lines.append)
    assert [s.action for s in steps] == ["skip", "restore", "skip"] and builder.calls == []
    assert engine_status(trt_repo / "member_01" / "1" / "model.sm87.plan", steps[1].key)[0]

    fp32 = lambda member: BuildOptions("fp32")  # noqa: E731
    steps = build_repository_engines(
        trt_repo, orin, builder, fp32, cache, verify=False, only=["member_00"], log=lines.append
    )
    assert [s.action for s in steps] == ["build"] and builder.calls == ["member_00"]


def test_build_driver_reports_every_failure(trt_repo):
    builder = FakeBuilder(fail={"member_00"})
    with pytest.raises(EngineBuildError, match=r"1 of 3 engine\(s\) failed:\nmember_00: fake failed: RuntimeError"):
        build_repository_engines(
            trt_repo, H100, builder, lambda m: BuildOptions(), None, verify=False, log=lambda s: None
        )
    assert builder.calls == ["member_00", "member_01", "normalize"]  # the others were still built
    assert (trt_repo / "member_01" / "1" / "model.sm90.plan").is_file()
    assert not list((trt_repo / "member_00" / "1").glob("*.plan*"))  # nothing half-written


def test_ensure_cc_mapping_is_idempotent(trt_repo):
    folder = trt_repo / "member_00"
    assert ensure_cc_mapping(folder, "9.0") is False  # already listed: config untouched
    assert ensure_cc_mapping(folder, "11.0") is True
    assert ensure_cc_mapping(folder, "11.0") is False
    assert _parse(folder / "config.pbtxt").cc_model_filenames["11.0"] == "model.sm110.plan"


def test_cli_plan_check_and_build_without_tensorrt(trt_repo, capsys):
    rc = tensorrt_main(
        [
            "plan",
            "--repository",
            str(trt_repo),
            "--trt-version",
            "10.8.0.43",
            "--gpu-name",
            "NVIDIA L4",
            "--compute-capability",
            "8.9",
            "--cache-dir",
            "/var/cache/fracscan/engines",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "member_00: build (no engine)" in out and "member_01: build (no engine)" in out
    assert f"--saveEngine={trt_repo}/member_00/1/model.sm89.plan" in out
    assert "--timingCacheFile=/var/cache/fracscan/engines/timing-trt10.8.0-sm89.cache" in out

    assert tensorrt_main(["check", "--repository", str(trt_repo)]) == 0
    assert capsys.readouterr().out.count(" - OK") == 3  # the members and normalize

    assert (
        tensorrt_main(
            [
                "plan",
                "--repository",
                str(trt_repo),
                "--trt-version",
                "10.8.0.43",
                "--gpu-name",
                "x",
                "--compute-capability",
                "8.9",
                "--max-batch",
                "4",
            ]
        )
        == 1
    )
    assert "max_batch_size 8" in capsys.readouterr().err

    if trt_mod.find_trtexec() is None and not _importable("tensorrt"):
        assert tensorrt_main(["build", "--repository", str(trt_repo)]) == 2
        assert "no TensorRT builder here" in capsys.readouterr().err


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ------------------------------------------------------------------------- ONNX check


def test_onnx_check_passes_torch_exported_conv_nets(workdir):
    for name in ("score.onnx", "score_map.onnx"):
        report = check_onnx_for_tensorrt(workdir / name, expected_inputs={"image": [2, SIZE, SIZE]})
        assert report.ok, report.summary()
        assert report.opset == 17
        assert report.inputs == {"image": ["batch", 2, SIZE, SIZE]}
        assert report.outputs["score"] == ["batch", 1]
        assert {"Conv", "Relu", "Sigmoid", "GlobalAveragePool", "Gemm"} <= set(report.ops)
    folded = check_onnx_for_tensorrt(workdir / "score_map.onnx", fold_constants=True)
    assert folded.ok and folded.folded_nodes is not None and folded.folded_nodes >= 0
    assert check_members([workdir / "score.onnx", workdir / "score_map.onnx"], SIZE)[0].ok


def _graph(path: Path, nodes, inputs, outputs, opset: int = 17, domains=()) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs),
        opset_imports=[helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_check_flags_unsupported_op(tmp_path):
    det = _graph(
        tmp_path / "det.onnx",
        [helper.make_node("Det", ["image"], ["score"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
    )
    report = check_onnx_for_tensorrt(det)
    assert not report.ok and report.unsupported_ops == ["Det"]
    assert any("Det" in e and "not supported by TensorRT" in e for e in report.errors)
    assert check_onnx_for_tensorrt(det, allowed_ops={"Det"}).ok  # verified with trtexec -> allowed
    with pytest.raises(OnnxCheckError, match="Det"):
        report.raise_for_errors()

    # an op missing from both lists is flagged too
    hardswish = _graph(
        tmp_path / "hs.onnx",
        [helper.make_node("HardSwish", ["image"], ["score"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])],
        opset=14,
    )
    report = check_onnx_for_tensorrt(hardswish)
    assert report.unsupported_ops == ["HardSwish"] and "verify with trtexec" in report.errors[0]


def test_onnx_check_flags_dynamic_dims_opset_and_custom_domains(tmp_path):
    dyn = _graph(
        tmp_path / "dyn.onnx",
        [helper.make_node("Relu", ["image"], ["score"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, "height", 64])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 2, "height", 64])],
    )
    errors = check_onnx_for_tensorrt(dyn).errors
    assert any("input 'image' has dynamic non-batch dims at axes [2]" in e for e in errors)
    assert any("output 'score' has dynamic non-batch dims" in e for e in errors)
    wrong = check_onnx_for_tensorrt(dyn, expected_inputs={"image": [2, SIZE, SIZE]}).errors
    assert any("expected [2, 64, 64]" in e for e in wrong)

    old = _graph(
        tmp_path / "old.onnx",
        [helper.make_node("Relu", ["image"], ["score"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])],
        opset=7,
    )
    assert any("opset 7 < 9" in e for e in check_onnx_for_tensorrt(old).errors)

    custom = _graph(
        tmp_path / "custom.onnx",
        [helper.make_node("FusedGelu", ["image"], ["score"], domain="com.example")],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])],
        domains=["com.example"],
    )
    assert any("custom operator domains ['com.example']" in e for e in check_onnx_for_tensorrt(custom).errors)

    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert "not a readable ONNX file" in check_onnx_for_tensorrt(tmp_path / "junk.onnx").errors[0]
    assert "file not found" in check_onnx_for_tensorrt(tmp_path / "nope.onnx").errors[0]


def test_export_runs_the_onnx_check_for_tensorrt(workdir, tmp_path):
    # fracscan export --target tensorrt (build_repository) checks every member first
    out = build_repository(parse_spec(tomllib.loads(SPEC_TOML), workdir / "spec.toml"), tmp_path / "ok", "tensorrt")
    assert _parse(out / "member_01" / "config.pbtxt").platform == "tensorrt_plan"

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shutil.copyfile(workdir / "score.onnx", bad_dir / "score.onnx")
    _graph(
        bad_dir / "score_map.onnx",
        [helper.make_node("Det", ["image"], ["score"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
    )
    (bad_dir / "spec.toml").write_text(SPEC_TOML)
    bad = parse_spec(tomllib.loads(SPEC_TOML), bad_dir / "spec.toml")
    with pytest.raises(ValueError, match="operator Det"):
        build_repository(bad, tmp_path / "bad_out", "tensorrt")
    assert not (tmp_path / "bad_out").exists()
    build_repository(bad, tmp_path / "cpu_out", "cpu")  # other targets are not held to TensorRT's op list


# ---------------------------------------------------------------------- docker / k8s


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} not installed (test extra)")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(dockerfile):
    proc = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfiles_pin_the_base_image_and_tensorrt():
    gpu = (DOCKER / "Dockerfile").read_text()
    assert "ARG TRITON_TAG=25.01-py3" in gpu and "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}" in gpu
    assert "ARG TENSORRT_VERSION=10.8.0.43" in gpu and '"tensorrt-cu12==${TENSORRT_VERSION}"' in gpu
    assert "ARG TRITON_TAG=25.01-py3" in (DOCKER / "Dockerfile.cpu").read_text()
    for text in (gpu, (DOCKER / "Dockerfile.cpu").read_text(), (DOCKER / "requirements-container.txt").read_text()):
        assert "pytriton" not in text.replace("nvidia-pytriton: the container", "")
    readme = (DOCKER / "README.md").read_text()
    assert "25.01-py3" in readme and "10.8.0.43" in readme and "8,057" in readme  # GPU sizing from the FLOPs


def test_k8s_manifests_validate():
    files = sorted(str(p) for p in (DOCKER / "k8s").glob("*.yaml"))
    proc = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", *files], capture_output=True, text=True, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in out, out
    for kind in (
        "deployment/fracscan-triton",
        "service/fracscan-triton",
        "horizontalpodautoscaler/fracscan-triton",
        "configmap/fracscan-prometheus-adapter-rules",
        "deployment/fracscan-listener",
        "service/fracscan-listener",
        "persistentvolumeclaim/fracscan-listener-spool",
        "configmap/fracscan-listener",
    ):
        assert f"passed for resource {kind}" in out, out
    # kustomization.yaml has no schema (a warning); check it by hand
    kustomization = yaml.safe_load((DOCKER / "k8s" / "kustomization.yaml").read_text())
    assert all((DOCKER / "k8s" / r).is_file() for r in kustomization["resources"])
    for extra in (DOCKER / "k8s" / "extras").glob("*.yaml"):  # custom resources: parse only
        assert yaml.safe_load(extra.read_text())["kind"] in {"ServiceMonitor", "InferenceService"}


def test_k8s_manifests_content():
    deployment = yaml.safe_load((DOCKER / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 1800
    probe = ["python3", "-m", "fracscan.cli.health"]  # `fracscan health`, without importing every command
    assert container["readinessProbe"]["exec"]["command"][:4] == [*probe, "--deep"]
    assert container["livenessProbe"]["exec"]["command"][:5] == [*probe, "--live", "--stubs"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    service = yaml.safe_load((DOCKER / "k8s" / "service.yaml").read_text())
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    hpa = yaml.safe_load((DOCKER / "k8s" / "hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2"
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "fracscan_queue_time_ms"
    rules = yaml.safe_load(
        yaml.safe_load((DOCKER / "k8s" / "prometheus-adapter-rules.yaml").read_text())["data"]["config.yaml"]
    )["rules"]
    assert rules[0]["name"]["as"] == "fracscan_queue_time_ms"
    assert "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]
    assert "nv_inference_request_success" in rules[0]["metricsQuery"]


def test_k8s_listener_is_closed_and_probed_by_its_status():
    documents = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "listener.yaml").read_text())}
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["fracscan", "listen"] and "--allow-any" not in command
    for option in ("--allow-file", "--tls-cert", "--tls-key", "--tls-ca", "--tls-require-client-cert", "--spool"):
        assert option in command, option
    spool = command[command.index("--spool") + 1]
    probe = ["python3", "-m", "fracscan.cli.listen", "--status", "--spool", spool]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["exec"]["command"] == probe, kind
    assert {"name": "spool", "mountPath": spool} in container["volumeMounts"]
    assert documents["Deployment"]["spec"]["strategy"]["type"] == "Recreate"  # one pod on the spool
    allow = [line.split("#")[0].strip() for line in documents["ConfigMap"]["data"]["allow.txt"].splitlines()]
    assert all("@" in entry for entry in allow if entry)


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu, cpu = compose["services"]["triton"], compose["services"]["triton-cpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for service in (gpu, cpu):
        assert service["shm_size"] == "2gb"
        assert sorted(service["ports"]) == ["8000:8000", "8001:8001", "8002:8002"]
        assert "fracscan.cli.health --deep" in " ".join(service["healthcheck"]["test"])
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert "engine-cache:/var/cache/fracscan/engines" in gpu["volumes"] and "engine-cache" in compose["volumes"]
    assert cpu["profiles"] == ["cpu"] and "profiles" not in gpu


# ------------------------------------------------------------------------ entrypoint


def _fake_bin(tmp_path: Path, python_exit: int | None, interpreter: bool = True) -> Path:
    """A PATH folder with a stand-in tritonserver (records its argv) and python3: this interpreter for
    `-m fracscan.server` (the command line is fracscan's own), a stand-in for the engine build that records
    its argv and exits `python_exit` (None: this interpreter too, the real build command runs).
    `interpreter` False (a user who cannot run this interpreter): `-m fracscan.server` prints only the binary
    and the repository it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$FAKE_LOG/tritonserver.args"\n')
    real = f'exec "{sys.executable}" "$@"'
    if not interpreter:
        real = 'printf "tritonserver\\n--model-repository=%s\\n" "$5"; exit 0'
    build = real if python_exit is None else f'printf "%s\\n" "$@" > "$FAKE_LOG/python3.args"\nexit {python_exit}'
    (bin_dir / "python3").write_text(
        f'#!/usr/bin/env bash\nif [[ "$1 $2" == "-m fracscan.server" ]]; then {real}; fi\n{build}\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _entrypoint(tmp_path: Path, bin_dir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    full = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path),
        **env,
    }
    return subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args], env=full, capture_output=True, text=True, timeout=120
    )


def test_entrypoint_execs_tritonserver_with_explicit_settings(trt_repo, tmp_path):
    bin_dir = _fake_bin(tmp_path, python_exit=0)
    proc = _entrypoint(
        tmp_path,
        bin_dir,
        {"FRACSCAN_MODEL_REPOSITORY": str(trt_repo), "FRACSCAN_SKIP_ENGINE_BUILD": "1"},
        "--log-verbose=1",
    )
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "tritonserver.args").read_text().split()
    args = [a.rsplit("=", 1)[0] + "=KEY" if "admin-key=" in a else a for a in args]  # a random key per start
    assert args == [  # written out here, not built: the container's settings, flag by flag
        f"--model-repository={trt_repo}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--allow-metrics=true",
        "--backend-config=python,shm-default-byte-size=67108864",
        "--backend-config=python,shm-growth-byte-size=67108864",
        "--http-restricted-api=shared-memory,logging,trace:fracscan-admin-key=KEY",
        "--grpc-restricted-protocol=shared-memory,logging,trace:fracscan-admin-key=KEY",
        "--log-verbose=1",
    ]
    assert not (tmp_path / "python3.args").exists()  # skipped on request

    proc = _entrypoint(
        tmp_path,
        bin_dir,
        {
            "FRACSCAN_MODEL_REPOSITORY": str(trt_repo),
            "FRACSCAN_ENGINE_CACHE": "/c",
            "FRACSCAN_PRECISION": "fp32",
            "FRACSCAN_BUILD_ARGS": "--max-batch 16",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "python3.args").read_text().split() == [
        "-m",
        "fracscan.export.tensorrt",
        "build",
        "--repository",
        str(trt_repo),
        "--cache-dir",
        "/c",
        "--precision",
        "fp32",
        "--max-batch",
        "16",
    ]

    proc = _entrypoint(tmp_path, bin_dir, {"FRACSCAN_MODEL_REPOSITORY": str(tmp_path / "nowhere")})
    assert proc.returncode == 2 and "not a fracscan repository" in proc.stderr


def test_entrypoint_fails_clearly_without_tensorrt(trt_repo, tmp_path):
    if trt_mod.find_trtexec() is not None or _importable("tensorrt"):
        pytest.skip("a TensorRT builder is installed here")
    bin_dir = _fake_bin(tmp_path, python_exit=None)
    proc = _entrypoint(
        tmp_path,
        bin_dir,
        {"FRACSCAN_MODEL_REPOSITORY": str(trt_repo), "FRACSCAN_ENGINE_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2
    assert "no TensorRT builder here" in proc.stderr
    assert not (tmp_path / "tritonserver.args").exists()  # the server is not started without engines


def test_entrypoint_mirrors_a_read_only_repository(trt_repo):
    """A read-only repository mount is served through a writable mirror (files linked)."""
    as_nobody: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: run the entrypoint as nobody instead
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
        as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="fracscan-ro-"))  # not under pytest's 0700 tmp folders
    try:
        base.chmod(0o755)
        repo, log = base / "repo", base / "log"
        shutil.copytree(trt_repo, repo)
        log.mkdir(mode=0o777)
        log.chmod(0o777)
        bin_dir = _fake_bin(base, python_exit=0, interpreter=not as_nobody)
        for p in [repo, *repo.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        mirror = log / "mirror"
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(log),
            "FAKE_LOG": str(log),
            "FRACSCAN_MODEL_REPOSITORY": str(repo),
            "FRACSCAN_WRITABLE_REPOSITORY": str(mirror),
        }
        for _ in range(2):  # a second start replaces the first mirror
            proc = subprocess.run(
                [*as_nobody, "bash", str(DOCKER / "entrypoint.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
        assert f"--model-repository={mirror}" in (log / "tritonserver.args").read_text().split()
        assert (log / "python3.args").read_text().split()[3:5] == ["--repository", str(mirror)]
        assert (mirror / "member_00" / "config.pbtxt").is_symlink()
        assert (mirror / "member_00" / "1" / "model.onnx").resolve() == repo / "member_00" / "1" / "model.onnx"
        assert all(
            os.stat(d).st_mode & 0o200 for d in [mirror, *mirror.rglob("*")] if d.is_dir() and not d.is_symlink()
        )
    finally:
        for p in base.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_entrypoint_restricts_the_apis_unless_allowed(tmp_path):
    bin_dir = _fake_bin(tmp_path, python_exit=0)
    (tmp_path / "fracscan.toml").write_text("")

    def flags(allow: str) -> tuple[subprocess.CompletedProcess, str]:
        env = {
            "FRACSCAN_MODEL_REPOSITORY": str(tmp_path),
            "FRACSCAN_SKIP_ENGINE_BUILD": "1",
            "FRACSCAN_ALLOW_API": allow,
        }
        done = _entrypoint(tmp_path, bin_dir, env)
        args = tmp_path / "tritonserver.args"
        text = args.read_text() if done.returncode == 0 else ""
        args.unlink(missing_ok=True)
        return done, text

    default = [a for a in flags("")[1].split() if "restricted" in a]
    assert [a.split("=", 1)[0] for a in default] == ["--http-restricted-api", "--grpc-restricted-protocol"]
    assert all(a.split("=", 1)[1].startswith("shared-memory,logging,trace:fracscan-admin-key=") for a in default)
    key = default[0].rsplit("=", 1)[1]
    assert len(key) == 32 and default[1].endswith(key) and key not in flags("")[1]  # a new random key per start
    assert "=shared-memory,trace:" in flags("logging")[1]
    assert "restricted" not in flags("shared-memory,logging,trace")[1]
    refused, _ = flags("model-control")
    assert refused.returncode == 2 and "cannot allow model-control" in refused.stderr
    assert "FRACSCAN_ALLOW_API" in refused.stderr
    bad_size = _entrypoint(
        tmp_path,
        bin_dir,
        {
            "FRACSCAN_MODEL_REPOSITORY": str(tmp_path),
            "FRACSCAN_SKIP_ENGINE_BUILD": "1",
            "FRACSCAN_SHM_GROWTH_BYTES": "1M",
        },
    )
    assert bad_size.returncode == 2 and "--shm-growth-bytes: invalid int value: '1M'" in bad_size.stderr


def test_the_embedded_server_adds_only_what_the_wheel_needs_to_the_container_command(tmp_path):
    """Every flag the entrypoint passes is in EmbeddedServer's command; it adds only the pytriton wheel's
    backends, the listening address, the exit timeout and its /dev/shm region names."""
    from fracscan.server import EmbeddedServer

    def blank_key(args: list[str]) -> set[str]:
        return {a.rsplit("=", 1)[0] + "=KEY" if "admin-key=" in a else a for a in args}

    bin_dir = _fake_bin(tmp_path, python_exit=0)
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository", repo)
    done = _entrypoint(tmp_path, bin_dir, {"FRACSCAN_MODEL_REPOSITORY": str(repo), "FRACSCAN_ALLOW_API": "trace"})
    assert done.returncode == 0, done.stderr
    container = blank_key((tmp_path / "tritonserver.args").read_text().split())
    embedded = blank_key(EmbeddedServer(repo, 8000, 8001, 8002, allow_apis=("trace",)).command()[1:])
    assert container <= embedded
    added = sorted(
        a.split("=", 1)[0] + ("=" + a.split("=")[1] if a.startswith("--backend-config") else "")
        for a in embedded - container
    )
    assert added == [
        "--backend-config=python,shm-region-prefix-name",
        "--backend-directory",
        "--exit-timeout-secs",
        "--grpc-address",
        "--http-address",
    ]
