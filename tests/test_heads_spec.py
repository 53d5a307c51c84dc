"""The spec's classification heads and the quality-control rules (fracscan.spec, fracscan.heads)."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from fracscan import contract
from fracscan.heads import average_head_probs, resolve_heads
from fracscan.spec import SpecError, builtin_spec_path, load_spec, parse_spec, spec_to_dict

OLCZAK = load_spec(builtin_spec_path("olczak2017"))


def _raw(**changes):
    raw = tomllib.loads(builtin_spec_path("olczak2017").read_text())
    for path, value in changes.items():
        *parents, key = path.split("__")
        table = raw
        for p in parents:
            table = table[p]
        table[key] = value
    return raw


def test_the_paper_system_is_declared_as_configuration():
    pre = OLCZAK.preprocess
    assert (pre.size, pre.resize, pre.lcn, pre.crop, pre.channels) == (256, "stretch", False, "keep_markers", 1)
    assert [h.name for h in OLCZAK.heads] == ["laterality", "body_part", "view"]
    assert OLCZAK.head_dims == (("laterality", 2), ("body_part", 6), ("view", 4))
    assert OLCZAK.region_head is OLCZAK.head("body_part")
    assert OLCZAK.head("body_part").region_of("scaphoid") == "wrist"
    assert OLCZAK.head("body_part").region_of("thumb") == "hand"
    (member,) = OLCZAK.members
    assert (member.arch, member.pixel_channels, member.heads) == ("vgg16", 1, OLCZAK.heads)


def test_jones_has_no_heads_and_its_contract_is_unchanged():
    jones = load_spec(builtin_spec_path("jones2020"))
    assert jones.heads == () and jones.preprocess.channels == 2
    assert [t.name for t in contract.ensemble_outputs(10, jones.head_dims)] == list(contract.ENSEMBLE_OUTPUT_NAMES)
    assert contract.QC not in contract.ENSEMBLE_OUTPUT_NAMES


def test_heads_add_their_outputs_and_qc():
    names = [t.name for t in contract.ensemble_outputs(1, OLCZAK.head_dims)]
    assert names[-7:] == [
        "LATERALITY",
        "LATERALITY_PROBS",
        "BODY_PART",
        "BODY_PART_PROBS",
        "VIEW",
        "VIEW_PROBS",
        contract.QC,
    ]
    probs = {t.name: t.dims for t in contract.ensemble_outputs(1, OLCZAK.head_dims)}
    assert probs["BODY_PART_PROBS"] == (6,)


def test_spec_round_trips_with_heads():
    again = parse_spec(spec_to_dict(OLCZAK), "again.toml")
    assert again.heads == OLCZAK.heads and again.preprocess == OLCZAK.preprocess and again.members == OLCZAK.members


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heads__score": {"classes": ["a", "b"]}}, "collides with the contract's reserved output 'SCORE'"),
        ({"heads__qc": {"classes": ["a", "b"]}}, "reserved output 'QC'"),
        ({"heads__laterality__classes": ["left", "right", "both"]}, "a laterality check needs classes"),
        ({"heads__view__classes": ["ap"]}, "at least two distinct class names"),
        ({"heads__body_part__regions": {"ankle": "knee"}}, "regions must map its classes to the spec's [regions]"),
        ({"heads__view__regions": {"ap": "ankle"}}, "at most one head may map its classes to regions"),
        ({"heads__view__check": "view"}, "check = 'view'"),
        ({"heads__view__colour": "red"}, "unknown key 'colour' in [heads.view]"),
        ({"preprocess__resize": "crop"}, "resize = 'crop'"),
        ({"heads__keys": {"classes": ["a", "b"]}}, "'keys' is a method of the members' head container"),
        (
            {"heads__view_probs": {"classes": ["a", "b"]}},
            "tensor names collide: ['STUDY_VIEW_PROBS', 'VIEW_PROBS', 'VIEW_VIEW_PROBS']",
        ),
        ({"heads__score_00": {"classes": ["a", "b"]}}, "tensor names collide: ['SCORE_00']"),
        ({"heads__view__classes": "left"}, "classes must be a list of class names"),
        ({"preprocess__size": 320}, "vgg16 needs [preprocess] size = 224 x k or 256"),
    ],
)
def test_bad_heads_and_preprocessing_name_the_problem(changes, message):
    with pytest.raises(SpecError, match=r"olczak\.toml") as info:
        parse_spec(_raw(**changes), "olczak.toml")
    assert message in str(info.value)


def test_members_that_need_lcn_are_refused_without_it():
    raw = _raw()
    raw["members"][0] = {"name": "drn", "arch": "drn_d_22", "input": "both"}
    with pytest.raises(SpecError, match="needs LCN, but \\[preprocess\\] lcn = false"):
        parse_spec(raw, "x.toml")
    raw["members"][0] = {"name": "vgg", "arch": "vgg16", "map": True}
    with pytest.raises(SpecError, match="a vgg16 member has no map"):
        parse_spec(raw, "x.toml")


def _probs(laterality=(0.5, 0.5), body_part=(1, 0, 0, 0, 0, 0), view=(1, 0, 0, 0)):
    return {"laterality": laterality, "body_part": body_part, "view": view}


def test_a_confident_laterality_head_contradicting_dicom_warns_naming_both():
    out = resolve_heads(OLCZAK, _probs(laterality=(0.97, 0.03)), "wrist", "dicom", ("ImageLaterality=R", ""))
    assert out.answers["laterality"].label == "left"
    assert out.qc == ("laterality: DICOM ImageLaterality is R, the laterality head says left (p = 0.97)",)


@pytest.mark.parametrize(
    ("laterality", "stated"),
    [
        ((0.97, 0.03), "ImageLaterality=L"),  # agrees
        ((0.85, 0.15), "ImageLaterality=R"),  # below check_confidence
        ((0.97, 0.03), "Laterality=B"),  # both: nothing to contradict
        ((0.97, 0.03), ""),  # DICOM says nothing
    ],
)
def test_no_warning_without_a_confident_contradiction(laterality, stated):
    assert resolve_heads(OLCZAK, _probs(laterality=laterality), "wrist", "dicom", (stated, "")).qc == ()


def test_body_part_checks_through_the_region_map():
    # scaphoid is the wrist's region: BodyPartExamined WRIST agrees with a confident "scaphoid"
    scaphoid = (0, 0, 0, 0.95, 0.05, 0)
    assert resolve_heads(OLCZAK, _probs(body_part=scaphoid), "wrist", "dicom", ("", "BodyPartExamined=WRIST")).qc == ()
    out = resolve_heads(OLCZAK, _probs(body_part=scaphoid), "ankle", "dicom", ("", "BodyPartExamined=ANKLE"))
    assert out.qc == ("body_part: DICOM BodyPartExamined is ANKLE, the body_part head says scaphoid (p = 0.95)",)
    assert (out.region, out.region_source) == ("ankle", "dicom")  # DICOM's region still decides


def test_the_region_comes_from_a_confident_body_part_head_only_when_nobody_names_one():
    thumb = (0, 0, 0, 0, 0.93, 0.07)
    out = resolve_heads(OLCZAK, _probs(body_part=thumb), contract.UNKNOWN_REGION, "unknown")
    assert (out.region, out.region_source) == ("hand", "model")
    unsure = (0.5, 0.4, 0.1, 0, 0, 0)
    out = resolve_heads(OLCZAK, _probs(body_part=unsure), contract.UNKNOWN_REGION, "unknown")
    assert (out.region, out.region_source) == (contract.UNKNOWN_REGION, "unknown")
    out = resolve_heads(OLCZAK, _probs(body_part=thumb), "wrist", "user")
    assert (out.region, out.region_source) == ("wrist", "user")


def test_head_probabilities_average_like_scores():
    mean = average_head_probs([np.array([0.9, 0.1]), np.array([0.5, 0.5])])
    assert mean.dtype == np.float32 and np.allclose(mean, [0.7, 0.3])


def test_every_attribute_of_the_members_head_container_is_refused_as_a_head_name():
    nn = pytest.importorskip("torch.nn")
    from fracscan.spec import _MODULE_ATTRIBUTES

    public = {n for n in dir(nn.ModuleDict({})) if not n.startswith("_")}
    assert public <= _MODULE_ATTRIBUTES, sorted(public - _MODULE_ATTRIBUTES)


def test_a_region_head_keeps_its_confidence_when_saved():
    raw = _raw(heads__body_part__check_confidence=0.6)
    del raw["heads"]["body_part"]["check"]
    spec = parse_spec(raw, "x.toml")
    again = parse_spec(spec_to_dict(spec), "again.toml")
    assert again.head("body_part").check_confidence == 0.6 and again == spec
    assert hash(spec.members[0])  # the spec stays hashable with heads
