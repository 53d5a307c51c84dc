"""The study answer with classification heads: the views' weighted vote, the QC flag when views disagree,
served by `fracscan_study` on the Olczak demo repository and written by `fracscan predict --by-study`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fracscan import contract as c
from fracscan.client import FracScanClient
from fracscan.demo.synthetic import make_case, png_bytes
from fracscan.export.model_config import RepositoryOptions, config_text
from fracscan.export.repository import study_config
from fracscan.server import OLCZAK_DEMO_REPOSITORY
from fracscan.spec import builtin_spec_path, load_spec
from fracscan.study import StudyError, study_heads

SPEC = load_spec(builtin_spec_path("olczak_demo"))  # laterality (checked), body_part (checked), view (not)
STUDY_SEEDS = 15_000_000  # outside every split of the demo build and the other held-out tests
LATERALITY = {"L": "left", "R": "right"}


def _view(laterality=(0.5, 0.5), body_part=(1.0, 0.0, 0.0), view=(1.0, 0.0, 0.0)):
    return {"laterality": laterality, "body_part": body_part, "view": view}


def test_views_that_agree_make_the_study_class_without_qc():
    views = {0: _view((0.9, 0.1), view=(1, 0, 0)), 1: _view((0.8, 0.2), view=(0, 0.8, 0.2))}
    found = study_heads(SPEC.heads, views)
    assert found.answers["laterality"].label == "left" and found.answers["body_part"].label == "ankle"
    np.testing.assert_allclose(found.answers["laterality"].probs, [1.0, 0.0])
    assert found.qc == () and found.disagreeing == {"laterality": (), "body_part": ()}
    # the exam view differs between views by design: its dominant class, no QC
    assert found.answers["view"].label == "frontal" and "view" not in found.disagreeing
    np.testing.assert_allclose(found.answers["view"].probs, [1.0 / 1.8, 0.8 / 1.8, 0.0], rtol=1e-6)


def test_the_vote_is_weighted_by_each_views_confidence():
    # two hesitant "right" views (0.55 + 0.55 = 1.1) outvote one sure "left" (0.99)
    views = {0: _view((0.99, 0.01)), 2: _view((0.45, 0.55)), 3: _view((0.45, 0.55))}
    found = study_heads(SPEC.heads, views)
    assert found.answers["laterality"].label == "right"
    np.testing.assert_allclose(found.answers["laterality"].probs, [0.99 / 2.09, 1.1 / 2.09], rtol=1e-6)
    assert found.disagreeing["laterality"] == (0,)  # the indices the caller gave (view 1 failed)
    (warning,) = found.qc
    assert warning.startswith("laterality: the views disagree") and "view 0: left (p = 0.99)" in warning


def test_a_tie_goes_to_the_earliest_views_class_and_no_view_is_an_error():
    views = {0: _view((0.3, 0.7), body_part=(0, 0.8, 0.2)), 1: _view((0.7, 0.3), body_part=(0, 0.2, 0.8))}
    found = study_heads(SPEC.heads, views)
    assert found.answers["laterality"].label == "right" and found.answers["body_part"].label == "wrist"
    assert [w.split(":")[0] for w in found.qc] == ["laterality", "body_part"]
    with pytest.raises(StudyError, match="at least one scored view"):
        study_heads(SPEC.heads, {})


def test_the_committed_study_config_is_the_generators():
    served = load_spec(OLCZAK_DEMO_REPOSITORY / c.SPEC_FILE)
    path = OLCZAK_DEMO_REPOSITORY / c.STUDY_MODEL / c.CONFIG_FILE
    assert path.read_text() == config_text(study_config(served, RepositoryOptions()))
    names = {t.name for t in c.study_outputs(served.head_dims)}
    assert {"STUDY_LATERALITY", "STUDY_BODY_PART_PROBS", "STUDY_QC", "VIEW_VIEW_PROBS", "VIEW_QC"} <= names


# --- served: fracscan_study on the committed Olczak demo repository ---


@pytest.fixture(scope="module")
def olczak_server(tmp_path_factory):
    from fracscan.server import EmbeddedServer

    with EmbeddedServer(OLCZAK_DEMO_REPOSITORY, log_path=tmp_path_factory.mktemp("olczak") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def wrist_views():
    """Wrist views the reference reads confidently and rightly, by the laterality their image shows."""
    from fracscan.pipeline import ReferenceRunner

    reference = ReferenceRunner(OLCZAK_DEMO_REPOSITORY)
    found: dict[str, list[tuple[bytes, dict]]] = {"left": [], "right": []}
    for seed in range(STUDY_SEEDS, STUDY_SEEDS + 60):
        case = make_case(seed, region="wrist", fracture=False, shape=(400, 330), view=("frontal", "lateral")[seed % 2])
        data = png_bytes(case)
        heads = reference.predict(data).heads
        side = LATERALITY[case.laterality]
        good = heads["laterality"].label == side and heads["body_part"].label == "wrist"
        if good and min(heads["laterality"].confidence, heads["body_part"].confidence) >= 0.9:
            found[side].append((data, heads))
        if min(len(v) for v in found.values()) >= 2:
            return found
    pytest.fail(f"fewer than two confident wrist views per side among 60 seeds: {[len(v) for v in found.values()]}")


def _expected_vote(view_heads: list[dict], head: str) -> tuple[str, dict[str, float]]:
    """The documented rule, written out here: each view's top class weighted by its probability."""
    votes: dict[str, float] = {}
    for heads in view_heads:
        votes[heads[head].label] = votes.get(heads[head].label, 0.0) + heads[head].confidence
    label = max(votes, key=votes.__getitem__)
    return label, {k: v / sum(votes.values()) for k, v in votes.items()}


def test_a_study_whose_views_agree_has_their_class_and_no_qc(olczak_server, wrist_views):
    views = wrist_views["left"][:2]
    with FracScanClient(olczak_server.http_url) as client:
        study = client.predict_study([data for data, _ in views])
    assert study.heads["laterality"].label == "left" and study.heads["body_part"].label == "wrist"
    assert study.heads["laterality"].probs == {"left": 1.0, "right": 0.0}
    assert study.qc == ()
    for view, (_, ref) in zip(study.views, views, strict=True):
        for head, answer in ref.items():
            assert view.heads[head].label == answer.label
            assert list(view.heads[head].probs.values()) == pytest.approx(answer.probs.tolist(), abs=1e-5)


def test_a_study_whose_views_disagree_is_flagged(olczak_server, wrist_views):
    views = [*wrist_views["left"][:2], wrist_views["right"][0]]
    with FracScanClient(olczak_server.http_url) as client:
        study = client.predict_study([data for data, _ in views])
    label, shares = _expected_vote([ref for _, ref in views], "laterality")
    assert label == "left"  # two confident left views outvote one right
    assert study.heads["laterality"].label == label
    assert study.heads["laterality"].probs == pytest.approx(shares, abs=1e-5)
    (warning,) = [w for w in study.qc if w.startswith("laterality")]
    assert "view 2: right" in warning and "view 0" not in warning and "view 1" not in warning
    assert not [w for w in study.qc if w.startswith("body_part")]  # all three are wrists
    assert [v.heads["laterality"].label for v in study.views] == ["left", "left", "right"]
    assert study.to_dict()["heads"]["laterality"]["label"] == "left" and study.to_dict()["qc"] == list(study.qc)


def test_predict_by_study_writes_the_heads_and_the_qc_flag(olczak_server, wrist_views, tmp_path):
    for name, views in (
        ("agree", wrist_views["right"][:2]),
        ("disagree", [wrist_views["right"][0], wrist_views["left"][0]]),
    ):
        (tmp_path / name).mkdir()
        for i, (data, _) in enumerate(views):
            (tmp_path / name / f"view{i}.png").write_bytes(data)
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "fracscan.cli", "predict", str(tmp_path / "agree"), str(tmp_path / "disagree")]
    cmd += ["--url", olczak_server.http_url, "--by-study", "--format", "jsonl", "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    studies = {r["study"].rsplit("/", 1)[-1]: r for r in rows if r["kind"] == "study"}
    assert studies["agree"]["laterality"] == "right" and studies["agree"]["qc"] == []
    assert studies["agree"]["body_part"] == "wrist" and studies["agree"]["laterality_probs"]["right"] == 1.0
    (warning,) = studies["disagree"]["qc"]
    assert warning.startswith("laterality: the views disagree")
    # one view each way: the surer view's class wins
    views = wrist_views["right"][0][1]["laterality"], wrist_views["left"][0][1]["laterality"]
    assert studies["disagree"]["laterality"] == max(views, key=lambda a: a.confidence).label
    images = [r for r in rows if r["kind"] == "image" and r["study"].endswith("disagree")]
    assert sorted(r["laterality"] for r in images) == ["left", "right"]
    assert all(r["laterality_p"] >= 0.9 and r["qc"] == [] for r in images)
