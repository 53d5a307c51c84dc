"""The client side: CPU per real-size DICOM sent by the SDK, and the CLI's peak memory over many inputs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_base import log, rate
from bench_inputs import memory_inputs

from fracscan import contract
from fracscan.pipeline import EnsembleRepository
from fracscan.server import EmbeddedServer


def bench_client_cost(server: EmbeddedServer, files: dict[str, Path], reps: int) -> dict:
    """Client CPU per image, measured with time.thread_time() of the calling thread.

    prepare:    what the SDK does before the bytes leave (read the file, pre-send checks, for
                client-decode also decode + .npy encoding, build the KServe input tensors);
    end_to_end: FracScanClient.predict() against the running server (the above, plus HTTP
                send, waiting, and parsing the answer); the sync client does all of this in
                the calling thread (gevent), so thread_time is the client's CPU, nothing else.
    images_per_cpu_s = images per second of one core busy with the client side.
    """
    from fracscan.client import FracScanClient
    from fracscan.client._core import Request
    from fracscan.client.sources import read_source

    out = {}
    for name, path in files.items():
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for decode in (False, True):
            mode = "client_decode" if decode else "server_decode"
            read_source(path, decode)  # warm-up (codec imports)
            sent = 0
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for _ in range(reps):
                payload = read_source(path, decode)
                Request.make(payload, None).tensors("http")
                sent = len(payload.data)
            prep_cpu, prep_wall = (time.thread_time() - cpu0) / reps, (time.perf_counter() - wall0) / reps
            with FracScanClient(server.http_url, timeout=300, decode_on_client=decode) as client:
                client.predict(path)  # warm-up (connection, server-side decoder)
                cpu0, pcpu0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
                for _ in range(reps):
                    client.predict(path)
                e2e_cpu = (time.thread_time() - cpu0) / reps
                e2e_pcpu = (time.process_time() - pcpu0) / reps
                e2e_wall = (time.perf_counter() - wall0) / reps
            out[f"{name}/{mode}"] = {
                "file": name,
                "mode": mode,
                "shape": [int(ds.Rows), int(ds.Columns)],
                "bits_stored": int(ds.BitsStored),
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name),
                "file_bytes": path.stat().st_size,
                "sent_bytes": sent,
                "reps": reps,
                "prepare_cpu_ms": prep_cpu * 1000,
                "prepare_wall_ms": prep_wall * 1000,
                "prepare_images_per_cpu_s": rate(1, prep_cpu),
                "end_to_end_client_cpu_ms": e2e_cpu * 1000,
                "end_to_end_process_cpu_ms": e2e_pcpu * 1000,
                "end_to_end_wall_ms": e2e_wall * 1000,
                "end_to_end_images_per_cpu_s": rate(1, e2e_cpu),
            }
    return out


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process, in KiB ({} once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _rss_sampler(pid: int, samples: list[dict], stop: threading.Event, interval: float = 0.02) -> None:
    """Poll the process's RSS and high-water mark until it exits (psutil for RSS when installed)."""
    try:
        import psutil

        proc = psutil.Process(pid)
    except Exception:
        proc = None
    while not stop.is_set():
        sample = _status_kib(pid)
        if proc is not None:
            with contextlib.suppress(Exception):
                sample["VmRSS"] = proc.memory_info().rss // 1024
        if sample:
            samples.append(sample)
        stop.wait(interval)


def cli_peak_rss(url: str, folder: Path, count: int, workdir: Path) -> dict:
    """Run `fracscan predict FOLDER --format jsonl -o FILE` and measure its peak RSS.

    peak_rss_mib is the kernel's high-water mark of the CLI process (VmHWM in /proc/<pid>/status,
    monotonic, polled every 20 ms until the process exits: only growth in its last 20 ms could be
    missed); sampled_peak_rss_mib is the largest RSS seen by the same polling. (The rusage of
    wait4 is no use here: ru_maxrss keeps the RSS of the forked benchmark process before exec.)
    """
    output = workdir / f"predict-{count}.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "fracscan.cli",
        "predict",
        str(folder),
        "--url",
        url,
        "--format",
        "jsonl",
        "--output",
        str(output),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(proc.pid, samples, stop), daemon=True)
    sampler.start()
    try:
        _, stderr = proc.communicate(timeout=900)
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - start
    lines = output.read_text().splitlines() if output.exists() else []
    ok = sum(1 for line in lines if json.loads(line).get("status") == "ok")
    if proc.returncode != 0 or ok != count:
        raise RuntimeError(
            f"fracscan predict on {count} inputs: exit {proc.returncode}, {ok} ok of {count}:\n"
            + stderr.decode(errors="replace")[-2000:]
        )
    hwm = [s["VmHWM"] for s in samples if "VmHWM" in s]
    rss = [s["VmRSS"] for s in samples if "VmRSS" in s]
    return {
        "inputs": count,
        "ok": ok,
        "seconds": round(wall, 2),
        "images_per_s": rate(ok, wall),
        "peak_rss_mib": max(hwm) / 1024 if hwm else None,
        "sampled_peak_rss_mib": max(rss) / 1024 if rss else None,
        "samples": len(samples),
    }


def light_repository(repository: Path, out: Path) -> Path:
    """The benchmarked repository with trivial members (same spec, same contract, same pre-processing).

    The CLI's memory does not depend on what the members compute; trivial members let the
    2,000-input run take seconds instead of minutes. Needs the `onnx` package (export extra).
    """
    import onnx
    from onnx import TensorProto, helper

    from fracscan.export.repository import write_repository

    repo = EnsembleRepository.open(repository)
    spec, size = repo.spec, repo.spec.preprocess.size
    files = []
    for i, member in enumerate(spec.members):
        nodes = [
            helper.make_node("GlobalAveragePool", ["image"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("ReduceMean", ["f"], ["r"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["r"], ["score"]),
        ]
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])]
        if member.map:
            h = size // 8
            nodes += [
                helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
                helper.make_node("ReduceMean", ["p"], ["pm"], axes=[1], keepdims=1),
                helper.make_node("Sigmoid", ["pm"], ["map"]),
            ]
            outputs.append(helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 1, h, h]))
        graph = helper.make_graph(
            nodes,
            f"light_{i}",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, size, size])],
            outputs,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path = out / "onnx" / f"{contract.member_model(i)}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        files.append(path)
    return write_repository(spec, out / "repository", "cpu", files, repo.thresholds)


def bench_memory(server_url: str, cache: Path, counts: tuple[int, int], workdir: Path) -> dict:
    runs = {}
    for count in counts:
        log.print(f"  memory: fracscan predict on {count} inputs ...")
        runs[str(count)] = cli_peak_rss(server_url, memory_inputs(cache, count), count, workdir)
    small, large = (runs[str(c)] for c in counts)
    return {
        "runs": runs,
        "rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        "goal": "flat within 10% (ratio <= 1.10)",
        "flat": large["peak_rss_mib"] <= 1.10 * small["peak_rss_mib"],
    }
