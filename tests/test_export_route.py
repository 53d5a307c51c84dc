"""From checkpoints to a served repository, as a user runs it: export resume, thresholds, notices (docs/spec.md)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, example_files

from fracscan import provenance
from fracscan.server import DEMO_REPOSITORY, free_port

FRACSCAN = [sys.executable, "-m", "fracscan.cli"]
VENV_BIN = str(Path(sys.executable).parent)
DEMO_HEAD = (ROOT / "demo" / "demo.toml").read_text().split("[[members]]")[0]


def run(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FRACSCAN, *args], capture_output=True, text=True, timeout=timeout, **kw)


def small_spec(path: Path, members: list[tuple[str, str, str]], name: str = "small") -> Path:
    """A spec on the demo's pre-processing and regions, not marked demo; members (name, arch, extra TOML)."""
    head = DEMO_HEAD.replace('name = "demo"', f'name = "{name}"').replace("demo = true", "")
    body = "".join(f'[[members]]\nname = "{n}"\narch = "{a}"\nwidth = 0.125\n{extra}\n' for n, a, extra in members)
    path.write_text(head + body)
    return path


def save_checkpoint(path: Path, name: str, arch: str, seed: int, **fields) -> None:
    import torch

    from fracscan.export.members import build_member
    from fracscan.spec import MemberSpec

    torch.manual_seed(seed)
    torch.save({"state_dict": build_member(MemberSpec(name=name, arch=arch, width=0.125, **fields)).state_dict()}, path)


def temp_files(folder: Path) -> list[Path]:
    return list(folder.rglob(".fracscan-tmp-*"))


@pytest.mark.torch
def test_worked_example_in_docs_runs_as_written(tmp_path, server):
    """docs/spec.md's shell blocks, in order, in an empty folder; only the ports are replaced (8000-8002 may be taken).

    The serving block runs twice: first on the ports of a demo server that is still running (it must
    fail, naming the demo, and write no results), then on free ports.
    """
    pytest.importorskip("torch")
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "spec.md").read_text(), flags=re.S)
    blocks = [b for b in blocks if not b.lstrip().startswith("make ")]  # the install: this test runs installed
    assert len(blocks) >= 4
    out = run_script("\n".join(blocks[:-1]), tmp_path)
    assert "all 2 members of 'my_ensemble' load" in out and "Traceback" not in out
    assert re.search(r"\[1/2\] member_00 d22_plain_map: exported from checkpoint .* parity max", out)

    busy = (server.http_port, server.grpc_port, server.metrics_port)  # the demo still serves there
    with pytest.raises(AssertionError) as refused:
        run_script(blocks[-1], tmp_path, busy)
    assert "serves demo@" in str(refused.value) and "build/my_repo" in str(refused.value)
    assert not (tmp_path / "results.csv").exists()  # not filled by the demo

    out = run_script(blocks[-1], tmp_path, (free_port(), free_port(), free_port()))
    assert "UNCALIBRATED thresholds" in out  # export, serve and predict say so
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row and ",my_ensemble," in row for row in rows[1:]), rows


def run_script(script: str, cwd: Path, ports: tuple[int, int, int] | None = None) -> str:
    """Run shell blocks with `set -euo pipefail`, ports 8000-8002 replaced; the output, or AssertionError with it."""
    ports = ports or (free_port(), free_port(), free_port())
    for default, port in zip(("8000", "8001", "8002"), ports, strict=True):
        script = script.replace(default, str(port))
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        with_group_killed(proc)
    assert proc.returncode == 0, out
    return out


def with_group_killed(proc: subprocess.Popen) -> None:
    """Nothing the script started outlives the test (the server it put in the background included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.torch
def test_killed_export_resumes_and_a_changed_checkpoint_is_exported_again(tmp_path):
    pytest.importorskip("torch")
    members = [
        ("a", "drn_d_22", 'input = "plain"\nmap = true'),
        ("b", "drn_c_26", 'input = "lcn"'),
        ("c", "drn_d_22", ""),
    ]
    for i, (name, arch, _) in enumerate(members):
        fields = {"input": "plain", "map": True} if name == "a" else {"input": "lcn"} if name == "b" else {}
        save_checkpoint(tmp_path / f"{name}.pt", name, arch, seed=i, **fields)
    spec = small_spec(tmp_path / "spec.toml", [(n, a, f'{x}\ncheckpoint = "{n}.pt"') for n, a, x in members])
    out = tmp_path / "repo"
    proc = subprocess.Popen(
        [*FRACSCAN, "export", "--spec", str(spec), "-o", str(out)], stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stderr:
            if line.startswith("[1/3]"):
                assert "exported from checkpoint" in line and "parity max" in line, line
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "fracscan" / "config.pbtxt").exists()  # it really stopped midway
    # what a SIGKILL leaves: a temporary file of a process that is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / f".fracscan-tmp-{gone.pid}-member_01.onnx").write_bytes(b"partial")

    again = run("export", "--spec", str(spec), "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert re.search(r"\[1/3\] member_00 a: reused from", again.stderr), again.stderr
    assert re.search(r"\[3/3\] member_02 c: (exported|reused)", again.stderr)
    assert "removed 1 temporary file(s)" in again.stderr and not temp_files(out)
    assert (out / "fracscan" / "config.pbtxt").is_file()

    save_checkpoint(tmp_path / "b.pt", "b", "drn_c_26", seed=7, input="lcn")  # member b retrained
    changed = run("export", "--spec", str(spec), "-o", str(out))
    assert changed.returncode == 0, changed.stderr
    assert "[1/3] member_00 a: reused" in changed.stderr and "[3/3] member_02 c: reused" in changed.stderr
    assert "[2/3] member_01 b: exported from checkpoint" in changed.stderr


@pytest.mark.torch
def test_sigterm_unwinds_and_removes_temporary_files(tmp_path):
    pytest.importorskip("torch")
    spec = small_spec(tmp_path / "spec.toml", [("a", "drn_d_22", ""), ("b", "drn_d_38", "")])
    out = tmp_path / "repo"
    proc = subprocess.Popen(
        [*FRACSCAN, "export", "--spec", str(spec), "-o", str(out), "--random-init"], stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stderr:
            if line.startswith("[1/2]"):
                proc.send_signal(signal.SIGTERM)
                break
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM  # our handler ran (the default action gives -15)
    assert not temp_files(out)
    assert (out / "member_00" / "export.json").is_file()


def demo_members_spec(path: Path, onnx: list[str]) -> Path:
    """The first demo members, from ONNX files (fast: nothing to export)."""
    demo = (ROOT / "demo" / "demo.toml").read_text().split("[[members]]")
    entries = [demo[i + 1].strip() + f'\nonnx = "{file}"\n' for i, file in enumerate(onnx)]
    head = demo[0].replace('name = "demo"', 'name = "mine"').replace("demo = true", "")
    path.write_text(head + "".join(f"[[members]]\n{e}\n" for e in entries))
    return path


def test_thresholds_are_kept_only_while_the_members_are_unchanged(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    for i in range(2):
        shutil.copyfile(DEMO_REPOSITORY / f"member_0{i}/1/model.onnx", tmp_path / f"m{i}.onnx")
    spec = demo_members_spec(tmp_path / "spec.toml", ["m0.onnx", "m1.onnx"])
    out = tmp_path / "repo"
    calibrated = DEMO_REPOSITORY / "thresholds.json"
    first = run("export", "--spec", str(spec), "-o", str(out), "--thresholds", str(calibrated))
    assert first.returncode == 0, first.stderr
    assert provenance.read(out).calibrated and "UNCALIBRATED" not in first.stderr

    same = run("export", "--spec", str(spec), "-o", str(out))
    assert same.returncode == 0, same.stderr
    assert "kept the calibrated thresholds.json" in same.stderr and "unchanged (same content hashes)" in same.stderr
    assert (out / "thresholds.json").read_text() == calibrated.read_text()

    retrained = onnx.load(str(tmp_path / "m1.onnx"))
    retrained.doc_string = "retrained"  # another file: another content hash
    onnx.save(retrained, str(tmp_path / "m1.onnx"))
    changed = run("export", "--spec", str(spec), "-o", str(out))
    assert changed.returncode == 0, changed.stderr
    assert "the members changed" in changed.stderr and "no longer fit" in changed.stderr
    assert not provenance.read(out).calibrated and "UNCALIBRATED thresholds" in changed.stderr


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_the_demo_spec_exports_from_the_committed_onnx(tmp_path, target):
    pytest.importorskip("onnx")
    result = run("export", "--spec", "demo", "--target", target, "-o", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    record = provenance.read(tmp_path / "repo")
    assert record.demo and record.calibrated and "DEMO ensemble" in result.stderr
    assert record.member_hashes == provenance.read(DEMO_REPOSITORY).member_hashes


def test_jones2020_without_checkpoints_says_what_to_provide(tmp_path):
    result = run("export", "--spec", "jones2020", "-o", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "10 of the 10 members of spec 'jones2020' have neither an 'onnx' file nor a 'checkpoint'" in message
    assert 'checkpoint = "path/to/member.pt"' in message and "docs/spec.md" in message and "--random-init" in message
    assert not (tmp_path / "r").exists()


@pytest.mark.torch
def test_check_lists_every_key_with_brackets_intact_and_writes_nothing(tmp_path):
    pytest.importorskip("torch")
    import torch

    save_checkpoint(tmp_path / "a.pt", "a", "drn_d_22", seed=0)
    state = torch.load(tmp_path / "a.pt")["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("backbone.layer3.")}
    state["stray[0].weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    spec = small_spec(
        tmp_path / "spec.toml",
        [("a", "drn_d_22", 'checkpoint = "a.pt"'), ("b", "drn_d_22", 'checkpoint = "broken.pt"')],
    )
    result = run("export", "--spec", str(spec), "--check")
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert re.search(r"member_00 a: checkpoint \S+a\.pt \(fracscan layout\), [\d,]+ parameters: OK", text), text
    missing = [
        k
        for k in torch.load(tmp_path / "a.pt")["state_dict"]  # BatchNorm counters are filled in
        if k.startswith("backbone.layer3.") and not k.endswith("num_batches_tracked")
    ]
    assert f"{len(missing)} missing keys: {', '.join(missing)}" in text  # every key, none cut
    assert "1 unexpected keys: stray[0].weight" in text
    assert "1 of 2 members would not export: b" in text
    assert {p.name for p in tmp_path.iterdir()} == {"a.pt", "broken.pt", "spec.toml"}  # nothing written


@pytest.mark.torch
def test_random_weights_and_uncalibrated_notices_in_serve_health_predict(tmp_path):
    pytest.importorskip("torch")
    spec = small_spec(tmp_path / "spec.toml", [("a", "drn_d_22", 'input = "plain"\nmap = true')])
    out = tmp_path / "repo"
    exported = run("export", "--spec", str(spec), "-o", str(out), "--random-init")
    assert exported.returncode == 0, exported.stderr
    assert "RANDOM WEIGHTS" in exported.stderr and provenance.read(out).random_weights
    ports = [str(free_port()) for _ in range(3)]
    serve = subprocess.Popen(
        [
            *FRACSCAN,
            "serve",
            "--repository",
            str(out),
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        deadline = time.monotonic() + 180
        for line in serve.stderr:
            seen.append(line)
            if line.startswith("Ready.") or time.monotonic() > deadline:
                break
        banner = "".join(seen)
        assert "RANDOM WEIGHTS" in banner and "UNCALIBRATED" in banner, banner
        url = f"http://127.0.0.1:{ports[0]}"
        health = run("health", "--url", url, timeout=60)
        predict = run("predict", str(example_files()[0]), "--url", url, "--format", "json", timeout=120)
        for result in (health, predict):
            assert result.returncode == 0, result.stderr
            assert "RANDOM WEIGHTS" in result.stderr and "UNCALIBRATED" in result.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        finally:
            serve.kill()
