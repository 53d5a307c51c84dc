"""Every command's --help tells the truth: the choices it lists are the ones the command accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import ROOT
from typer.core import TyperOption
from typer.testing import CliRunner

from fracscan.cli.app import app
from fracscan.contract import STUDY_RULES
from fracscan.server import RESTRICTED_APIS
from fracscan.spec import builtin_spec_names

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
DEAD_URL = "http://127.0.0.1:9"  # nothing listens there: a command that needs a server stops at once


def fracscan(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {"COLUMNS": "250", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fracscan.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    runner = CliRunner()
    return {name: runner.invoke(app, [name, "--help"], env={"COLUMNS": "250"}).output for name in COMMANDS}


def _listed(text: str) -> list[str]:
    """The names a help text or an error lists: 'a, b, c', 'a | b | c' or 'a or b'."""
    return [w.strip(" .'\"`") for w in re.split(r",|\||\bor\b", text) if w.strip(" .'\"`")]


def test_the_walk_sees_every_command():
    assert {"predict", "serve", "export", "calibrate", "evaluate", "health", "listen"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_flags_are_shown_as_flags_and_options_named_in_help_exist(name, helps):
    text = helps[name]
    assert re.search(rf"Usage: \S+ {name} ", text), text
    assert "<bool>" not in text, text
    command = GROUP.commands[name]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for param in command.params:
        prose = re.sub(r"`[^`]*`", "", param.help or "")  # `fracscan predict --format jsonl` names another command
        named = set(re.findall(r"--[a-z][a-z-]+", prose))
        assert named <= options, f"{name} {param.name}: help names {sorted(named - options)}"
        if isinstance(param, TyperOption) and param.is_flag and param.secondary_opts:
            assert re.search(rf"{param.opts[0]}\s+{param.secondary_opts[0]}", text), param.opts


def _choice_options() -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for name in COMMANDS:
        for param in GROUP.commands[name].params:
            desc = getattr(param, "type_descriptor", None)
            if isinstance(param, TyperOption) and desc is not None and desc.is_choice:
                out.append((name, param.opts[0], tuple(str(getattr(c, "value", c)) for c in desc.choices)))
    return out


def test_the_choice_walk_finds_the_formats():
    assert ("evaluate", "--format", ("table", "json")) in _choice_options()
    assert ("predict", "--format", ("table", "json", "jsonl", "csv")) in _choice_options()


@pytest.mark.parametrize(("name", "option", "choices"), _choice_options())
def test_every_listed_choice_passes_the_command_s_own_validation(name, option, choices, helps, tmp_path):
    """A listed choice may fail later for other reasons (no server, no file), never on that option."""
    assert f"<{'|'.join(choices)}>" in helps[name]
    required = [tmp_path / f"missing_{p.name}.txt" for p in GROUP.commands[name].params if p.required]
    for choice in choices:
        extra = ["--url", DEAD_URL] if "--url" in helps[name] else []
        result = fracscan(name, *map(str, required), option, choice, *extra, cwd=tmp_path)
        said = result.stdout + result.stderr
        assert not re.search(rf"{option}\b[^\n]*(must|got|invalid|Invalid)", said), f"{name} {option} {choice}: {said}"
    refused = fracscan(name, *map(str, required), option, "no-such-choice", cwd=tmp_path)
    assert refused.returncode == 2 and "no-such-choice" in refused.stderr


def _help_list(help_text: str, option: str) -> list[str]:
    line = next(ln for ln in help_text.splitlines() if re.search(rf"│ {option}\s", ln))
    body = re.search(r"\(([^()]*\|[^()]*|[^()]*,[^()]*)\)|: ([a-z0-9_, |-]+)\.|one of ([^.]+)|of ([a-z, -]+) \(", line)
    assert body, line
    return _listed(next(g for g in body.groups() if g))


def test_export_spec_names_are_the_builtin_specs_and_a_wrong_name_lists_them(helps, tmp_path):
    listed = _help_list(helps["export"], "--spec")
    assert listed == list(builtin_spec_names()) and {"jones2020", "olczak2017", "demo", "olczak_demo"} <= set(listed)
    wrong = fracscan("export", "--spec", "olczak", "--check", cwd=tmp_path)
    assert wrong.returncode == 2 and "spec file not found" not in wrong.stderr
    assert _listed(wrong.stderr.split("the built-in specs are", 1)[1].split("(")[0]) == listed, wrong.stderr
    for name in listed:  # each listed name resolves (the check may fail on members, not on the name)
        said = fracscan("export", "--spec", name, "--check", cwd=tmp_path).stderr
        assert "no built-in spec" not in said and "not found" not in said.split("checkpoint")[0], said


def test_export_target_list_is_what_export_accepts(helps, tmp_path):
    from fracscan.export.repository import TARGETS

    assert _help_list(helps["export"], "--target") == list(TARGETS)
    wrong = fracscan("export", "--spec", "demo", "--target", "gpu", "-o", "out", cwd=tmp_path)
    assert wrong.returncode == 2 and _listed(wrong.stderr.split("one of", 1)[1].split(",  got")[0])[:3] == list(TARGETS)


@pytest.mark.parametrize("name", ["calibrate", "evaluate"])
def test_study_rules_listed_are_the_rules_there_are(name, helps):
    assert _help_list(helps[name], "--rule") == list(STUDY_RULES)


def test_serve_allow_api_lists_the_apis_serve_can_open(helps):
    assert _help_list(helps["serve"], "--allow-api") == list(RESTRICTED_APIS)
