"""Tests of the synthetic exam views (frontal / lateral / oblique of wrist, hand, ankle; DEMO data)."""

from __future__ import annotations

import numpy as np
import pytest

from fracscan.demo.synthetic import REGIONS_WITH_VIEWS, VIEWS, SyntheticCase, cases, exam_dataset, fractures, make_case
from fracscan.demo.synthetic.primitives import density_on
from fracscan.demo.synthetic.scenes import Scene

SHAPE = (256, 224)  # rows, cols: fast, every view still fits
ALL_VIEWS = ("frontal", "lateral", "oblique")


def _same(a: SyntheticCase, b: SyntheticCase) -> bool:
    same_labels = (a.box, a.region, a.fracture, a.laterality, a.view, a.fracture_kind) == (
        b.box,
        b.region,
        b.fracture,
        b.laterality,
        b.view,
        b.fracture_kind,
    )
    return same_labels and np.array_equal(a.pixels, b.pixels)


def test_views_are_exported_for_wrist_hand_and_ankle():
    assert REGIONS_WITH_VIEWS == ("ankle", "hand", "wrist")
    assert set(VIEWS) == set(REGIONS_WITH_VIEWS)
    assert all(VIEWS[r] == ALL_VIEWS for r in REGIONS_WITH_VIEWS)


@pytest.mark.parametrize("region", ["wrist", "knee", "pelvis"])
def test_view_none_is_the_call_without_a_view(region):
    for seed, frac in ((3, True), (4, False)):
        plain = make_case(seed, region, frac, SHAPE)
        assert plain.view is None
        assert _same(plain, make_case(seed, region, frac, SHAPE, view=None))
    assert _same(make_case(11), make_case(11, view=None))  # region and shape drawn from the seed


@pytest.mark.parametrize("region", REGIONS_WITH_VIEWS)
def test_frontal_is_the_layout_as_it_is(region):
    plain = make_case(8, region, True, SHAPE)
    frontal = make_case(8, region, True, SHAPE, view="frontal")
    assert frontal.view == "frontal" and np.array_equal(plain.pixels, frontal.pixels) and plain.box == frontal.box


@pytest.mark.parametrize("region", REGIONS_WITH_VIEWS)
def test_views_are_deterministic_and_differ_from_each_other(region):
    seed = 21
    drawn = {v: make_case(seed, region, False, SHAPE, v) for v in ALL_VIEWS}
    for v, case in drawn.items():
        assert case.view == v and case.region == region
        assert _same(case, make_case(seed, region, False, SHAPE, v))
    # same seed: same exposure, frame and laterality; only the projection differs, and visibly
    assert len({c.laterality for c in drawn.values()}) == 1
    for a, b in (("frontal", "lateral"), ("frontal", "oblique"), ("lateral", "oblique")):
        diff = np.abs(drawn[a].pixels.astype(float) - drawn[b].pixels.astype(float)).mean()
        assert diff > 0.02 * drawn[a].max_value, (a, b, diff)


@pytest.mark.parametrize("region", REGIONS_WITH_VIEWS)
def test_fractured_and_normal_view_share_the_picture(region):
    frac, sc, layers_f = cases.build(5, region, True, SHAPE, "lateral")
    norm, _, layers_n = cases.build(5, region, False, SHAPE, "lateral")
    assert frac.box is not None and norm.box is None and (frac.laterality, frac.view) == (norm.laterality, norm.view)
    assert np.array_equal(layers_f["soft"], layers_n["soft"])
    # the bone layers differ only on the fractured bone (its fragments included)
    fr, _ = fractures.place_fracture(sc, 5)
    whole = (0, 0, sc.W, sc.H)
    on_bone = (fr.render(sc.frame, sc.bones[fr.bone], whole)[0] > 0) | (
        density_on(sc.frame, sc.bones[fr.bone], whole) > 0
    )
    changed = layers_f["bone"] != layers_n["bone"]
    assert changed.any() and not (changed & ~on_bone).any()


def test_invalid_views_raise_naming_the_region_and_the_allowed_views():
    with pytest.raises(ValueError, match="knee") as err:
        make_case(1, "knee", shape=SHAPE, view="lateral")
    assert all(name in str(err.value) for name in (*REGIONS_WITH_VIEWS, *ALL_VIEWS))
    with pytest.raises(ValueError, match="wrist") as err:
        make_case(1, "wrist", shape=SHAPE, view="sideways")
    assert all(v in str(err.value) for v in ALL_VIEWS)
    with pytest.raises(ValueError, match="frontal"):
        make_case(1, "pelvis", shape=SHAPE, view="frontal")
    with pytest.raises(ValueError):
        list(exam_dataset(2, 0, regions=("wrist", "femur")))


def test_a_view_without_a_region_draws_a_region_that_has_views():
    regions = {make_case(s, shape=SHAPE, view="oblique").region for s in range(8)}
    assert regions <= set(REGIONS_WITH_VIEWS) and len(regions) >= 2


def test_exam_dataset_is_deterministic_and_its_labels_reproduce():
    shape = (192, 160)
    first = list(exam_dataset(30, 7, shape=shape))
    again = list(exam_dataset(30, 7, shape=shape))
    assert [c.seed for c in first] == [c.seed for c in again]
    assert {c.view for c in first} == set(ALL_VIEWS) and {c.region for c in first} == set(REGIONS_WITH_VIEWS)
    assert {c.laterality for c in first} == {"R", "L"} and {c.fracture for c in first} == {True, False}
    for c in first[:6]:
        assert _same(c, make_case(c.seed, c.region, c.fracture, shape, c.view))
    assert [c.seed for c in exam_dataset(3, 8, shape=shape)] != [c.seed for c in first[:3]]
    assert all(c.fracture for c in exam_dataset(4, 9, shape=shape, fracture_rate=1.0))


_BAND = {"wrist": ("radius", -0.3, -0.1), "ankle": ("tibia", -0.3, -0.1), "hand": ("finger3_1", -0.1, 0.0)}


def _bone_width(sc: Scene, bone: np.ndarray) -> float:
    """Width of the bone layer across the limb (layout units), in a band of rows through the long bones."""
    name, lo, hi = _BAND[sc.region]
    ref = next(p for p in sc.bones if p.name == name)
    v_ref = float(ref.pts[:, 1].mean() if sc.region == "hand" else ref.pts[-1, 1])  # type: ignore[union-attr]
    ys, xs = np.nonzero(bone > 0)
    u, v = sc.frame.to_canon(xs.astype(float), ys.astype(float))
    sel = (v > v_ref + lo * sc.s) & (v < v_ref + hi * sc.s)
    assert sel.sum() > 50
    return float(np.percentile(u[sel], 98) - np.percentile(u[sel], 2)) / sc.s


@pytest.mark.parametrize("region", REGIONS_WITH_VIEWS)
def test_the_lateral_superimposes_the_bones(region):
    for seed in (0, 1):
        width = {}
        for v in ALL_VIEWS:
            _, sc, layers = cases.build(seed, region, False, SHAPE, v)
            width[v] = _bone_width(sc, layers["bone"])
        assert width["lateral"] < 0.75 * width["frontal"], width
        assert width["lateral"] < width["oblique"], width
        if region != "ankle":  # the ankle's oblique turns the fibula out of the tibia's shadow
            assert width["oblique"] < 0.92 * width["frontal"], width


@pytest.mark.parametrize("region", REGIONS_WITH_VIEWS)
@pytest.mark.parametrize("view", ("lateral", "oblique"))
def test_fractures_are_placed_and_visible_in_every_view(region, view):
    for seed in range(4):
        case, sc, _ = cases.build(seed, region, True, SHAPE, view)
        fr, box = fractures.place_fracture(sc, seed)
        assert box == case.box
        win = sc.frame.window(fr.bbox())
        dens, foot = fr.render(sc.frame, sc.bones[fr.bone], win)
        assert fractures._visible(sc, fr, win, dens, foot), (region, view, seed)
        fx0, fy0, fx1, fy1 = case.field
        assert fx0 <= box[0] < box[2] <= fx1 and fy0 <= box[1] < box[3] <= fy1
