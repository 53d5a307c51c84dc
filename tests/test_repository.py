"""The committed demo repository and `fracscan export`: configs parse and regenerate identically."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from fracscan.export.repository import (
    TARGETS,
    RepositoryOptions,
    config_text,
    ensemble_config,
    member_config,
    parse_config,
)
from fracscan.pipeline import EnsembleRepository
from fracscan.spec import builtin_spec_path, load_spec, save_spec


def test_every_config_parses_with_tritons_protobuf(repository):
    configs = sorted(repository.glob("*/config.pbtxt"))
    assert len(configs) == 6 + len(EnsembleRepository.open(repository).spec.members)
    for path in configs:
        cfg = parse_config(path.read_text())
        assert cfg.name == path.parent.name


@pytest.mark.parametrize("target", TARGETS)
def test_generated_configs_parse_for_every_target(target):
    spec = load_spec(builtin_spec_path("jones2020"))
    options = RepositoryOptions()
    ensemble = parse_config(config_text(ensemble_config(spec, options)))
    assert ensemble.platform == "ensemble" and len(ensemble.ensemble_scheduling.step) == 14
    assert ensemble.parameters["ensemble_spec"].string_value == "jones2020"
    for i in range(len(spec.members)):
        cfg = parse_config(config_text(member_config(spec, i, target, options)))
        assert cfg.max_batch_size >= ensemble.max_batch_size  # ensemble max_batch_size <= every member's
        assert [t.name for t in cfg.input] == ["image"] and cfg.output[0].name == "score"


def test_export_regenerates_the_committed_repository(repository, tmp_path):
    """`fracscan export` from the served spec + the committed member ONNX files reproduces the configs."""
    repo = EnsembleRepository.open(repository)
    spec_path = tmp_path / "spec.toml"
    members = tuple(replace(m, onnx=str(repo.member_onnx(i))) for i, m in enumerate(repo.spec.members))
    save_spec(replace(repo.spec, members=members), spec_path)
    out = tmp_path / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fracscan.cli",
            "export",
            "--spec",
            str(spec_path),
            "--target",
            "cpu",
            "-o",
            str(out),
            "--thresholds",
            str(repository / "thresholds.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for path in sorted(repository.glob("*/config.pbtxt")):
        assert (out / path.relative_to(repository)).read_text() == path.read_text(), path
    assert (out / "fracscan.toml").read_text() == (repository / "fracscan.toml").read_text()
    for i in range(len(members)):
        assert (out / f"member_{i:02d}/1/model.onnx").read_bytes() == repo.member_onnx(i).read_bytes()


def test_export_errors_are_clear(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fracscan.cli", "export", "--spec", "jones2020", "-o", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "have neither an 'onnx' file nor a 'checkpoint'" in result.stderr
    assert "Traceback" not in result.stderr
