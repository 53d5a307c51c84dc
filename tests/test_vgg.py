"""The vgg16 member (Olczak et al. 2017): torchvision layout, exact 7 x 7 pooling, heads, checkpoints, ONNX export."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from fracscan import contract
from fracscan.demo.inputs import synthetic_radiographs
from fracscan.export.checkpoints import to_member_state
from fracscan.export.flops import member_cost
from fracscan.export.members import (
    CheckpointMismatchError,
    build_member,
    compare_state_dict,
    count_parameters,
    load_member,
)
from fracscan.export.onnx_check import check_members
from fracscan.export.onnx_export import check_parity, export_member
from fracscan.export.vgg import pooling_to_7
from fracscan.onnxrt import ort_session
from fracscan.spec import builtin_spec_path, load_spec, save_spec

pytestmark = pytest.mark.torch

S = 256
OLCZAK = load_spec(builtin_spec_path("olczak2017"))
DEMO = load_spec(builtin_spec_path("demo"))
VGG = OLCZAK.members[0]  # vgg16, width 1.0, pixel_channels 1, heads laterality / body_part / view
SMALL = dataclasses.replace(VGG, width=1 / 16)

# torchvision's vgg16, written out from its published layout: features index -> (out, in) channels of
# each 3x3 conv (a ReLU follows each), max pools at 4, 9, 16, 23, 30; classifier index -> (out, in).
TV_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256)}
TV_CONVS |= {17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
TV_POOLS = (4, 9, 16, 23, 30)
TV_LINEARS = {0: (4096, 512 * 7 * 7), 3: (4096, 4096), 6: (1000, 4096)}
TORCHVISION_VGG16_PARAMETERS = 138_357_544  # torchvision.models.vgg16(): its documented parameter count
IMAGENET_CLASSIFIER_PARAMETERS = 4096 * 1000 + 1000  # classifier.6


def torchvision_shapes(divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """torchvision vgg16's state_dict keys and shapes, every width divided by `divisor` (not the RGB input)."""

    def ch(c: int) -> int:
        return c if c == 3 else c // divisor

    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cout, cin) in TV_CONVS.items():
        shapes[f"features.{i}.weight"] = (ch(cout), ch(cin), 3, 3)
        shapes[f"features.{i}.bias"] = (ch(cout),)
    for i, (cout, cin) in TV_LINEARS.items():
        out = cout if i == 6 else cout // divisor  # the 1000 ImageNet classes stay 1000
        shapes[f"classifier.{i}.weight"] = (out, cin // divisor)
        shapes[f"classifier.{i}.bias"] = (out,)
    return shapes


def trained_heads(hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """score_head and one head per class list of the Olczak spec, as a fine-tuned network has them."""
    state = {"score_head.weight": torch.randn(1, hidden, generator=generator) * 0.05, "score_head.bias": torch.zeros(1)}
    for h in VGG.heads:
        state[f"heads.{h.name}.weight"] = torch.randn(len(h.classes), hidden, generator=generator) * 0.05
        state[f"heads.{h.name}.bias"] = torch.randn(len(h.classes), generator=generator) * 0.1
    return state


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=g) * (0.5 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1.0))
        for k, shape in shapes.items()
    }


def reference_forward(state: dict[str, torch.Tensor], gray: torch.Tensor) -> dict[str, torch.Tensor]:
    """What torchvision's VGG-16 computes on the gray image as RGB, with its AdaptiveAvgPool2d(7), then the heads."""
    rgb = (gray.repeat(1, 3, 1, 1) + 1) / 2
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (rgb - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    for i in range(31):
        if i in TV_CONVS:
            x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
        elif i in TV_POOLS:
            x = F.max_pool2d(x, 2, 2)
    x = torch.nn.AdaptiveAvgPool2d(7)(x).flatten(1)
    for i in (0, 3):
        x = F.relu(F.linear(x, state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"]))
    out = {contract.MEMBER_SCORE: torch.sigmoid(F.linear(x, state["score_head.weight"], state["score_head.bias"]))}
    for h in VGG.heads:
        logits = F.linear(x, state[f"heads.{h.name}.weight"], state[f"heads.{h.name}.bias"])
        out[contract.member_head(h.name)] = torch.softmax(logits, dim=1)
    return out


def test_the_hand_written_layout_is_torchvision_vgg16():
    total = sum(int(np.prod(s)) for s in torchvision_shapes().values())
    assert total == TORCHVISION_VGG16_PARAMETERS


def test_width_one_is_torchvision_vgg16_without_its_imagenet_classifier():
    with torch.device("meta"):  # 134 M parameters: shapes only, nothing allocated
        member = build_member(VGG)
    trunk = count_parameters(member.features) + count_parameters(member.classifier)
    assert trunk == TORCHVISION_VGG16_PARAMETERS - IMAGENET_CLASSIFIER_PARAMETERS == 134_260_544
    heads = 4097 + sum(4097 * len(h.classes) for h in VGG.heads)
    assert count_parameters(member) == trunk + heads
    # every torchvision key but classifier.6 is the member's, with its shape
    imagenet = {k: torch.empty(s, device="meta") for k, s in torchvision_shapes().items()}
    converted = to_member_state(imagenet, VGG)
    assert converted.layout == "torchvision" and any("classifier.6 (1000 classes" in n for n in converted.notes)
    report = compare_state_dict(member, converted.state)
    assert not report.unexpected and not report.shapes
    assert {k.rsplit(".", 1)[0] for k in report.missing} == {"score_head"} | {f"heads.{h.name}" for h in VGG.heads}


def test_vgg16_compute_is_torchvision_s_at_224():
    # torchvision documents 15.47 GFLOPS (multiply-adds) for vgg16 at 224 x 224; ours counts a MAC as 2
    cost = member_cost(VGG, 224)
    assert cost.flops == pytest.approx(2 * 15.47e9, rel=0.01)
    assert member_cost(VGG, 256).flops > cost.flops


@pytest.mark.parametrize("grid", [7, 8, 14, 21, 28])
def test_the_plain_pooling_equals_torchvision_s_adaptive_pooling(grid):
    x = torch.randn(2, 5, grid, grid, dtype=torch.float64)
    pool = pooling_to_7(grid)
    ours = x if pool is None else F.avg_pool2d(x, kernel_size=pool[0], stride=pool[1])
    torch.testing.assert_close(ours, torch.nn.AdaptiveAvgPool2d(7)(x), rtol=0, atol=1e-12)
    assert pool == {7: None, 8: (2, 1)}.get(grid, (grid // 7, grid // 7))


def test_sizes_without_an_exact_pooling_are_refused(tmp_path):
    with pytest.raises(ValueError, match="224 x k or 256"):
        pooling_to_7(9)
    with pytest.raises(ValueError, match="224 x k or 256"):
        export_member(build_member(SMALL), SMALL, 288, tmp_path / "m.onnx")


def test_a_torchvision_checkpoint_with_trained_heads_computes_what_torchvision_computes(tmp_path):
    state = random_state(torchvision_shapes(divisor=16), seed=3)
    state |= trained_heads(4096 // 16, torch.Generator().manual_seed(4))
    torch.save({"state_dict": state}, tmp_path / "vgg.pt")
    member = load_member(dataclasses.replace(SMALL, checkpoint="vgg.pt"), tmp_path)
    gray = torch.from_numpy(synthetic_radiographs(2, S, seed=1, channels=1))
    with torch.no_grad():
        got, want = member(gray), reference_forward(state, gray)
    assert list(got) == list(member.output_names) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_an_imagenet_only_checkpoint_says_a_trained_network_is_needed(tmp_path):
    from fracscan.export.inspect_members import inspect_members

    torch.save(random_state(torchvision_shapes(divisor=16), seed=5), tmp_path / "imagenet.pt")
    member = dataclasses.replace(SMALL, checkpoint="imagenet.pt")
    heads = ", ".join(f"heads.{h.name}" for h in VGG.heads)
    with pytest.raises(CheckpointMismatchError, match=rf"missing keys in \[score_head, {heads}\]") as info:
        load_member(member, tmp_path)
    message = str(info.value)
    assert "unexpected" not in message  # classifier.6 is dropped, not left over
    assert "trained fracture network" in message and "Fine-tune it first" in message

    spec = dataclasses.replace(OLCZAK, members=(member,), source=tmp_path / "spec.toml")
    (check,) = inspect_members(spec)
    assert check.layout == "torchvision" and not check.ok and "score_head.weight" in check.missing
    assert any("Fine-tune" in n for n in check.notes) and any("classifier.6" in n for n in check.notes)


def test_a_vgg16_member_reads_its_one_channel_as_gray_rgb():
    torch.manual_seed(0)
    two = dataclasses.replace(SMALL, pixel_channels=2)
    pair = torch.from_numpy(synthetic_radiographs(1, S, seed=2))
    with torch.no_grad():
        plain = build_member(two).eval()
        lcn_changed = pair.clone()
        lcn_changed[:, 1] = -lcn_changed[:, 1]
        torch.testing.assert_close(plain(pair), plain(lcn_changed), rtol=0, atol=0)
        lcn = build_member(dataclasses.replace(two, input="lcn")).eval()
        assert not torch.equal(lcn(pair)[contract.MEMBER_SCORE], lcn(lcn_changed)[contract.MEMBER_SCORE])
        rgb = plain.to_rgb(pair[:, 0:1])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(
        rgb * std.reshape(1, 3, 1, 1) + mean.reshape(1, 3, 1, 1), (pair[:, 0:1] + 1).repeat(1, 3, 1, 1) / 2
    )
    with pytest.raises(ValueError, match=r"expected image \[B, 1, S, S\] \(plain\)"):
        build_member(SMALL)(pair)
    with pytest.raises(ValueError, match="one channel"):
        build_member(dataclasses.replace(two, input="both"))
    with pytest.raises(ValueError, match="no map"):
        build_member(dataclasses.replace(SMALL, map=True))


def _heads_sum_to_one(outputs: dict[str, np.ndarray]) -> None:
    for h in VGG.heads:
        probs = outputs[contract.member_head(h.name)]
        assert probs.shape[1] == len(h.classes) and np.all(probs > 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_small_vgg16_with_heads_exports_checks_and_matches_onnx_runtime(tmp_path):
    torch.manual_seed(1)
    model = build_member(SMALL).eval()
    path = export_member(model, SMALL, S, tmp_path / "vgg.onnx")  # validate_onnx runs inside
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [contract.MEMBER_INPUT]
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, S, S]
    names = [contract.MEMBER_SCORE, *(contract.member_head(h.name) for h in VGG.heads)]
    assert [o.name for o in proto.graph.output] == names
    assert {"Softmax", "AveragePool", "Gemm", "Mul", "Add"} <= {n.op_type for n in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["fracscan.arch"] == "vgg16" and meta["fracscan.heads"] == "laterality:2,body_part:6,view:4"
    assert check_members([path], S, channels=1)[0].ok  # the TensorRT-fitness check
    assert check_parity(model, path, S) < 1e-4
    x = synthetic_radiographs(3, S, seed=9, channels=1)
    served = dict(zip(names, ort_session(path).run(names, {contract.MEMBER_INPUT: x}), strict=True))
    _heads_sum_to_one(served)
    with torch.no_grad():
        _heads_sum_to_one({k: v.numpy() for k, v in model(torch.from_numpy(x)).items()})


@pytest.mark.parametrize("index, channels", [(0, 1), (1, 2)], ids=["drn_plain_map_1ch", "drn_2ch"])
def test_a_drn_member_with_heads_exports_too(index, channels, tmp_path):
    size = 64
    base = DEMO.members[index]
    spec = dataclasses.replace(
        base, heads=VGG.heads, pixel_channels=channels, input="plain" if channels == 1 else base.input
    )
    torch.manual_seed(2)
    model = build_member(spec).eval()
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("heads.")} == {h.name for h in VGG.heads}
    path = export_member(model, spec, size, tmp_path / "drn.onnx")
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == list(model.output_names)
    assert outputs[-3:] == [contract.member_head(h.name) for h in VGG.heads]
    assert check_parity(model, path, size) < 1e-4
    with torch.no_grad():
        x = torch.from_numpy(synthetic_radiographs(2, size, seed=3, channels=channels))
        _heads_sum_to_one({k: v.numpy() for k, v in model(x).items()})


def test_a_drn_member_without_heads_has_no_head_keys():
    member = DEMO.members[0]
    assert not member.heads
    keys = list(build_member(member).state_dict())
    assert not any(k.startswith("heads.") for k in keys) and keys[0] == "backbone.layer0.0.weight"


def test_export_random_init_of_a_narrow_olczak2017(tmp_path):
    narrow = dataclasses.replace(OLCZAK, members=(SMALL,))
    save_spec(narrow, tmp_path / "olczak.toml")
    out = tmp_path / "repo"
    cmd = [sys.executable, "-m", "fracscan.cli", "export", "--spec", str(tmp_path / "olczak.toml")]
    result = subprocess.run(
        [*cmd, "--random-init", "--output", str(out), "--target", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "[1/1] member_00 vgg16: exported from random weights" in result.stderr
    onnx_file = out / contract.member_model(0) / contract.MODEL_VERSION / contract.ONNX_FILE
    proto = onnx.load(str(onnx_file))
    assert [o.name for o in proto.graph.output] == [
        contract.MEMBER_SCORE,
        *(contract.member_head(h.name) for h in VGG.heads),
    ]


# torchvision's vgg16_bn, written out from its published layout: conv, BatchNorm2d, ReLU per conv (the conv
# keeps its bias), max pools at 6, 13, 23, 33, 43; the classifier is vgg16's. Its documented parameter count:
TORCHVISION_VGG16_BN_PARAMETERS = 138_365_992
TV_BN_CONVS = dict(zip((0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40), TV_CONVS.values(), strict=True))
TV_BN_POOLS = (6, 13, 23, 33, 43)
BN = dataclasses.replace(SMALL, arch="vgg16_bn")


def torchvision_bn_shapes(divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """torchvision vgg16_bn's state_dict keys and shapes (buffers included), every width divided by `divisor`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cout, cin) in TV_BN_CONVS.items():
        c = cout // divisor
        shapes[f"features.{i}.weight"] = (c, cin if cin == 3 else cin // divisor, 3, 3)
        shapes[f"features.{i}.bias"] = (c,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"features.{i + 1}.{name}"] = (c,)
        shapes[f"features.{i + 1}.num_batches_tracked"] = ()
    tv = torchvision_shapes(divisor)
    return shapes | {k: s for k, s in tv.items() if k.startswith("classifier.")}


def bn_state(divisor: int, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-keyed vgg16_bn state with batch norm far from identity, so a lost or misplaced fold shows."""
    shapes = torchvision_bn_shapes(divisor)
    state = random_state({k: s for k, s in shapes.items() if s and "running" not in k}, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for i in TV_BN_CONVS:
        c = shapes[f"features.{i}.bias"][0]
        state[f"features.{i + 1}.weight"] = 0.5 + torch.rand(c, generator=g)
        state[f"features.{i + 1}.bias"] = torch.randn(c, generator=g) * 0.2
        state[f"features.{i + 1}.running_mean"] = torch.randn(c, generator=g) * 0.3
        state[f"features.{i + 1}.running_var"] = 0.2 + torch.rand(c, generator=g) * 2
        state[f"features.{i + 1}.num_batches_tracked"] = torch.tensor(100)
    return state


def reference_bn_forward(state: dict[str, torch.Tensor], gray: torch.Tensor) -> dict[str, torch.Tensor]:
    """What torchvision's eval-mode vgg16_bn computes on the gray image as RGB, then the heads."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((gray.repeat(1, 3, 1, 1) + 1) / 2 - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    for i in range(44):
        if i in TV_BN_CONVS:
            x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
            bn = f"features.{i + 1}"
            x = F.batch_norm(
                x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"], state[f"{bn}.bias"]
            )
            x = F.relu(x)
        elif i in TV_BN_POOLS:
            x = F.max_pool2d(x, 2, 2)
    x = torch.nn.AdaptiveAvgPool2d(7)(x).flatten(1)
    for i in (0, 3):
        x = F.relu(F.linear(x, state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"]))
    out = {contract.MEMBER_SCORE: torch.sigmoid(F.linear(x, state["score_head.weight"], state["score_head.bias"]))}
    for h in VGG.heads:
        logits = F.linear(x, state[f"heads.{h.name}.weight"], state[f"heads.{h.name}.bias"])
        out[contract.member_head(h.name)] = torch.softmax(logits, dim=1)
    return out


def test_the_hand_written_bn_layout_is_torchvision_vgg16_bn():
    shapes = torchvision_bn_shapes()
    trainable = sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k and "num_batches" not in k)
    assert trainable == TORCHVISION_VGG16_BN_PARAMETERS
    assert shapes["features.1.running_mean"] == (64,) and shapes["features.41.running_var"] == (512,)
    assert shapes["features.40.weight"] == (512, 512, 3, 3) and "features.43.weight" not in shapes


def test_width_one_vgg16_bn_takes_torchvision_s_keys_one_to_one():
    with torch.device("meta"):
        member = build_member(dataclasses.replace(VGG, arch="vgg16_bn"))
    layers = member.features
    assert [i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)] == list(TV_BN_POOLS)
    assert [i for i, m in enumerate(layers) if isinstance(m, torch.nn.BatchNorm2d)] == [i + 1 for i in TV_BN_CONVS]
    trunk = count_parameters(member.features) + count_parameters(member.classifier)
    assert trunk == TORCHVISION_VGG16_BN_PARAMETERS - IMAGENET_CLASSIFIER_PARAMETERS
    imagenet = {k: torch.empty(s, device="meta") for k, s in torchvision_bn_shapes().items()}
    converted = to_member_state(imagenet, member.spec)
    assert converted.layout == "torchvision"
    report = compare_state_dict(member, converted.state)
    assert not report.unexpected and not report.shapes
    assert {k.rsplit(".", 1)[0] for k in report.missing} == {"score_head"} | {f"heads.{h.name}" for h in VGG.heads}


def test_a_torchvision_vgg16_bn_checkpoint_computes_what_torchvision_computes(tmp_path):
    state = bn_state(divisor=16, seed=6) | trained_heads(4096 // 16, torch.Generator().manual_seed(7))
    torch.save({"state_dict": state}, tmp_path / "vgg_bn.pt")
    member = load_member(dataclasses.replace(BN, checkpoint="vgg_bn.pt"), tmp_path).eval()
    gray = torch.from_numpy(synthetic_radiographs(2, S, seed=1, channels=1))
    with torch.no_grad():
        got, want = member(gray), reference_bn_forward(state, gray)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_folding_keeps_the_indices_and_the_answers():
    from fracscan.export.vgg import fold_batchnorm

    member = build_member(BN)
    state = bn_state(16, seed=8) | trained_heads(256, torch.Generator().manual_seed(9))
    member.load_state_dict(to_member_state(state, BN).state)
    member.eval()
    folded = fold_batchnorm(member)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in member.modules())  # the member itself is untouched
    assert [i for i, m in enumerate(folded.features) if isinstance(m, torch.nn.Conv2d)] == list(TV_BN_CONVS)
    x = torch.from_numpy(synthetic_radiographs(2, S, seed=4, channels=1))
    with torch.no_grad():
        want, got = member(x), folded(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_a_vgg16_bn_member_exports_as_a_plain_vgg_with_its_batch_norm_folded(tmp_path):
    state = bn_state(16, seed=10) | trained_heads(256, torch.Generator().manual_seed(11))
    model = build_member(BN)
    model.load_state_dict(to_member_state(state, BN).state)
    model.train()  # export folds the eval-mode statistics whatever mode the member is in
    path = export_member(model, BN, S, tmp_path / "vgg_bn.onnx")
    assert model.training
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops
    plain = onnx.load(str(export_member(build_member(SMALL), SMALL, S, tmp_path / "vgg.onnx")))
    assert ops <= {n.op_type for n in plain.graph.node}  # nothing a plain vgg16 graph lacks
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 13
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["fracscan.arch"] == "vgg16_bn"
    assert check_members([path], S, channels=1)[0].ok
    assert check_parity(model, path, S) < 1e-4  # against the unfused eval-mode member
    x = synthetic_radiographs(2, S, seed=12, channels=1)
    names = [o.name for o in proto.graph.output]
    served = dict(zip(names, ort_session(path).run(names, {contract.MEMBER_INPUT: x}), strict=True))
    with torch.no_grad():
        want = reference_bn_forward(state, torch.from_numpy(x))
    for name in names:
        np.testing.assert_allclose(served[name], want[name].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"map": True}, "a vgg16_bn member has no map"),
        ({"head": "spp"}, "a vgg16_bn member has no map"),
    ],
)
def test_the_vgg16_checks_apply_to_vgg16_bn(member, message):
    from fracscan.spec import SpecError, parse_spec, spec_to_dict

    raw = spec_to_dict(OLCZAK)
    raw["members"][0] = {"name": "vgg_bn", "arch": "vgg16_bn", **member}
    with pytest.raises(SpecError, match=message):
        parse_spec(raw, "olczak.toml")
    raw["members"][0] = {"name": "vgg_bn", "arch": "vgg16_bn"}
    assert parse_spec(raw, "olczak.toml").members[0].arch == "vgg16_bn"
    raw["preprocess"]["size"] = 320
    with pytest.raises(SpecError, match="vgg16_bn needs \\[preprocess\\] size = 224 x k or 256"):
        parse_spec(raw, "olczak.toml")
