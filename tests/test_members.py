"""Member networks (DRN family + fracture heads) and their ONNX export."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch

from fracscan.demo.inputs import synthetic_radiographs
from fracscan.export.drn import CHANNELS, drn_backbone
from fracscan.export.flops import main as flops_main
from fracscan.export.flops import member_cost
from fracscan.export.member_parts import scale_channels
from fracscan.export.members import (
    CheckpointMismatchError,
    build_member,
    calibrate_batchnorm,
    count_parameters,
    load_member,
)
from fracscan.export.onnx_export import ParityError, check_parity, export_member
from fracscan.spec import builtin_spec_path, load_spec

pytestmark = pytest.mark.torch

S = 256
FULL = load_spec(builtin_spec_path("jones2020"))
DEMO = load_spec(builtin_spec_path("demo"))
# The full spec at 1/16 of the width keeps the test fast (same layouts; the demo is at 1/8).
CASES = [("jones2020@0.0625", dataclasses.replace(m, width=0.0625)) for m in FULL.members] + [
    ("demo", m) for m in DEMO.members
]


def _calibrated(spec):
    """A member with BatchNorm statistics from realistic and noise inputs, so outputs are not saturated."""
    torch.manual_seed(0)
    model = build_member(spec)
    noise = torch.rand(4, 2, S, S) * 2 - 1
    return calibrate_batchnorm(model, [torch.from_numpy(synthetic_radiographs(4, S)), noise]).eval()


# The DRN paper's Table (ImageNet classifiers, 1000 classes), in millions of parameters.
@pytest.mark.parametrize(
    "arch, millions", [("drn_d_22", 16.4), ("drn_c_26", 21.1), ("drn_d_38", 26.5), ("drn_d_54", 35.8)]
)
def test_backbone_parameter_counts_match_the_paper(arch, millions):
    assert count_parameters(drn_backbone(arch)) == pytest.approx(millions * 1e6, rel=0.01)


def test_width_multiplier_keeps_channels_sane():
    assert [scale_channels(c, 1.0) for c in CHANNELS] == list(CHANNELS)
    assert [scale_channels(c, 0.125) for c in CHANNELS] == [4, 4, 8, 16, 32, 64, 64, 64]
    assert all(scale_channels(c, 0.01) == 4 for c in CHANNELS)


@pytest.mark.parametrize("spec", [c[1] for c in CASES], ids=[f"{c[0]}:{c[1].name}" for c in CASES])
def test_member_forward_export_and_parity(spec, tmp_path):
    model = _calibrated(spec)
    x = torch.from_numpy(synthetic_radiographs(2, S, seed=7))
    with torch.no_grad():
        out = model(x)
        logits = model.forward_logits(x)
    assert list(out) == (["score", "map"] if spec.map else ["score"])
    assert out["score"].shape == (2, 1)
    if spec.map:
        assert out["map"].shape == (2, 1, S // 8, S // 8)
    for name, prob in out.items():
        assert torch.all((prob > 0) & (prob < 1)), name
        torch.testing.assert_close(prob, torch.sigmoid(logits[name]))

    path = export_member(model, spec, S, tmp_path / f"{spec.name}.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in proto.graph.output] == list(out)
    assert {p.key: p.value for p in proto.metadata_props}["fracscan.name"] == spec.name
    assert check_parity(model, path, S) < 1e-4


@pytest.mark.parametrize("spec", FULL.members, ids=[m.name for m in FULL.members])
def test_full_size_members_output_shapes_at_1024(spec):
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        out = build_member(spec).eval()(torch.empty(1, 2, 1024, 1024))
    assert {k: tuple(v.shape) for k, v in out.items()} == (
        {"score": (1, 1), "map": (1, 1, 128, 128)} if spec.map else {"score": (1, 1)}
    )


def test_member_reads_only_its_input_channels():
    x = torch.from_numpy(synthetic_radiographs(1, S))
    swapped = x.clone()
    swapped[:, 1] = -swapped[:, 1]
    flipped = x.clone()
    flipped[:, 0] = -flipped[:, 0]
    by_input = {m.input: m for m in DEMO.members if m.arch == "drn_d_22"} | {"both": DEMO.members[2]}
    with torch.no_grad():
        for inp, spec in by_input.items():
            model = _calibrated(spec)
            base, lcn_changed, plain_changed = (model(t)["score"] for t in (x, swapped, flipped))
            assert torch.equal(base, lcn_changed) == (inp == "plain"), inp
            assert torch.equal(base, plain_changed) == (inp == "lcn"), inp


def test_wrong_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"drn_d_22_plain_map.*\[B, 2, S, S\]"):
        build_member(DEMO.members[0])(torch.zeros(1, 1, 64, 64))


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    spec = DEMO.members[0]  # drn_d_22, width 0.125
    model = _calibrated(spec)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pt")
    loaded = load_member(dataclasses.replace(spec, checkpoint="m.pt"), tmp_path)
    x = torch.from_numpy(synthetic_radiographs(1, 64))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    wrong = dataclasses.replace(spec, arch="drn_d_38", checkpoint="m.pt")
    mismatch = r"member 'drn_d_22_plain_map'.*arch drn_d_38 width 0.125.*missing keys in \[backbone\.layer3\.2"
    with pytest.raises(CheckpointMismatchError, match=mismatch):
        load_member(wrong, tmp_path)
    wider = dataclasses.replace(spec, width=0.25, checkpoint="m.pt")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch .*layer2\.0\.weight \(4,4,3,3\) vs \(8,4,3,3\)"):
        load_member(wider, tmp_path)
    with pytest.raises(FileNotFoundError, match="drn_d_22_plain_map"):
        load_member(dataclasses.replace(spec, checkpoint="absent.pt"), tmp_path)


def test_parity_check_catches_a_diverged_model(tmp_path):
    spec = DEMO.members[5]
    model = _calibrated(spec)
    path = export_member(model, spec, S, tmp_path / "m.onnx")
    with torch.no_grad():
        model.score_head.bias += 0.5
    with pytest.raises(ParityError, match=r"drn_c_26_lcn.*score"):
        check_parity(model, path, S)


def test_spp_export_needs_a_map_divisible_by_the_pyramid(tmp_path):
    spec = next(m for m in DEMO.members if m.head == "spp")
    with pytest.raises(ValueError, match="divisible by 32"):
        export_member(build_member(spec), spec, 200, tmp_path / "m.onnx")


def test_flops_table(capsys):
    small = member_cost(DEMO.members[0], S)
    assert small.params == count_parameters(build_member(DEMO.members[0]))
    assert member_cost(DEMO.members[0], 2 * S).flops == pytest.approx(4 * small.flops, rel=0.01)
    flops_main(["--spec", str(builtin_spec_path("demo"))])
    out = capsys.readouterr().out
    assert "ensemble total per radiograph" in out and "drn_d_54_both_spp_map" in out


# An independent small module in the layout of the DRN reference implementation (github.com/fyu/drn), written
# from the layout documented in docs/spec.md: arch C starts with conv1/bn1/relu, arch D with a `layer0`
# Sequential; blocks name their parts conv1/bn1/conv2/bn2[/conv3/bn3]/downsample; DRNSeg wraps the
# classifier's children but the last two as `base`, then `seg` (1x1 conv) and a fixed `up`.
REF_CHANNELS = (4, 4, 8, 16, 32, 64, 64, 64)  # = fracscan's width 0.125
REF_LEVELS = {
    "drn_c_26": (1, 1, 2, 2, 2, 2, 1, 1),
    "drn_d_22": (1, 1, 2, 2, 2, 2, 1, 1),
    "drn_d_54": (1, 1, 3, 4, 6, 3, 1, 1),
}


class RefBlock(torch.nn.Module):
    def __init__(self, cin, planes, stride=1, dilation=1, residual=True, bottleneck=False):
        super().__init__()
        nn = torch.nn
        self.bottleneck, self.residual = bottleneck, residual
        cout = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        else:
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
        change = residual and (stride != 1 or cin != cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if change else None
        )

    def forward(self, x):
        relu = torch.relu
        y = relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(relu(y)))
        if self.residual:
            y = y + (x if self.downsample is None else self.downsample(x))
        return relu(y)


def ref_conv_level(cin, cout, n, stride=1, dilation=1):
    nn = torch.nn
    mods = []
    for i in range(n):
        mods += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*mods)


def ref_block_level(cin, planes, n, stride=1, dilation=1, residual=True, bottleneck=False):
    exp = 4 if bottleneck else 1
    blocks = [RefBlock(cin, planes, stride, dilation, residual, bottleneck)]
    blocks += [RefBlock(planes * exp, planes, 1, dilation, residual, bottleneck) for _ in range(n - 1)]
    return torch.nn.Sequential(*blocks)


class RefDRN(torch.nn.Module):
    """drn_c_26 / drn_d_22 / drn_d_54 of the reference layout: 3-channel stem, avgpool, 1x1-conv fc."""

    def __init__(self, arch, num_classes, pool_size, ch=REF_CHANNELS):
        super().__init__()
        nn = torch.nn
        n, c_arch, bottleneck = REF_LEVELS[arch], arch.startswith("drn_c"), arch == "drn_d_54"
        exp = 4 if bottleneck else 1
        if c_arch:
            self.conv1, self.bn1, self.relu = nn.Conv2d(3, ch[0], 7, 1, 3, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU()
            self.layer1 = ref_block_level(ch[0], ch[0], n[0])
            self.layer2 = ref_block_level(ch[0], ch[1], n[1], stride=2)
        else:
            self.layer0 = nn.Sequential(nn.Conv2d(3, ch[0], 7, 1, 3, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU())
            self.layer1 = ref_conv_level(ch[0], ch[0], n[0])
            self.layer2 = ref_conv_level(ch[0], ch[1], n[1], stride=2)
        self.layer3 = ref_block_level(ch[1], ch[2], n[2], stride=2, bottleneck=bottleneck)
        self.layer4 = ref_block_level(ch[2] * exp, ch[3], n[3], stride=2, bottleneck=bottleneck)
        self.layer5 = ref_block_level(ch[3] * exp, ch[4], n[4], dilation=2, bottleneck=bottleneck)
        self.layer6 = ref_block_level(ch[4] * exp, ch[5], n[5], dilation=4, bottleneck=bottleneck)
        if c_arch:
            self.layer7 = ref_block_level(ch[5], ch[6], n[6], dilation=2, residual=False)
            self.layer8 = ref_block_level(ch[6], ch[7], n[7], dilation=1, residual=False)
        else:
            self.layer7 = ref_conv_level(ch[5] * exp, ch[6], n[6], dilation=2)
            self.layer8 = ref_conv_level(ch[6], ch[7], n[7], dilation=1)
        self.avgpool = nn.AvgPool2d(pool_size)
        self.fc = nn.Conv2d(ch[7], num_classes, 1)

    def features(self, x):
        for module in list(self.children())[:-2]:
            x = module(x)
        return x

    def forward(self, x):
        return self.fc(self.avgpool(self.features(x))).flatten(1)


class RefDRNSeg(torch.nn.Module):
    def __init__(self, drn: RefDRN, classes: int):
        super().__init__()
        self.base = torch.nn.Sequential(*list(drn.children())[:-2])
        self.seg = torch.nn.Conv2d(drn.fc.in_channels, classes, 1)
        self.up = torch.nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, groups=classes, bias=False)


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights and random BatchNorm statistics, so that a wrong mapping cannot agree by chance."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.reset_parameters()
        elif isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _gray_pair(size: int = 64):
    """A radiograph pair [1, 2, S, S] (plain, LCN) and the plain image as an RGB network sees it (R = G = B)."""
    image = torch.from_numpy(synthetic_radiographs(1, size, seed=4))
    return image, image[:, 0:1].repeat(1, 3, 1, 1)


@pytest.mark.parametrize("arch", ["drn_c_26", "drn_d_22", "drn_d_54"])
@pytest.mark.parametrize("member_input, classes", [("plain", 1), ("both", 2)])
def test_drn_reference_classifier_checkpoint_computes_what_the_reference_computes(
    arch, member_input, classes, tmp_path
):
    ref = _randomised(RefDRN(arch, classes, pool_size=8), seed=1)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "r.pt")
    spec = dataclasses.replace(
        DEMO.members[0], arch=arch, input=member_input, map=False, head="gap", attention=False, checkpoint="r.pt"
    )
    member = load_member(spec, tmp_path)
    image, rgb = _gray_pair()
    with torch.no_grad():
        torch.testing.assert_close(member.backbone(member.select_input(image)), ref.features(rgb), rtol=1e-4, atol=1e-4)
        expected = torch.sigmoid(ref(rgb)) if classes == 1 else torch.softmax(ref(rgb), dim=1)[:, 1:2]
        torch.testing.assert_close(member(image)["score"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["drn_c_26", "drn_d_22"])
def test_drnseg_checkpoint_gives_the_backbone_and_the_map_and_names_the_missing_score_head(arch, tmp_path):
    seg = _randomised(RefDRNSeg(RefDRN(arch, 1000, pool_size=8), classes=2), seed=2)
    torch.save({"state_dict": seg.state_dict()}, tmp_path / "seg.pt")
    spec = dataclasses.replace(
        DEMO.members[0], arch=arch, input="plain", map=True, head="gap", attention=False, checkpoint="seg.pt"
    )
    with pytest.raises(CheckpointMismatchError, match=r"2 missing keys in \[score_head\]") as info:
        load_member(spec, tmp_path)
    assert "unexpected" not in str(info.value)  # base.*, seg.* mapped, up dropped
    state = seg.state_dict() | {"score_head.weight": torch.rand(1, REF_CHANNELS[-1]), "score_head.bias": torch.zeros(1)}
    torch.save(state, tmp_path / "seg.pt")  # completed with a head of fracscan's layout
    member = load_member(spec, tmp_path)
    image, rgb = _gray_pair()
    with torch.no_grad():
        features = seg.base(rgb)
        torch.testing.assert_close(member.backbone(member.select_input(image)), features, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            member(image)["map"], torch.softmax(seg.seg(features), dim=1)[:, 1:2], rtol=1e-4, atol=1e-5
        )


def test_an_imagenet_head_is_refused_with_the_reason(tmp_path):
    from fracscan.export.checkpoints import to_member_state

    ref = RefDRN("drn_d_22", 1000, pool_size=8)
    spec = dataclasses.replace(DEMO.members[0], input="plain", map=False)
    converted = to_member_state(ref.state_dict(), spec)
    assert converted.layout == "drn" and "1000 classes" in converted.unmapped["fc.weight"]
    torch.save(ref.state_dict(), tmp_path / "imagenet.pt")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys in \[score_head\].*unexpected keys in \[fc\]"):
        load_member(dataclasses.replace(spec, checkpoint="imagenet.pt"), tmp_path)
