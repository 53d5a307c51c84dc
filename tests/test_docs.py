"""The documentation as a reader meets it: runnable examples run as written, links lead somewhere,
the contract page matches the contract, and the pages speak of the software only.

A block is runnable when the line before its fence is `<!-- runnable -->`, optionally with tags:
`<!-- runnable: server -->` (it talks to a running server at localhost:8000/8001: the test's own
embedded server is substituted) and `torch` (it needs the export extra). A page's runnable blocks
run in order, in one empty folder that holds links to `examples/`, `demo/` and the demo
repositories; other port numbers 8000-8002 are replaced with free ones.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, example_files

from fracscan.server import free_port

PAGES = sorted(
    p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", ROOT / "demo" / "README.md", *ROOT.glob("docs/*.md")]
)
# Pages the table of contents names that are written alongside this one; links to them are not checked yet.
LINKED_IN_CWD = ("examples", "demo", "model_repository", "model_repository_olczak")
MARKER = re.compile(r"<!-- runnable(?::\s*([\w ,-]+))? -->\n```(\w*)\n(.*?)^```", re.S | re.M)
LANGUAGES = {"bash": ["bash", "-c"], "python": [sys.executable, "-c"]}
VENV_BIN = str(Path(sys.executable).parent)


@dataclass(frozen=True)
class Block:
    page: str
    language: str
    tags: frozenset[str]
    source: str


def runnable_blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    return [
        Block(page, lang, frozenset(t.strip() for t in (tags or "").split(",") if t.strip()), source)
        for tags, lang, source in MARKER.findall(text)
    ]


def _page_param(page: str):
    tags = set().union(*(b.tags for b in runnable_blocks(page))) if runnable_blocks(page) else set()
    return pytest.param(page, marks=[pytest.mark.torch] if "torch" in tags else [], id=page)


def _ports(block: Block, server, free: dict[str, str]) -> str:
    source = block.source
    if "server" in block.tags:
        source = source.replace("localhost:8000", f"127.0.0.1:{server.http_port}")
        return source.replace("localhost:8001", f"127.0.0.1:{server.grpc_port}")
    for port in ("8000", "8001", "8002"):
        source = source.replace(port, free.setdefault(port, str(free_port())))
    return source


def run_page(page: str, cwd: Path, server=None) -> list[str]:
    """Every runnable block of `page` in order, in `cwd`; returns each block's output (stdout + stderr)."""
    for name in LINKED_IN_CWD:
        (cwd / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "200"}
    outputs, free = [], {}
    for block in runnable_blocks(page):
        source = _ports(block, server, free)
        argv = [*LANGUAGES[block.language], "set -euo pipefail\n" + source if block.language == "bash" else source]
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, text=True, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing a block started (a server in the background) outlives it
            proc.wait(timeout=30)
        assert proc.returncode == 0, f"{page}, block:\n{block.source}\noutput:\n{out}"
        assert "Traceback" not in out, out
        outputs.append(out)
    return outputs


def _readme(outputs: list[str], cwd: Path) -> None:
    rows = list(csv.DictReader((cwd / "results.csv").open()))
    assert len(rows) == len(example_files()) and {r["status"] for r in rows} == {"ok"}, rows
    assert "DEMO" in outputs[0]


def _spec(outputs: list[str], cwd: Path) -> None:
    out = "\n".join(outputs)
    assert "all 2 members of 'my_ensemble' load" in out
    assert re.search(r"\[1/2\] member_00 d22_plain_map: exported from checkpoint .* parity max", out)
    assert "UNCALIBRATED thresholds" in out  # export, serve and predict say so
    rows = (cwd / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows


def _contract(outputs: list[str], cwd: Path) -> None:
    answer = {o["name"]: o["data"] for o in json.loads(outputs[0])["outputs"]}
    assert answer["REGION_USED"] == ["tibia_fibula"] and 0.0 <= answer["SCORE"][0] <= 1.0
    assert sorted(p.name for p in cwd.iterdir()) == sorted(LINKED_IN_CWD)  # the body went to a temporary file


def _sdk(outputs: list[str], cwd: Path) -> None:
    assert "score " in outputs[0] and "scan2.png: file not found (input)" in outputs[0]
    assert "'source': 'examples/wrist_fracture.dcm'" in outputs[0]


def _cli(outputs: list[str], cwd: Path) -> None:
    assert outputs[0].startswith("fracscan ")
    report = json.loads((cwd / "report.json").read_text())
    assert report["overall"]["n"] == 480, report["overall"]
    assert json.loads((cwd / "thresholds.json").read_text())["regions"]


def _pacs(outputs: list[str], cwd: Path) -> None:
    written = sorted(".".join(p.name.split(".")[-2:]) for p in (cwd / "results").iterdir())
    assert written == ["gsps.dcm", "sc.dcm", "sr.dcm"], written


def _olczak(outputs: list[str], cwd: Path) -> None:
    assert "laterality" in outputs[0] and "0.962" in outputs[0]


CHECKS: dict[str, Callable[[list[str], Path], None]] = {
    "README.md": _readme,
    "docs/spec.md": _spec,
    "docs/contract.md": _contract,
    "docs/sdk.md": _sdk,
    "docs/cli.md": _cli,
    "docs/pacs.md": _pacs,
    "docs/olczak.md": _olczak,
}


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES if runnable_blocks(p)])
def test_runnable_blocks_run_as_written(page, tmp_path, request):
    blocks = runnable_blocks(page)
    if any("torch" in b.tags for b in blocks):
        pytest.importorskip("torch")
    server = request.getfixturevalue("server") if any("server" in b.tags for b in blocks) else None
    outputs = run_page(page, tmp_path, server)
    CHECKS[page](outputs, tmp_path)


def test_every_page_with_runnable_blocks_is_checked():
    assert {p for p in PAGES if runnable_blocks(p)} == set(CHECKS)


@pytest.mark.parametrize("page", PAGES)
def test_runnable_markers_are_well_formed(page):
    text = (ROOT / page).read_text()
    blocks = runnable_blocks(page)
    markers = re.findall(r"^<!-- runnable", text, re.M)
    assert len(markers) == len(blocks), f"{page}: a runnable marker not followed by a fence"
    for block in blocks:
        assert block.language in LANGUAGES, f"{page}: runnable blocks are bash or python, got {block.language!r}"
        assert block.tags <= {"server", "torch"}, f"{page}: unknown tags {sorted(block.tags)}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_somewhere(page):
    path = ROOT / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page}: {broken}"


def test_the_contract_page_is_generated_from_the_contract():
    proc = subprocess.run([sys.executable, "scripts/contract_docs.py", "--check"], cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def test_the_contract_page_check_can_fail(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import contract_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    stale = tmp_path / "contract.md"
    stale.write_text(contract_docs.render().replace("`SCORE`", "`SCORES`"))
    monkeypatch.setattr(contract_docs, "PAGE", stale)
    monkeypatch.setattr(sys, "argv", ["contract_docs.py", "--check"])
    assert contract_docs.main() == 1


def test_the_readme_is_short_and_says_how_to_reach_fracscan():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "source .venv/bin/activate" in first_screen and ".venv/bin/fracscan" in first_screen
    for page in {p for p in PAGES if p.startswith("docs/")}:
        assert f"]({page})" in readme, f"the README's table of contents misses {page}"


# Words about how the software was made, not about the software. ONNX Runtime sessions are fine.
HISTORY = re.compile(
    r"\b(this|that|one|another|the)\s+session\b|\bsession's\b|\bsessions'|\bissue\s+#?\d+|\bthe issue\b"
    r"|\bissue's\b|\blent to\b|\bhelper session",
    re.I,
)


def test_no_page_or_docstring_speaks_of_how_the_software_was_made():
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout
    offenders = []
    for name in tracked.split():
        if name == "tests/test_docs.py" or not (ROOT / name).is_file():
            continue
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if HISTORY.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_history_scan_can_fail():
    said_of_a_session, said_of_an_issue = (
        " ".join(("This", "session had no GPU")),
        " ".join(("(issue", "18 items 2, 9)")),
    )
    assert HISTORY.search(said_of_a_session) and HISTORY.search(said_of_an_issue)
    assert not HISTORY.search("ten ONNX Runtime sessions, one per member")


def _make_dry_run(target: str, tmp_path: Path) -> str:
    """The commands `make TARGET` would run from a fresh clone (a venv that does not exist yet)."""
    venv = tmp_path / "fresh-venv"
    proc = subprocess.run(["make", "-n", "-B", f"VENV={venv}", target], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_installs_no_pacs_packages_and_says_how_to_reach_fracscan(tmp_path):
    demo = _make_dry_run("demo", tmp_path)
    assert "libpython" in demo and "fracscan predict examples/" in demo
    for package in ("orthanc", "dcmtk", "dicom3tools", "torch"):
        assert package not in demo, package
    assert "source " in demo and "/bin/activate" in demo


def test_make_test_installs_the_pacs_and_validator_packages(tmp_path):
    test = _make_dry_run("test", tmp_path)
    assert all(p in test for p in ("orthanc", "orthanc-dicomweb", "dcmtk", "dicom3tools"))


def test_make_install_export_installs_the_cpu_torch_before_the_export_extra(tmp_path):
    lines = _make_dry_run("install-export", tmp_path).splitlines()
    torch_line = next(i for i, line in enumerate(lines) if 'install "torch==2.13.0"' in line)
    extra_line = next(i for i, line in enumerate(lines) if "install -e" in line and ",export" in line)
    assert torch_line < extra_line
    assert "make install-export" in (ROOT / "docs" / "spec.md").read_text()


def test_the_response_parameters_are_as_the_contract_page_says(server):
    """Triton's ensemble scheduler repeats the sequence parameters once per output; fracscan's models add none.
    Should a Triton upgrade change that, this test says to update docs/contract.md."""
    import base64

    import httpx

    image = base64.b64encode((ROOT / "examples" / "elbow_normal.png").read_bytes()).decode()
    body = {"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [image]}]}
    full = httpx.post(f"{server.http_url}/v2/models/fracscan/infer", json=body, timeout=60)
    two = httpx.post(
        f"{server.http_url}/v2/models/fracscan/infer",
        json={**body, "outputs": [{"name": "SCORE"}, {"name": "LEVEL"}]},
        timeout=60,
    )
    step = httpx.post(f"{server.http_url}/v2/models/preprocess/infer", json=body, timeout=60)
    assert full.text.count('"sequence_id"') == len(full.json()["outputs"]) == 11
    assert two.text.count('"sequence_id"') == 2 and '"sequence_id"' not in step.text
    assert "once per\noutput tensor" in (ROOT / "docs" / "contract.md").read_text()
