"""`make soak`: a bounded load of good and bad inputs through a supervised `fracscan serve`, with faults.

`fracscan predict DIR --url ... -o out.jsonl` scores N inputs (good PNGs and DICOMs, and bad bytes:
garbage, truncated PNGs, empty files). During the first run one python stub (member_03) is killed
by its PID; during the second (`--resume`), tritonserver itself. The supervisor in `fracscan serve`
restarts the server each time; the inputs whose requests met a fault get an error row, and a last
`--resume` scores them. The result must be every input answered exactly once: each good input
scored, each bad input rejected, none lost, none twice.

    .venv/bin/python benchmarks/soak.py [--inputs 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fracscan import procfs  # noqa: E402
from fracscan.demo.synthetic import make_case, png_bytes  # noqa: E402
from fracscan.server import free_port, stub_processes  # noqa: E402

CLI = [sys.executable, "-m", "fracscan.cli"]


def make_inputs(folder: Path, count: int) -> tuple[set[str], set[str]]:
    """`count` files: 70 % good (PNG from the demo generator, DICOM copies of examples/), 30 % bad bytes."""
    dicoms = sorted((ROOT / "examples").glob("*.dcm"))
    good, bad = set(), set()
    for i in range(count):
        if i % 10 < 3:
            data = [b"\x00garbage" * 40, png_bytes(make_case(i, fracture=False, shape=(200, 160)))[:90], b""][i % 3]
            path = folder / f"{i:04d}_bad.{['png', 'png', 'dcm'][i % 3]}"
            bad.add(str(path))
        elif i % 10 < 6 and dicoms:
            path, data = folder / f"{i:04d}_good.dcm", dicoms[i % len(dicoms)].read_bytes()
            good.add(str(path))
        else:
            path, data = folder / f"{i:04d}_good.png", png_bytes(make_case(i, fracture=bool(i % 2), shape=(420, 300)))
            good.add(str(path))
        path.write_bytes(data)
    return good, bad


def rows(output: Path) -> list[dict]:
    if not output.exists():
        return []
    found = []
    for line in output.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a last line cut short
            found.append(json.loads(line))
    return found


@dataclass
class Fault:
    what: str
    after_rows: int
    noticed_s: float
    back_s: float


class Serve:
    """A supervised `fracscan serve` on free ports; its stderr tells when it restarts."""

    def __init__(self, workdir: Path):
        self.ports = [free_port() for _ in range(3)]
        self.err = workdir / "serve.err"
        http, grpc, metrics = (str(p) for p in self.ports)
        ports = ["--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
        self.process = subprocess.Popen(
            [*CLI, "serve", *ports, "--log-file", str(workdir / "triton.log")],
            stdout=subprocess.DEVNULL,
            stderr=self.err.open("w"),
        )
        self.url = f"http://127.0.0.1:{http}"
        self.wait_for("Ready.", 1, 300)

    def count(self, text: str) -> int:
        return self.err.read_text().count(text)

    def wait_for(self, text: str, times: int, timeout: float) -> float:
        started = time.monotonic()
        while self.count(text) < times:
            if self.process.poll() is not None or time.monotonic() - started > timeout:
                raise SystemExit(f"soak: serve did not print {text!r}:\n{self.err.read_text()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def tritonserver(self) -> int:
        for child in procfs.children(self.process.pid):
            if procfs.comm(child) == "tritonserver":
                return child
        raise SystemExit("soak: no tritonserver under fracscan serve")

    def inject(self, what: str, pid: int, after_rows: int) -> Fault:
        restarts = self.count("restarting the server")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        noticed = self.wait_for("restarting the server", restarts + 1, 30)
        self.wait_for("ready again", restarts + 1, 300)
        return Fault(what, after_rows, noticed, time.monotonic() - killed)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


def predict_run(
    serve: Serve, folder: Path, output: Path, concurrency: int, resume: bool, fault: str | None, at_fraction: float
) -> tuple[int, int, Fault | None]:
    """One `fracscan predict` run; with `fault`, inject it once the run has written `at_fraction` of its rows.

    Returns the rows the run wrote (one request per input: a resumed run skips the inputs scored ok,
    and drops the error rows of those it sends again), the inputs it left without a row (it stopped
    on losing the server) and the fault injected, if any.
    """
    baseline = sum(1 for r in rows(output) if r.get("status") == "ok") if resume else 0
    todo = max(1, len(list(folder.iterdir())) - baseline)
    args = [*CLI, "predict", str(folder), "--url", serve.url, "-o", str(output), "--concurrency", str(concurrency)]
    log = output.with_suffix(".predict.err")
    with log.open("w") as err:  # a file, not a pipe: the SDK's retry warnings could fill a pipe and block it
        proc = subprocess.Popen([*args, *(["--resume"] if resume else [])], stdout=subprocess.DEVNULL, stderr=err)
    injected = None
    while proc.poll() is None:
        written = len(rows(output)) - baseline
        if fault and injected is None and written >= at_fraction * todo:
            target = serve.tritonserver()
            what = "tritonserver"
            if fault != "tritonserver":
                target, what = (
                    next(s.pid for s in stub_processes(target).values() if s.model == fault),
                    f"{fault}'s stub",
                )
            injected = serve.inject(what, target, written)
        time.sleep(0.05)
    stderr = log.read_text(errors="replace")
    # exit 2 "lost the server": the CLI stops a run when its server goes away; the next --resume goes on
    if proc.returncode not in (0, 1) and not (injected and "lost the server" in stderr):
        raise SystemExit(f"soak: fracscan predict exited {proc.returncode}:\n{stderr[-4000:]}")
    written = len(rows(output)) - baseline
    return written, todo - written, injected


def tally(output: Path, good: set[str], bad: set[str]) -> dict[str, int]:
    found = rows(output)
    sources = Counter(r["source"] for r in found)
    ok = {r["source"] for r in found if r.get("status") == "ok"}
    return {
        "rows": len(found),
        "good scored": len(ok & good),
        "bad rejected": sum(1 for r in found if r["source"] in bad and r.get("status") == "error"),
        "bad scored": len(ok & bad),
        "good failed": sum(1 for r in found if r["source"] in good and r.get("status") == "error"),
        "lost": len((good | bad) - set(sources)),
        "duplicates": sum(n - 1 for n in sources.values() if n > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fracscan-soak-"))
    folder, output = workdir / "inputs", workdir / "out.jsonl"
    folder.mkdir()
    good, bad = make_inputs(folder, options.inputs)
    started = time.monotonic()
    serve = Serve(workdir)
    faults, runs = [], []
    try:
        plan = [(False, "member_03", 0.2), (True, "tritonserver", 0.25), (True, None, 0.0)]
        for resume, fault, at in plan:
            sent, unsent, injected = predict_run(serve, folder, output, options.concurrency, resume, fault, at)
            runs.append((sent, unsent, tally(output, good, bad)))
            if injected:
                faults.append(injected)
            elif fault:
                print(f"soak: the run ended before the {fault} fault; use more --inputs", file=sys.stderr)
        survived = serve.process.poll() is None and serve.count("restarting the server") == len(faults)
    finally:
        serve.close()
    final = runs[-1][2]
    requests = sum(sent for sent, _, _ in runs)
    hit = sum(counts["good failed"] for _, _, counts in runs)  # good inputs whose request met a fault
    lost = final["lost"] + final["good failed"]
    print(
        f"soak: {options.inputs} inputs ({len(good)} good PNG/DICOM, {len(bad)} bad bytes), concurrency "
        f"{options.concurrency}, one supervised `fracscan serve`, {time.monotonic() - started:.0f} s in all"
    )
    for fault in faults:
        print(
            f"  fault: {fault.what} killed after {fault.after_rows} rows of its run: noticed in "
            f"{fault.noticed_s:.1f} s, serving again {fault.back_s:.1f} s after the kill"
        )
    for i, (sent, unsent, counts) in enumerate(runs):
        stopped = f", then stopped on losing the server with {unsent} inputs unanswered" if unsent else ""
        print(
            f"  run {i + 1}{' (--resume)' if i else ''}: {sent} requests{stopped}; {counts['good failed']} good "
            f"inputs with a fault's error row; after it {counts['good scored']}/{len(good)} good scored, "
            f"{counts['bad rejected']}/{len(bad)} bad rejected"
        )
    print(
        f"requests {requests}, held {requests - hit} (scored, or rejected as bad input), failed by a fault {hit}; "
        f"faults survived {len(faults) if survived else 0}/{len(faults)}; inputs lost {lost}, "
        f"duplicates {final['duplicates']}, bad inputs scored {final['bad scored']}"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(1 if lost or final["duplicates"] or final["bad scored"] or not survived else 0)


if __name__ == "__main__":
    main()
