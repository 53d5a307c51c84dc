"""Member networks (DRN family + fracture heads) and their ONNX export."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch

from fracscan.demo.inputs import synthetic_radiographs
from fracscan.export.flops import main as flops_main
from fracscan.export.flops import member_cost
from fracscan.export.members import (
    CHANNELS,
    CheckpointMismatchError,
    build_member,
    calibrate_batchnorm,
    count_parameters,
    drn_backbone,
    load_member,
    scale_channels,
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
