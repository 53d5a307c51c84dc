"""`fracscan` driven as a user would: subprocesses against the real embedded server."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_png

FRACSCAN = [sys.executable, "-m", "fracscan.cli"]


def run(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*FRACSCAN, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """Good radiographs (PNG, DICOM without suffix, nested) and bad files, in one folder."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "nested" / "deeper").mkdir(parents=True)
    good = []
    for i in range(4):
        path = root / ("nested" if i % 2 else ".") / f"good_{i}.png"
        path.write_bytes(synthetic_png(100 + i))
        good.append(path)
    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*"))
    dicoms = [p for p in examples if p.is_file() and p.read_bytes()[128:132] == b"DICM"][:2]
    for i, src in enumerate(dicoms):
        dst = root / "nested" / "deeper" / f"IM{i:04d}"  # DICOM recognised by content, no suffix
        shutil.copyfile(src, dst)
        good.append(dst)
    bad = {"broken.png": synthetic_png(0)[:80], "empty.dcm": b"", "notes.npy": b"\x93NUMPY garbage"}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    (root / "README.txt").write_text("not an image: skipped when walking a folder")
    return root, sorted(str(p) for p in good), sorted(str(root / n) for n in bad)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_mixed_folder_scores_good_reports_bad_exit_1(server, mixed_folder):
    root, good, bad = mixed_folder
    result = run("predict", str(root), "--url", server.http_url, "--format", "jsonl")
    assert result.returncode == 1, result.stderr
    rows = jsonl(result.stdout)
    by_source = {r["source"]: r for r in rows}
    assert sorted(by_source) == sorted(good + bad)  # one line per input, README.txt skipped
    assert [r["source"] for r in rows] == sorted(by_source, key=[r["source"] for r in rows].index)
    for source in good:
        row = by_source[source]
        assert row["status"] == "ok" and 0 <= row["score"] <= 1 and row["error"] is None
        assert set(row) >= {"source", "status", "score", "fracture", "threshold", "region", "boxes", "error"}
    for source in bad:
        assert by_source[source]["status"] == "error" and by_source[source]["error"]
        assert f"failed: {source}" in result.stderr.replace("\n", " ") or source in result.stderr
    assert "Traceback" not in result.stderr
    assert f"scored {len(good)}, " in result.stderr and f"failed {len(bad)}" in result.stderr


def test_stable_order_and_formats(server, mixed_folder, tmp_path):
    _root, good, _ = mixed_folder
    first = run("predict", *good, "--url", server.http_url, "--format", "jsonl", "--concurrency", "4")
    second = run("predict", *good, "--url", server.http_url, "--format", "jsonl", "--concurrency", "1")
    assert first.returncode == second.returncode == 0
    a, b = jsonl(first.stdout), jsonl(second.stdout)
    assert [r["source"] for r in a] == good and [(r["source"], r["score"]) for r in a] == [
        (r["source"], r["score"]) for r in b
    ]

    out = tmp_path / "out.csv"
    assert run("predict", *good, "--url", server.http_url, "--format", "csv", "--output", str(out)).returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == good and all(r["status"] == "ok" for r in rows)
    assert isinstance(json.loads(rows[0]["boxes"]), list)

    as_json = run("predict", *good[:2], "--url", server.http_url, "--format", "json")
    assert [r["source"] for r in json.loads(as_json.stdout)] == good[:2]

    table = run("predict", *good[:2], "--url", server.http_url, "--format", "table")
    assert table.returncode == 0 and "fracscan predictions" in table.stdout and Path(good[0]).name in table.stdout


def test_region_override_and_glob(server, mixed_folder):
    root, _good, _ = mixed_folder
    result = run("predict", str(root / "*.png"), "--url", server.http_url, "--region", "ankle", "--format", "jsonl")
    rows = jsonl(result.stdout)
    assert rows and all(r["region"] == "ankle" and r["region_source"] == "user" for r in rows if r["status"] == "ok")
    assert {r["source"] for r in rows} == {str(p) for p in sorted(root.glob("*.png"))}


def test_resume_after_interrupted_run(server, mixed_folder, tmp_path):
    _, good, _ = mixed_folder
    out = tmp_path / "run.jsonl"
    # An interrupted run: the first inputs were written, the last line was cut mid-write.
    partial = run("predict", *good[:3], "--url", server.http_url, "--format", "jsonl", "--output", str(out))
    assert partial.returncode == 0
    out.write_text(out.read_text() + '{"source": "' + good[3] + '", "sta')
    resumed = run("predict", *good, "--url", server.http_url, "--format", "jsonl", "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming: 3 inputs already scored" in resumed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line is whole again
    ok_sources = [r["source"] for r in rows if r["status"] == "ok"]
    assert sorted(ok_sources) == sorted(good) and len(ok_sources) == len(set(ok_sources))  # no duplicates


def test_overlay_dir_writes_annotated_png(server, mixed_folder, tmp_path):
    from PIL import Image

    _, good, _ = mixed_folder
    overlays = tmp_path / "overlays"
    result = run("predict", *good[:2], "--url", server.http_url, "--overlay-dir", str(overlays), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    written = sorted(overlays.glob("*.png"))
    assert len(written) == 2
    with Image.open(written[0]) as img:
        assert img.mode == "RGB" and img.size[0] > 100


def test_connection_error_exit_2_and_usage_error(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(synthetic_png(1))
    result = run("predict", str(png), "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 2 and "no fracscan server ready" in result.stderr and "Traceback" not in result.stderr
    usage = run("predict", str(png), "--format", "xml")
    assert usage.returncode == 2
    assert run("predict", str(png), "--resume").returncode == 2


def test_embedded_server_for_one_run(mixed_folder, repository, free_url):
    _, good, _ = mixed_folder
    result = run(
        "predict", *good[:2], "--url", free_url, "--embedded", "--repository", str(repository), "--format", "jsonl"
    )
    assert result.returncode == 0, result.stderr
    assert "starting the embedded server" in result.stderr
    assert [r["status"] for r in jsonl(result.stdout)] == ["ok", "ok"]


def test_health_and_help(server):
    result = run("health", "--url", server.http_url, "--json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert info["ready"] and any(m["name"] == "fracscan" for m in info["models"])
    assert run("health", "--url", "http://127.0.0.1:9", "--timeout", "1").returncode == 2
    top = run("--help")
    for command in ("predict", "serve", "export", "health"):
        assert command in top.stdout
    assert "--resume" in run("predict", "--help").stdout


def test_missing_repository_names_the_path_and_the_option(tmp_path, free_url):
    missing = tmp_path / "no[such]repo"  # brackets too: the path must be printed as written
    png = tmp_path / "a.png"
    png.write_bytes(synthetic_png(1))
    for result in (
        run("serve", "--repository", str(missing), timeout=60),
        run("predict", str(png), "--url", free_url, "--embedded", "--repository", str(missing), timeout=60),
    ):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"error: no model repository at {missing}; pass --repository DIR" in result.stderr


def test_checkpoint_mismatch_error_keeps_its_bracketed_key_lists(tmp_path):
    """Rich markup must not eat `[module, ...]` lists: every message goes through the console's escaping."""
    torch = pytest.importorskip("torch")
    from fracscan.spec import builtin_spec_path

    head = builtin_spec_path("demo").read_text().split("[[members]]")[0]
    member = '[[members]]\nname = "m"\narch = "drn_d_22"\nwidth = 0.125\ninput = "plain"\ncheckpoint = "m.pt"\n'
    (tmp_path / "spec.toml").write_text(head + member)
    torch.save({"stray.weight": torch.zeros(1)}, tmp_path / "m.pt")
    result = run("export", "--spec", str(tmp_path / "spec.toml"), "-o", str(tmp_path / "repo"), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint does not match" in result.stderr
    assert "missing keys in [backbone." in result.stderr and "1 unexpected keys in [stray]" in result.stderr


@pytest.fixture
def free_url() -> str:
    from fracscan.server import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_serve_starts_answers_and_stops_cleanly_on_sigterm(repository):
    import signal
    import time

    import httpx

    from fracscan.server import free_port

    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [
            *FRACSCAN,
            "serve",
            "--repository",
            str(repository),
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert run("health", "--url", f"grpc://127.0.0.1:{ports[1]}").returncode == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and f"HTTP http://127.0.0.1:{ports[0]}" in err and "Stopped." in err
    leftovers = subprocess.run(["pgrep", "-f", f"--http-port={ports[0]}"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""  # no stray tritonserver (its python stubs live in its process group)


def _help_text(text: str) -> str:
    """rich's help boxes with the borders and line breaks taken out."""
    return " ".join(text.replace("│", " ").split())


def test_version_and_the_default_format_in_help():
    from importlib.metadata import version

    assert run("--version").stdout.strip() == f"fracscan {version('fracscan')}"
    assert "[default: (table on a terminal, else jsonl)]" in _help_text(run("predict", "--help").stdout)


@pytest.fixture
def odd_inputs(tmp_path) -> tuple[Path, list[str], dict[str, str]]:
    """A folder with a symlink loop, a FIFO and a file whose name is not UTF-8, plus a named FIFO and a
    glob that matches nothing; returns (folder, the files to score once each, error reason by input)."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(synthetic_png(3))
    (root / "sub" / "b.png").write_bytes(synthetic_png(4))
    latin1 = os.fsdecode(b"caf\xe9.png")  # not UTF-8: Python keeps the byte as a surrogate escape
    (root / latin1).write_bytes(synthetic_png(5))
    (root / "sub" / "loop").symlink_to(root)  # `**` and folder walks must not go round it
    os.mkfifo(root / "pipe.dcm")  # skipped in the folder scan (opening it would block)
    os.mkfifo(tmp_path / "named.fifo")
    scored = [str(root / "a.png"), str(root / "caf\\xe9.png"), str(root / "sub" / "b.png")]
    errors = {
        str(tmp_path / "nothing" / "*.png"): f"no file matches {tmp_path / 'nothing' / '*.png'}",
        str(tmp_path / "named.fifo"): "not a regular file (a FIFO, socket or device cannot be scored)",
    }
    return root, scored, errors


def test_overlapping_inputs_loops_fifos_and_odd_names_score_each_file_once(server, odd_inputs, tmp_path):
    root, scored, errors = odd_inputs
    args = [str(root), str(root / "**" / "*.png"), str(root / "a.png"), *errors]
    result = run("predict", *args, "--url", server.http_url, "--format", "jsonl", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = jsonl(result.stdout)
    assert [r["source"] for r in rows] == [*scored, *errors]  # input order, each file once
    assert all(r["status"] == "ok" for r in rows[: len(scored)])
    assert {r["source"]: r["error"] for r in rows[len(scored) :]} == errors
    for source, reason in errors.items():
        assert f"failed: {source}: {reason}" in result.stderr
    assert set(rows[0]) == set(rows[-1])  # an error row has every key, empty

    csv_run = run("predict", *args, "--url", server.http_url, "--format", "csv", timeout=120)
    assert csv_run.returncode == 1 and "Traceback" not in csv_run.stderr, csv_run.stderr
    table_rows = list(csv.DictReader(csv_run.stdout.splitlines()))
    assert [r["source"] for r in table_rows] == [*scored, *errors]
    assert {r["fracture"] for r in table_rows[: len(scored)]} <= {"0", "1"} and table_rows[-1]["fracture"] == ""

    table = run("predict", *args, "--url", server.http_url, "--format", "table", timeout=120)
    assert table.returncode == 1 and "Traceback" not in table.stderr, table.stderr
    text = _help_text(table.stdout)
    assert "caf\\xe9.png" in text and "error: no file matches" in text and "error: not a regular file" in text


def test_fallback_footnote_only_when_a_row_has_the_asterisk(server, tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(synthetic_png(8))
    footnote = "no calibrated threshold for the region"
    unknown = run("predict", str(png), "--url", server.http_url, "--format", "table")
    assert unknown.returncode == 0 and "unknown*" in unknown.stdout and footnote in unknown.stdout
    wrist = run("predict", str(png), "--url", server.http_url, "--format", "table", "--region", "wrist")
    assert wrist.returncode == 0 and "wrist*" not in wrist.stdout and footnote not in wrist.stdout


def test_resume_after_a_failed_input_leaves_one_row_per_input(server, tmp_path):
    good, flaky = tmp_path / "good.png", tmp_path / "flaky.png"
    good.write_bytes(synthetic_png(6))
    flaky.write_bytes(synthetic_png(7)[:90])  # truncated: fails this time
    out = tmp_path / "run.jsonl"
    first = run("predict", str(good), str(flaky), "--url", server.http_url, "-o", str(out))
    assert first.returncode == 1 and [r["status"] for r in jsonl(out.read_text())] == ["ok", "error"]
    flaky.write_bytes(synthetic_png(7))  # fixed
    second = run("predict", str(good), str(flaky), "--url", server.http_url, "-o", str(out), "--resume")
    assert second.returncode == 0, second.stderr
    assert [(r["source"], r["status"]) for r in jsonl(out.read_text())] == [(str(good), "ok"), (str(flaky), "ok")]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"source,fracture\n{good},0\n{flaky},1\n")
    evaluated = run("evaluate", str(out), str(labels), "--format", "json", "--bootstrap", "0")
    assert evaluated.returncode == 0 and "already appeared" not in evaluated.stderr, evaluated.stderr


def test_malformed_dicom_is_one_clean_failed_line_without_identifiers(server, tmp_path):
    from test_hostile_input import ACCESSION, IDENTIFIERS, _with_number_of_frames

    path = tmp_path / "IM0001"
    path.write_bytes(_with_number_of_frames(b"1A"))
    result = run("predict", str(path), "--url", server.http_url, "--format", "jsonl")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"failed: {path}: DICOM attribute NumberOfFrames is not a valid integer" in result.stderr
    assert jsonl(result.stdout)[0]["error"] == "DICOM attribute NumberOfFrames is not a valid integer"
    for value in (*IDENTIFIERS.values(), ACCESSION):
        assert value not in result.stdout + result.stderr
