"""Spec and checkpoint mistakes get messages an ML engineer acts on: the file, the table, the nearest name, the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fracscan.spec import SpecError, load_spec

DEMO_SPEC = (ROOT / "demo" / "demo.toml").read_text()


def fracscan(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def spec_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in DEMO_SPEC, old
    path = tmp_path / "typo.toml"
    path.write_text(DEMO_SPEC.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[preprocess]", "[preproces]", "unknown table [preproces] — did you mean [preprocess]?"),
        ("[regions]", "[region]", "unknown table [region] — did you mean [regions]?"),
        ("[[members]]", "[[member]]", "unknown table [[member]] — did you mean [[members]]?"),
        (
            'name = "demo"',
            'name = "demo"\ndescripton = "x"',
            "unknown key 'descripton' at the top level — did you mean 'description'?",
        ),
        (
            "size = 128",
            "size = 128\nlcn_sigm = 2.0",
            "unknown key 'lcn_sigm' in [preprocess] — did you mean 'lcn_sigma'?",
        ),
        ('arch = "drn_d_22"', 'arch = "drn_d_22"\nwidht = 0.125', "unknown key 'widht' in [[members]] #0"),
    ],
)
def test_a_misspelt_table_or_key_is_refused_with_the_nearest_name(tmp_path, old, new, expected):
    path = spec_with(tmp_path, old, new)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), str(info.value)


def test_a_name_with_nothing_close_lists_what_is_known(tmp_path):
    with pytest.raises(SpecError, match=r"unknown table \[zzz\]; known: 'name', 'description', 'demo', \[preprocess\]"):
        load_spec(spec_with(tmp_path, "[preprocess]", "[zzz]\nq = 1\n\n[preprocess]"))


def test_a_head_key_typo_names_the_head(tmp_path):
    path = tmp_path / "olczak.toml"
    path.write_text(
        (ROOT / "fracscan" / "specs" / "olczak2017.toml").read_text().replace("check_confidence", "check_confidense", 1)
    )
    with pytest.raises(
        SpecError, match=r"unknown key 'check_confidense' in \[heads.laterality\] — did you mean 'check_confidence'\?"
    ):
        load_spec(path)


@pytest.mark.parametrize("extra", [[], ["--check"]])
def test_export_and_its_check_refuse_a_misspelt_table(tmp_path, extra):
    path = spec_with(tmp_path, "[preprocess]", "[preproces]")
    result = fracscan("export", "--spec", str(path), "-o", "out", *extra, cwd=tmp_path)
    assert result.returncode == 2 and "did you mean [preprocess]?" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_wrong_builtin_name_lists_the_builtin_specs(tmp_path):
    result = fracscan("export", "--spec", "olczak", "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "the built-in specs are jones2020, olczak2017, demo, olczak_demo" in result.stderr, result.stderr


def _spec_for(tmp_path: Path, arch: str, checkpoint: str) -> Path:
    head = DEMO_SPEC.split("[[members]]")[0].replace("demo = true", "")
    path = tmp_path / "one.toml"
    path.write_text(head + f'[[members]]\nname = "m"\narch = "{arch}"\nwidth = 0.125\ncheckpoint = "{checkpoint}"\n')
    return path


def test_export_without_torch_says_how_to_install_it_and_lists_missing_checkpoints(tmp_path):
    """A python that cannot import torch (a meta-path finder refuses it), as after `make demo`."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker)}
    spec = _spec_for(tmp_path, "drn_d_22", "members/absent.pt")
    export = fracscan("export", "--spec", str(spec), "-o", "out", cwd=tmp_path, env=env)
    assert export.returncode == 2, export.stderr
    assert "1 checkpoint file(s) not found:" in export.stderr and "absent.pt" in export.stderr
    assert "make install-export" in export.stderr and "torch==2.13.0" in export.stderr
    check = fracscan("export", "--spec", str(spec), "--check", cwd=tmp_path, env=env)
    assert check.returncode == 2 and "checkpoint file not found:" in check.stderr and "absent.pt" in check.stderr
    (tmp_path / "members").mkdir()
    (tmp_path / "members" / "absent.pt").write_bytes(b"present now")
    check = fracscan("export", "--spec", str(spec), "--check", cwd=tmp_path, env=env)
    assert "No module named 'torch'" in check.stderr and "make install-export" in check.stderr, check.stderr


@pytest.mark.torch
def test_a_pickled_module_gets_the_state_dict_line_without_colour_codes(tmp_path):
    torch = pytest.importorskip("torch")
    from fracscan.export.members import build_member
    from fracscan.spec import MemberSpec

    torch.save(build_member(MemberSpec(name="m", arch="drn_d_22", width=0.125)), tmp_path / "whole.pt")
    spec = _spec_for(tmp_path, "drn_d_22", "whole.pt")
    for extra in (["--check"], ["-o", "out"]):
        result = fracscan("export", "--spec", str(spec), *extra, cwd=tmp_path)
        assert result.returncode == 2 and "\x1b[" not in result.stderr, result.stderr
        assert "torch.save(model.state_dict()," in result.stderr and "whole.pt" in result.stderr, result.stderr
        assert "weights_only=False" not in result.stderr


@pytest.mark.torch
def test_a_checkpoint_of_another_arch_names_that_arch(tmp_path):
    torch = pytest.importorskip("torch")
    from fracscan.export.members import build_member
    from fracscan.spec import MemberSpec

    d54 = build_member(MemberSpec(name="m", arch="drn_d_54", width=0.125))
    torch.save(d54.state_dict(), tmp_path / "d54.pt")
    spec = _spec_for(tmp_path, "drn_d_38", "d54.pt")
    for extra in (["--check"], ["-o", "out"]):
        result = fracscan("export", "--spec", str(spec), *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "are those of drn_d_54, not drn_d_38" in result.stderr and 'set arch = "drn_d_54"' in result.stderr
