"""Rebuild the DEMO ensemble: synthetic data -> ten small trained members -> ONNX -> repository,
calibrated thresholds, held-out report and example radiographs.

    python -m fracscan.demo.build            # what `make demo-rebuild` runs
    python -m fracscan.demo.build --device cuda --train-only --save-weights w.pt   # train on a GPU box,
    python -m fracscan.demo.build --from-weights w.pt                              # finish anywhere

Members train on a GPU when torch sees one (all ten at once: about 6.5 min on an H100) and on
the CPU otherwise (one per core; about 5 h on 2 cores, estimated from the measured 0.5-1.1 s per
training step on one core). CPU training is bit-for-bit reproducible; GPU training is not
(cuDNN and atomic adds), so two GPU builds differ slightly.

DEMO ONLY: the members learn synthetic radiographs from `fracscan.demo.synthetic`; they show that
every path of the pipeline works (scores separate, maps localise, boxes land on fractures).
They are not clinical models.

Training follows the paper's recipe in miniature: every member minimises the joint loss =
per-pixel BCE of the map on positives + image-level BCE, weighted 3:1 (10:1 for attention
members), so members without a map in the spec train with a map head that is dropped before
export; Adam; sampling balanced over (region, label); early stopping on tuning-set AUC
(patience 10, as in the paper). Four choices are the demo's own: the map target is the
fraction of each map cell the fracture box covers (scaled to peak at 1); the training
radiographs come in pairs, the same synthetic radiograph with and without its fracture; the
trunk and girdle regions are drawn 2.5x as often (HARD_REGIONS); and the learning rate follows
a one-cycle schedule over the 40 epochs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from fracscan import contract, evaluation
from fracscan.demo import synthetic
from fracscan.demo.inputs import npy_bytes
from fracscan.export.members import build_member
from fracscan.export.onnx_export import check_parity, export_member
from fracscan.export.repository import write_repository
from fracscan.pipeline import ReferenceRunner
from fracscan.preprocess import preprocess
from fracscan.spec import MAP_STRIDE, EnsembleSpec, MemberSpec, builtin_spec_path, load_spec
from fracscan.thresholds import TARGET_SENSITIVITY, OperatingPoint, Thresholds

DEMO_DIR = Path(__file__).resolve().parent  # demo/: the spec and the build's report live here
ROOT = DEMO_DIR.parent  # the checkout: model_repository/ and examples/ are beside demo/
DEMO_SPEC = builtin_spec_path("demo")  # demo/demo.toml
SEEDS = {"train": 1_000_000, "tune": 2_000_000, "test": 3_000_000}  # disjoint case seeds per split
DEFINITE_SPECIFICITY = 0.95  # the "definite" operating point: 95% specificity on the tuning split


@dataclasses.dataclass
class Split:
    pixels: torch.Tensor  # [N, 2, S, S]
    maps: torch.Tensor  # [N, S/8, S/8] ground-truth fracture cells
    labels: torch.Tensor  # [N]
    groups: np.ndarray  # (region, label) group index, for balanced sampling
    cases: list  # the SyntheticCase of each row (for writing files and labels)


def _prepare(args) -> tuple:
    seed, region, fracture, pre = args
    # Training images are generated small (the frame is S = 128 anyway): 5x faster than default.
    h, w = np.random.default_rng(seed).integers((360, 280), (440, 360))
    case = synthetic.make_case(
        seed, region=region, fracture=fracture, shape=(w, h) if region in synthetic.LANDSCAPE else (h, w)
    )
    pixels, geometry = preprocess(case.pixels, pre)
    size = pre.size
    target = np.zeros((size // MAP_STRIDE,) * 2, np.float32)
    if case.box is not None:
        (fx0, fy0), (fx1, fy1) = geometry.original_to_frame(np.array(case.box, float).reshape(2, 2))
        target = coverage_target((fx0, fy0, fx1, fy1), size)
    return case, pixels.astype(np.float16), target


def coverage_target(frame_box, size: int) -> np.ndarray:
    """The map target: the fraction of each S/8 map cell that the fracture box covers.

    A soft target (rather than "any overlap" = 1) lets the stride-8 map say where inside a cell
    the fracture lies, which the upsampled map in `extract_boxes` turns into a tighter box.
    """
    x0, y0, x1, y1 = frame_box
    edges = np.arange(size // MAP_STRIDE + 1) * MAP_STRIDE
    cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) / MAP_STRIDE
    cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) / MAP_STRIDE
    cover = np.outer(cover_y, cover_x)
    # Scaled so the most-covered cell is 1: a small fracture still peaks at 1, and half the peak
    # (the default map threshold) traces the box edges whatever the fracture's size.
    return (cover / max(cover.max(), 1e-6)).astype(np.float32)


def make_split(name: str, n: int, spec: EnsembleSpec, workers: int = 2, paired: bool = False) -> Split:
    """n cases: regions cycle through the spec's regions, half of them fractured.

    `paired`: the cases come in pairs that share one seed - the same radiograph with and
    without the fracture - so the only thing that tells the labels apart is the fracture.
    """
    regions = list(synthetic.REGIONS)
    if paired:
        jobs = [(SEEDS[name] + i // 2, regions[i // 2 % len(regions)], i % 2 == 0, spec.preprocess) for i in range(n)]
    else:
        jobs = [
            (SEEDS[name] + i, regions[i % len(regions)], bool((i // len(regions)) % 2), spec.preprocess)
            for i in range(n)
        ]
    with multiprocessing.Pool(workers) as pool:
        rows = pool.map(_prepare, jobs, chunksize=8)
    cases = [r[0] for r in rows]
    groups = np.array([regions.index(c.region) * 2 + int(c.fracture) for c in cases])
    return Split(
        pixels=torch.from_numpy(np.stack([r[1] for r in rows])),
        maps=torch.from_numpy(np.stack([r[2] for r in rows])),
        labels=torch.tensor([float(c.fracture) for c in cases]),
        groups=groups,
        cases=cases,
    )


@torch.no_grad()
def _scores(model, pixels: torch.Tensor, batch: int = 64) -> np.ndarray:
    model.eval()
    out = [
        torch.sigmoid(model.forward_logits(pixels[i : i + batch].float())["score"]).reshape(-1).cpu()
        for i in range(0, len(pixels), batch)
    ]
    return torch.cat(out).numpy()


# Regions where a fracture is one small line among many overlapping bones. Mixed training learns
# the limbs first and, at the old uniform sampling, left these near chance; drawn 2.5x as often
# (measured: a GPU sweep over sampling, schedule and data size), some members learn them too.
HARD_REGIONS = {"clavicle": 2.5, "hip": 2.5, "pelvis": 2.5, "ribs": 2.5, "spine": 2.5}


def sampling_weights(groups: np.ndarray) -> np.ndarray:
    """Per-row draw probabilities: balanced over (region, label), hard regions weighted up."""
    regions = list(synthetic.REGIONS)
    region_weight = np.array([HARD_REGIONS.get(regions[g // 2], 1.0) for g in range(2 * len(regions))])
    p = region_weight[groups] / np.bincount(groups, minlength=len(region_weight))[groups]
    return p / p.sum()


def train_member(
    member: MemberSpec,
    train: Split,
    tune: Split,
    seed: int,
    epochs: int,
    batch: int = 32,
    patience: int = 10,
    lr: float = 2e-3,
    device: str = "cpu",
):
    """Train one member; return (model with the best tuning AUC, history).

    Every member trains with the joint loss, so every member gets a map head while training
    (the paper trains all ten members on localisation, also those whose map the ensemble does
    not use). A member whose spec has no map drops that head afterwards.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_member(dataclasses.replace(member, map=True)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(train.labels) // batch
    # One-cycle: warm up, then anneal to ~0; the late low-rate epochs give the last few points of AUC.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(steps_per_epoch * epochs, 1), pct_start=0.1
    )
    map_weight = 10.0 if member.attention else 3.0  # localisation : classification (paper)
    p = sampling_weights(train.groups)
    pixels, labels, maps = train.pixels.to(device), train.labels.to(device), train.maps.to(device)
    tune_pixels = tune.pixels.to(device)
    best, best_auc, history, stale = None, -1.0, [], 0
    for _ in range(epochs):
        model.train()
        order = rng.choice(len(train.labels), len(train.labels), p=p)
        for i in range(0, steps_per_epoch * batch, batch):
            idx = torch.from_numpy(order[i : i + batch]).to(device)
            x, y, m = pixels[idx].float(), labels[idx], maps[idx]
            if rng.random() < 0.5:  # flips keep the synthetic anatomy plausible; maps flip too
                x, m = x.flip(-1), m.flip(-1)
            out = model.forward_logits(x)
            loss = F.binary_cross_entropy_with_logits(out["score"].reshape(-1), y)
            if y.sum() > 0:
                pos = y > 0
                loss = loss + map_weight * F.binary_cross_entropy_with_logits(out["map"][pos, 0], m[pos])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        auc = evaluation.auc(tune.labels.numpy(), _scores(model, tune_pixels))
        history.append(round(float(auc), 4))
        if auc > best_auc:
            best_auc, best, stale = auc, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    final = build_member(member)
    final.load_state_dict({k: v for k, v in best.items() if member.map or not k.startswith("map_head.")})
    return final.eval(), history


def _train_job(job) -> tuple[dict, list[float], float]:
    member, splits, seed, epochs, device = job
    torch.set_num_threads(1)
    loaded = torch.load(splits, weights_only=False)
    train, tune = loaded["train"], loaded["tune"]
    t = time.perf_counter()
    model, history = train_member(member, train, tune, seed, epochs, device=device)
    # numpy, not tensors: a tensor would cross the pipe as shared memory that dies with the worker
    return {k: v.numpy() for k, v in model.state_dict().items()}, history, round(time.perf_counter() - t, 1)


def train_members(
    spec: EnsembleSpec, train: Split, tune: Split, seed: int, epochs: int, workers: int, device: str, save: Path | None
):
    """Train every member (one process each); [(member, {state, history, train_s, device})] in spec order.

    `save`: after each member, all weights so far go to this one file (read back by `--from-weights`).
    """
    done = {}
    with tempfile.TemporaryDirectory() as tmp:
        splits = Path(tmp) / "splits.pt"
        torch.save({k: dataclasses.replace(v, cases=[]) for k, v in (("train", train), ("tune", tune))}, splits)
        jobs = [(member, splits, seed + i, epochs, device) for i, member in enumerate(spec.members)]
        # One member per process, one thread each: small convolutions scale poorly over threads.
        # A fresh (spawned) process per member keeps every member's CPU training deterministic.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_train_job, job): job[0] for job in jobs}
            for future in as_completed(futures):
                member, (state, history, train_s) = futures[future], future.result()
                done[member.name] = {"state": state, "history": history, "train_s": train_s, "device": device}
                if save is not None:  # as each finishes, so an interrupted run keeps what it trained
                    save.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(done, save)
                print(f"[demo] {member.name}: tuning AUC {history} in {train_s:.0f} s on {device}", flush=True)
    return [(member, done[member.name]) for member in spec.members]


def load_members(spec: EnsembleSpec, path: Path):
    """The members' weights saved by an earlier `--save-weights` run, in spec order."""
    saved = torch.load(path, weights_only=False)
    missing = [m.name for m in spec.members if m.name not in saved]
    if missing:
        raise SystemExit(f"{path}: no weights for {', '.join(missing)}")
    return [(member, saved[member.name]) for member in spec.members]


def predictions(runner: ReferenceRunner, split: Split, name: str) -> list[dict]:
    """The ensemble's answers for a split, as `fracscan predict --format jsonl` rows."""
    rows = []
    for i, case in enumerate(split.cases):
        r = runner.predict(npy_bytes(case.pixels), case.region)
        rows.append(
            {
                "source": f"{name}/{i:05d}",
                "status": "ok",
                "score": r.score,
                "fracture": r.fracture,
                "threshold": r.threshold,
                "region": r.region,
                "boxes": r.boxes.tolist(),
                "error": None,
                "model": "fracscan:demo",
            }
        )
    return rows


def write_split_files(rows: list[dict], split: Split, name: str, out: Path) -> tuple[Path, Path]:
    pred_path, label_path = out / f"{name}_predictions.jsonl", out / f"{name}_labels.csv"
    pred_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(label_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "fracture", "region", "x0", "y0", "x1", "y1"])
        for row, case in zip(rows, split.cases, strict=True):
            w.writerow([row["source"], int(case.fracture), case.region, *(case.box or ("", "", "", ""))])
    return pred_path, label_path


def top_box_iou(rows: list[dict], split: Split) -> tuple[float, int]:
    """Fraction of fractured cases whose top box overlaps the true box with IoU >= IOU_HIT (0.3)."""
    hits = total = 0
    for row, case in zip(rows, split.cases, strict=True):
        if case.fracture:
            total += 1
            hits += evaluation.top_box_hit([case.box], row["boxes"])
    return hits / max(total, 1), total


def build_demo(
    spec_path: Path,
    repository: Path,
    report_dir: Path,
    examples: Path | None,
    n_train: int,
    n_tune: int,
    n_test: int,
    epochs: int,
    members: int | None,
    seed: int = 0,
    workers: int | None = None,
    device: str = "cpu",
    save_weights: Path | None = None,
    from_weights: Path | None = None,
    train_only: bool = False,
) -> dict | None:
    t0 = time.perf_counter()
    spec = load_spec(spec_path)
    if members:
        spec = dataclasses.replace(spec, members=spec.members[:members])
    report_dir.mkdir(parents=True, exist_ok=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if workers is None:  # a GPU takes all members at once; a CPU one member per core
        workers = len(spec.members) if device == "cuda" else min(os.cpu_count() or 1, len(spec.members))
    print(
        f"[demo] synthesising {n_train}/{n_tune}/{n_test} train/tune/test radiographs at S={spec.preprocess.size}",
        flush=True,
    )
    tune = make_split("tune", n_tune, spec, workers)
    if from_weights is None:
        train = make_split("train", n_train, spec, workers, paired=True)
        trained = train_members(spec, train, tune, seed, epochs, workers, device, save_weights)
    else:
        trained = load_members(spec, from_weights)
    if train_only:
        return None
    test = make_split("test", n_test, spec, workers)
    onnx_dir = report_dir / "onnx"
    onnx_files, member_report = [], []
    for i, (member, row) in enumerate(trained):
        model = build_member(member)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in row["state"].items()})
        path = onnx_dir / f"{contract.member_model(i)}.onnx"
        export_member(model.eval(), member, spec.preprocess.size, path)
        diff = check_parity(model, path, spec.preprocess.size)
        onnx_files.append(path)
        member_report.append(
            {
                "name": member.name,
                "tuning_auc_per_epoch": row["history"],
                "onnx_max_abs_diff": diff,
                "train_s": row["train_s"],
                "trained_on": row["device"],
            }
        )
        print(f"[demo] {member.name}: ONNX parity {diff:.1e}", flush=True)

    # Pass 1: every radiograph gets boxes (threshold 0), to calibrate score and map thresholds.
    everything = OperatingPoint(0.0, 0.5)
    write_repository(spec, repository, "cpu", onnx_files, Thresholds({}, everything, {"calibrated": False}))
    tune_rows = predictions(ReferenceRunner(repository), tune, "tune")
    tune_pred, tune_labels = write_split_files(tune_rows, tune, "tune", report_dir)
    matched = evaluation.match(evaluation.read_predictions(tune_pred), evaluation.read_labels(tune_labels)[0])
    calibration = evaluation.calibrate(
        matched.cases,
        TARGET_SENSITIVITY,
        min_positives=5,
        box_labels=True,
        definite_specificity=DEFINITE_SPECIFICITY,
        provenance={"spec": spec.name, "tuning_set": f"synthetic seeds {SEEDS['tune']}+{n_tune}", "demo": True},
    ).thresholds
    calibration.save(repository / contract.THRESHOLDS_FILE)
    # Check the raised map thresholds on the tuning split predicted at the calibrated thresholds.
    with tempfile.TemporaryDirectory() as tmp:
        pred, labels = write_split_files(
            predictions(ReferenceRunner(repository), tune, "tune"), tune, "tune", Path(tmp)
        )
        checked = evaluation.match(evaluation.read_predictions(pred), evaluation.read_labels(labels)[0]).cases
    calibration = evaluation.recheck_map_thresholds(calibration, checked, TARGET_SENSITIVITY, everything.map_threshold)
    calibration.save(repository / contract.THRESHOLDS_FILE)
    thresholds = Thresholds.load(repository / contract.THRESHOLDS_FILE)

    # Pass 2: the held-out test split at the calibrated operating points.
    test_rows = predictions(ReferenceRunner(repository), test, "test")
    test_pred, test_labels = write_split_files(test_rows, test, "test", report_dir)
    matched = evaluation.match(evaluation.read_predictions(test_pred), evaluation.read_labels(test_labels)[0])
    decisions = evaluation.decisions_for(matched.cases, thresholds)
    metrics = evaluation.evaluate(matched.cases, decisions, bootstrap=1000, seed=seed)
    iou_rate, fractured = top_box_iou(test_rows, test)
    evaluation.plot_roc(
        matched.cases,
        decisions,
        report_dir / "roc_test.png",
        metrics=metrics,
        title="DEMO ensemble (synthetic radiographs, not for clinical use): held-out test split",
        subtitle="operating points: per-region thresholds calibrated to 92.5% sensitivity on the tuning split",
    )
    if examples is not None:
        synthetic.write_examples(examples)
    report = {
        "notice": "DEMO ONLY: synthetic radiographs, not for clinical use",
        "spec": spec.name,
        "size": spec.preprocess.size,
        "splits": {"train": n_train, "tune": n_tune, "test": n_test},
        "members": member_report,
        "test": {"overall": metrics["overall"], "regions": metrics["regions"]},
        "top_box_iou_0.3_rate": iou_rate,
        "fractured_test_cases": fractured,
        "build_s": round(time.perf_counter() - t0, 1),  # with --from-weights: without the training
        "weights_from": from_weights.name if from_weights else None,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    o = metrics["overall"]
    print(
        f"[demo] test AUC {o['auc']:.3f}, sensitivity {o['sensitivity']:.3f}, specificity {o['specificity']:.3f}, "
        f"top box IoU>=0.3 on {iou_rate:.0%} of {fractured} fractured; built in {report['build_s']:.0f} s",
        flush=True,
    )
    return report


def main(
    spec: Annotated[Path, typer.Option(help="Demo spec.")] = DEMO_SPEC,
    repository: Annotated[Path, typer.Option(help="Repository to write.")] = ROOT / "model_repository",
    report_dir: Annotated[Path, typer.Option(help="Where the splits' predictions, labels and report go.")] = DEMO_DIR,
    examples: Annotated[Path, typer.Option(help="Example radiographs folder.")] = ROOT / "examples",
    n_train: int = 4096,
    n_tune: int = 320,
    n_test: int = 480,
    epochs: int = 40,
    members: Annotated[int | None, typer.Option(help="Only the first N members (for quick runs).")] = None,
    seed: int = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes for synthesis and training (one member each) [default: all members on a GPU, one per core on a CPU]."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where members train: auto (a GPU if torch sees one), cpu or cuda.")
    ] = "auto",
    save_weights: Annotated[Path | None, typer.Option(help="Save the trained members' weights here.")] = None,
    from_weights: Annotated[Path | None, typer.Option(help="Skip training: use weights from --save-weights.")] = None,
    train_only: Annotated[bool, typer.Option(help="Stop after training (with --save-weights).")] = False,
) -> None:
    """Rebuild the demo ensemble end to end (DEMO ONLY, synthetic data)."""
    if train_only and save_weights is None:
        raise typer.BadParameter("--train-only needs --save-weights")
    build_demo(
        spec,
        repository,
        report_dir,
        examples,
        n_train,
        n_tune,
        n_test,
        epochs,
        members,
        seed,
        workers,
        device,
        save_weights,
        from_weights,
        train_only,
    )


if __name__ == "__main__":
    typer.run(main)
