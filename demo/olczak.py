"""Build the Olczak et al. 2017 DEMO: synthetic exam views -> one small VGG-16 -> ONNX -> repository, report.

    python -m fracscan.demo.olczak                      # what `make demo-olczak-rebuild` runs (resumable)
    python -m fracscan.demo.olczak --device cuda        # the same on a GPU
    python -m fracscan.demo.olczak --time-step          # time one training step, estimate the rebuild

One VGG-16 with batch norm (torchvision's vgg16_bn layout, folded into the convolutions at export) at
1/8 of its widths (demo/olczak.toml) learns four outputs at once, as in the paper: fracture (BCE,
weight 3, plus an auxiliary stride-8 fracture map dropped before export: see MAP_WEIGHT) and
laterality, body part and exam view (cross-entropy each). The training radiographs come in pairs,
the same view with and without its fracture. Without batch norm, at 1/16 width, the fracture output
stayed at chance (AUC 0.497); with batch norm at 1/8 a fracture-only probe reached a tuning AUC of
0.855 in 6 epochs on 2,000 views (docs/olczak.md). The radiographs are `fracscan.demo.synthetic` exam views of the ankle, wrist and hand
(frontal, lateral, oblique; left or right), pre-processed exactly as served (markers kept, stretched
to 256 x 256, plain channel). No horizontal flips: a flip would swap laterality. Adam with a
one-cycle schedule; the epoch with the best tuning score (fracture AUC + the heads' mean accuracy) is
kept. Training is resumable: every epoch is saved to --checkpoint and a rerun continues from it.

The held-out test split is scored by the in-process reference on the built repository without a
region (so the region comes from the body-part head: REGION_SOURCE "model"), and each head's accuracy
and Cohen's kappa are reported (demo/olczak_report.json), as the paper does.

DEMO ONLY: synthetic radiographs; it shows that the Olczak pipeline works end to end. Not a clinical model.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from fracscan import contract, evaluation
from fracscan.demo import synthetic
from fracscan.demo.build import coverage_target
from fracscan.demo.inputs import npy_bytes
from fracscan.export.members import build_member
from fracscan.export.onnx_export import check_parity, export_member
from fracscan.export.repository import write_repository
from fracscan.pipeline import ReferenceRunner
from fracscan.preprocess import preprocess_frame
from fracscan.spec import MAP_STRIDE, EnsembleSpec, builtin_spec_path, load_spec
from fracscan.thresholds import TARGET_SENSITIVITY, OperatingPoint, Thresholds

DEMO_DIR = Path(__file__).resolve().parent
ROOT = DEMO_DIR.parent
OLCZAK_SPEC = builtin_spec_path("olczak_demo")  # demo/olczak.toml
REPOSITORY = ROOT / "model_repository_olczak"
SEEDS = {"train": 11_000_000, "tune": 12_000_000, "test": 13_000_000}  # disjoint from the Jones demo's
SHAPES = ((352, 288), (448, 368))  # (rows, cols) range of the synthetic radiographs: small is fast
LATERALITY = {"L": "left", "R": "right"}
# The heads learn in an epoch or two; a fracture is one thin line: its loss weighs more (demo's choice).
FRACTURE_WEIGHT = 3.0
# A fracture is learnt from where it is, as the Jones demo's members learn it: an auxiliary map head on
# the stride-8 features (the end of VGG block 4, before its pool: torchvision index 23) is trained on
# the box's coverage of each cell (positives only, weight 3) and dropped before export.
MAP_WEIGHT = 3.0
RECIPE = "bn-paired-fracture3-map3"  # saved with the training state: a different recipe never resumes it
BATCH = 32
N_TRAIN, EPOCHS = 6000, 10  # 3,000 pairs; docs/olczak.md estimates the CPU time from a measured step


@dataclasses.dataclass
class Split:
    frames: torch.Tensor  # [N, 1, S, S] float16, as the `preprocess` model serves them
    fracture: torch.Tensor  # [N]
    maps: torch.Tensor  # [N, S/8, S/8] float16: the fracture box's coverage of each cell (training only)
    heads: dict[str, torch.Tensor]  # head -> [N] class index
    cases: list[dict]  # seed, region, view, laterality, fracture (and pixels for the scored splits)


def case_labels(case, spec: EnsembleSpec) -> dict[str, str]:
    """The truth of a case for each head: what the image shows."""
    truth = {"laterality": LATERALITY[case.laterality], "body_part": case.region, "view": case.view}
    return {h.name: truth[h.name] for h in spec.heads}


def _prepare(job) -> tuple:
    seed, region, view, fracture, keep, pre = job
    rows, cols = np.random.default_rng(seed).integers(SHAPES[0], SHAPES[1])
    case = synthetic.make_case(seed, region=region, fracture=fracture, shape=(int(rows), int(cols)), view=view)
    frame, geometry = preprocess_frame(case.pixels, pre)
    target = np.zeros((pre.size // MAP_STRIDE,) * 2, np.float32)
    if case.box is not None:
        (fx0, fy0), (fx1, fy1) = geometry.original_to_frame(np.array(case.box, float).reshape(2, 2))
        target = coverage_target((fx0, fy0, fx1, fy1), pre.size)
    meta = {"seed": seed, "region": region, "view": view, "laterality": case.laterality, "fracture": fracture}
    if keep:
        meta["pixels"] = case.pixels
    return frame.astype(np.float16), meta, case, target.astype(np.float16)


def make_split(name: str, n: int, spec: EnsembleSpec, workers: int, keep_pixels: bool, paired: bool = False) -> Split:
    """n cases, region x view x fracture balanced (cycled), laterality drawn from each case's seed.

    `paired`: the cases come in pairs sharing one seed, the same radiograph with and without its
    fracture, so the only thing that tells those labels apart is the fracture line (as the Jones demo).
    """
    regions, views = synthetic.REGIONS_WITH_VIEWS, synthetic.VIEWS
    combos = [(r, v, f) for r in regions for v in views[r] for f in (False, True)]
    if paired:
        pairs = [(r, v) for r, v, f in combos if f]
        jobs = [
            (SEEDS[name] + i // 2, *pairs[i // 2 % len(pairs)], i % 2 == 0, keep_pixels, spec.preprocess)
            for i in range(n)
        ]
    else:
        jobs = [(SEEDS[name] + i, *combos[i % len(combos)], keep_pixels, spec.preprocess) for i in range(n)]
    with multiprocessing.Pool(workers) as pool:
        rows = pool.map(_prepare, jobs, chunksize=16)
    classes = {h.name: h.classes for h in spec.heads}
    labels = [case_labels(r[2], spec) for r in rows]
    return Split(
        frames=torch.from_numpy(np.stack([r[0] for r in rows])[:, None]),
        fracture=torch.tensor([float(r[1]["fracture"]) for r in rows]),
        maps=torch.from_numpy(np.stack([r[3] for r in rows])),
        heads={h: torch.tensor([classes[h].index(lab[h]) for lab in labels]) for h in classes},
        cases=[{**r[1], **{f"true_{h}": lab[h] for h in classes}} for r, lab in zip(rows, labels, strict=True)],
    )


@torch.no_grad()
def _outputs(model, frames: torch.Tensor, batch: int = 64) -> dict[str, np.ndarray]:
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(frames), batch):
        for key, value in model(frames[i : i + batch].float()).items():
            parts.setdefault(key, []).append(value.cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def tuning_score(model, tune: Split, spec: EnsembleSpec) -> tuple[float, dict[str, float]]:
    out = _outputs(model, tune.frames)
    metrics = {"fracture_auc": float(evaluation.auc(tune.fracture.numpy(), out[contract.MEMBER_SCORE].reshape(-1)))}
    for head in spec.heads:
        predicted = out[contract.member_head(head.name)].argmax(axis=1)
        metrics[f"{head.name}_accuracy"] = float(np.mean(predicted == tune.heads[head.name].numpy()))
    accuracies = [v for k, v in metrics.items() if k.endswith("_accuracy")]
    return metrics["fracture_auc"] + float(np.mean(accuracies)), metrics


def block4_end(model) -> tuple[int, int]:
    """(index of VGG block 4's max pool, its channels): the stride-8 features the auxiliary map reads
    (torchvision's index 23 in vgg16, 33 in vgg16_bn)."""
    layers = list(model.features)
    pool = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)][3]
    conv = next(m for m in reversed(layers[:pool]) if isinstance(m, torch.nn.Conv2d))
    return pool, conv.out_channels


def _forward_with_map(model, aux: torch.nn.Module, image: torch.Tensor):
    """The member's logits (as `forward_logits`) and the auxiliary map's, from one pass."""
    from fracscan.export.member_parts import head_logits

    end = block4_end(model)[0]
    mid = model.features[:end](model.to_rgb(model.select_input(image)))
    hidden = model.classifier(model.pooled(model.features[end:](mid)).flatten(1))
    out = {contract.MEMBER_SCORE: model.score_head(hidden), **head_logits(model.heads, hidden)}
    return out, aux(mid)[:, 0]


def train(
    spec: EnsembleSpec,
    train_split: Split,
    tune: Split,
    epochs: int,
    checkpoint: Path,
    device: str,
    seed: int = 0,
    batch: int = BATCH,
    lr: float = 1e-3,
):
    """Train the member, resuming from `checkpoint` when it holds earlier epochs; return (model, history)."""
    torch.manual_seed(seed)
    model, aux, opt, schedule = _trainer(spec, device, len(train_split.fracture) // batch * epochs, lr)
    steps = len(train_split.fracture) // batch
    state = {"epoch": 0, "history": [], "best": None, "best_score": -1.0}
    saved = saved_training(checkpoint, epochs, len(train_split.fracture))
    if saved is not None:
        model.load_state_dict(saved["model"])
        aux.load_state_dict(saved["aux"])
        opt.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        print(f"[olczak] resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
    frames = train_split.frames.to(device)
    fracture = train_split.fracture.to(device)
    maps = train_split.maps.to(device)
    heads = {h: v.to(device) for h, v in train_split.heads.items()}
    while state["epoch"] < epochs:
        t = time.perf_counter()
        model.train()
        order = torch.from_numpy(np.random.default_rng([seed, state["epoch"]]).permutation(len(fracture)))
        for i in range(0, steps * batch, batch):
            idx = order[i : i + batch].to(device)
            labels = {h: v[idx] for h, v in heads.items()}
            _step(spec, model, aux, opt, schedule, frames[idx], fracture[idx], maps[idx], labels)
        score, metrics = tuning_score(model, tune, spec)
        state["epoch"] += 1
        state["history"].append({k: round(v, 4) for k, v in metrics.items()})
        if score > state["best_score"]:
            state["best_score"] = score
            state["best"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        print(f"[olczak] epoch {state['epoch']}/{epochs}: {metrics} ({time.perf_counter() - t:.0f} s)", flush=True)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "epochs": epochs,
                "n": len(fracture),
                "recipe": RECIPE,
                "model": model.state_dict(),
                "aux": aux.state_dict(),
                "optimizer": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "state": state,
            },
            checkpoint,
        )
    return best_member(spec, state), state["history"]


def _trainer(spec: EnsembleSpec, device: str, total_steps: int, lr: float):
    """(member, auxiliary map head, Adam, one-cycle schedule) as training starts."""
    # channels_last: ~1.5x faster small convolutions on the CPU (measured); the weights are the same
    model = build_member(spec.members[0]).to(device, memory_format=torch.channels_last)
    aux = torch.nn.Conv2d(block4_end(model)[1], 1, 1).to(device)
    opt = torch.optim.Adam([*model.parameters(), *aux.parameters()], lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.15)
    return model, aux, opt, schedule


def _step(spec, model, aux, opt, schedule, frames, fracture, maps, heads) -> float:
    """One optimisation step on a batch; returns the loss."""
    model.train()
    x = frames.float().contiguous(memory_format=torch.channels_last)
    out, map_logits = _forward_with_map(model, aux, x)
    loss = FRACTURE_WEIGHT * F.binary_cross_entropy_with_logits(out[contract.MEMBER_SCORE].reshape(-1), fracture)
    if fracture.sum() > 0:
        pos = fracture > 0
        loss = loss + MAP_WEIGHT * F.binary_cross_entropy_with_logits(map_logits[pos], maps[pos].float())
    for head in spec.heads:
        loss = loss + F.cross_entropy(out[contract.member_head(head.name)], heads[head.name])
    opt.zero_grad()
    loss.backward()
    opt.step()
    schedule.step()
    return loss.item()


def time_step(spec: EnsembleSpec, device: str = "cpu", batch: int = BATCH) -> tuple[float, float]:
    """(wall, CPU) seconds of one training step (after one warm-up step) at the spec's width, on random frames.

    The CPU seconds (all threads) still hold on a machine busy with other work, where the wall time does not.
    """
    model, aux, opt, schedule = _trainer(spec, device, 4, 1e-3)
    size, g = spec.preprocess.size, torch.Generator().manual_seed(0)
    frames = torch.rand(batch, 1, size, size, generator=g).to(device) * 2 - 1
    fracture = (torch.arange(batch) % 2).float().to(device)
    maps = torch.rand(batch, size // MAP_STRIDE, size // MAP_STRIDE, generator=g).to(device)
    heads = {h.name: torch.randint(len(h.classes), (batch,), generator=g).to(device) for h in spec.heads}
    _step(spec, model, aux, opt, schedule, frames, fracture, maps, heads)  # warm-up: allocations, kernels
    if device == "cuda":
        torch.cuda.synchronize()
    t, cpu = time.perf_counter(), time.process_time()
    _step(spec, model, aux, opt, schedule, frames, fracture, maps, heads)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - cpu


def saved_training(checkpoint: Path, epochs: int, n_train: int) -> dict | None:
    """The training state saved for this run (same epochs and training-set size), or None."""
    if not checkpoint.exists():
        return None
    saved = torch.load(checkpoint, weights_only=False)
    same = saved.get("epochs") == epochs and saved.get("n") == n_train and saved.get("recipe") == RECIPE
    return saved if same else None


def best_member(spec: EnsembleSpec, state: dict):
    final = build_member(spec.members[0])
    final.load_state_dict({k: v.contiguous() for k, v in state["best"].items()})
    return final.eval()


def score_split(runner: ReferenceRunner, split: Split, name: str, spec: EnsembleSpec, with_region: bool) -> list[dict]:
    """The reference's answers for a split, as `fracscan predict --format jsonl` rows (heads included)."""
    rows = []
    for i, case in enumerate(split.cases):
        r = runner.predict(npy_bytes(case["pixels"]), case["region"] if with_region else None)
        row = {
            "source": f"{name}/{i:05d}",
            "status": "ok",
            "score": r.score,
            "fracture": r.fracture,
            "threshold": r.threshold,
            "region": r.region,
            "region_source": r.region_source,
            "boxes": [],
            "error": None,
            "model": f"fracscan:{spec.name}",
        }
        for head, found in r.heads.items():  # the columns `fracscan predict` writes
            row[head] = found.label
            row[f"{head}_p"] = found.confidence
            row[f"{head}_probs"] = dict(zip(spec.head(head).classes, found.probs.tolist(), strict=True))
        row["qc"] = list(r.qc)
        rows.append(row)
    return rows


def write_split_files(rows: list[dict], split: Split, spec: EnsembleSpec, name: str, out: Path) -> tuple[Path, Path]:
    """Predictions (JSONL) and labels (CSV: fracture, region and one column per head) of a split."""
    import csv

    pred_path, label_path = out / f"olczak_{name}_predictions.jsonl", out / f"olczak_{name}_labels.csv"
    pred_path.write_text("".join(json.dumps(r, default=float) + "\n" for r in rows))
    with open(label_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "fracture", "region", *(h.name for h in spec.heads)])
        for row, case in zip(rows, split.cases, strict=True):
            heads = [case[f"true_{h.name}"] for h in spec.heads]
            writer.writerow([row["source"], int(case["fracture"]), case["region"], *heads])
    return pred_path, label_path


def head_metrics(rows: list[dict], split: Split, spec: EnsembleSpec) -> dict[str, dict]:
    """Each head's accuracy and Cohen's kappa (the paper's two numbers), confusion matrix, on a split."""
    from fracscan.evaluation.heads import head_report

    return {
        head.name: head_report(
            [case[f"true_{head.name}"] for case in split.cases], [row[head.name] for row in rows], head.classes
        )
        for head in spec.heads
    }


def build(
    spec_path: Path,
    repository: Path,
    report_dir: Path,
    n_train: int,
    n_tune: int,
    n_test: int,
    epochs: int,
    checkpoint: Path,
    workers: int,
    device: str,
) -> dict:
    t0 = time.perf_counter()
    spec = load_spec(spec_path)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(workers)
    print(f"[olczak] synthesising {n_train}/{n_tune}/{n_test} train/tune/test exam views", flush=True)
    tune = make_split("tune", n_tune, spec, workers, keep_pixels=True)
    saved = saved_training(checkpoint, epochs, n_train)
    if saved is not None and saved["state"]["epoch"] >= epochs:  # trained already: export only
        model, history = best_member(spec, saved["state"]), saved["state"]["history"]
    else:
        train_split = make_split("train", n_train, spec, workers, keep_pixels=False, paired=True)
        print(f"[olczak] synthesised in {time.perf_counter() - t0:.0f} s; training on {device}", flush=True)
        model, history = train(spec, train_split, tune, epochs, checkpoint, device)
        del train_split
    member = spec.members[0]
    onnx_path = report_dir / "olczak_onnx" / f"{contract.member_model(0)}.onnx"
    export_member(model.eval(), member, spec.preprocess.size, onnx_path)
    parity = check_parity(model, onnx_path, spec.preprocess.size)
    # Calibrate on the tuning split (its true regions), as `fracscan calibrate` would.
    everything = OperatingPoint(0.0, 0.5)
    write_repository(spec, repository, "cpu", [onnx_path], Thresholds({}, everything, {"calibrated": False}))
    tune_rows = score_split(ReferenceRunner(repository), tune, "tune", spec, with_region=True)
    pred, labels = write_split_files(tune_rows, tune, spec, "tune", report_dir)
    matched = evaluation.match(evaluation.read_predictions(pred), evaluation.read_labels(labels)[0])
    provenance = {"spec": spec.name, "tuning_set": f"synthetic seeds {SEEDS['tune']}+{n_tune}", "demo": True}
    thresholds = evaluation.calibrate(
        matched.cases, TARGET_SENSITIVITY, min_positives=5, definite_specificity=0.95, provenance=provenance
    ).thresholds
    thresholds.save(repository / contract.THRESHOLDS_FILE)
    write_repository(spec, repository, "cpu", [onnx_path], Thresholds.load(repository / contract.THRESHOLDS_FILE))

    # The held-out test split, without regions: the body-part head names them.
    test = make_split("test", n_test, spec, workers, keep_pixels=True)
    test_rows = score_split(ReferenceRunner(repository), test, "test", spec, with_region=False)
    pred, labels = write_split_files(test_rows, test, spec, "test", report_dir)
    matched = evaluation.match(evaluation.read_predictions(pred), evaluation.read_labels(labels)[0])
    decisions = evaluation.decisions_for(matched.cases, None)  # as served: at the region the head named
    metrics = evaluation.evaluate(matched.cases, decisions, bootstrap=1000, seed=0)
    sources = [r["region_source"] for r in test_rows]
    report = {
        "notice": "DEMO ONLY: synthetic radiographs, not for clinical use",
        "spec": spec.name,
        "size": spec.preprocess.size,
        "splits": {"train": n_train, "tune": n_tune, "test": n_test},
        "epochs": len(history),
        "tuning_per_epoch": history,
        "onnx_max_abs_diff": parity,
        "test": {
            "fracture": metrics["overall"],
            "heads": head_metrics(test_rows, test, spec),
            "region_source": {s: sources.count(s) for s in sorted(set(sources))},
        },
        "build_s": round(time.perf_counter() - t0, 1),
        "trained_on": device,
    }
    (report_dir / "olczak_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    heads = ", ".join(f"{h} acc {m['accuracy']:.3f} kappa {m['kappa']:.3f}" for h, m in report["test"]["heads"].items())
    print(f"[olczak] test fracture AUC {metrics['overall']['auc']:.3f}; {heads}", flush=True)
    return report


def main(
    spec: Annotated[Path, typer.Option(help="Olczak demo spec.")] = OLCZAK_SPEC,
    repository: Annotated[Path, typer.Option(help="Repository to write.")] = REPOSITORY,
    report_dir: Annotated[Path, typer.Option(help="Where the report and the splits' files go.")] = DEMO_DIR,
    n_train: int = N_TRAIN,
    n_tune: int = 360,
    n_test: int = 720,
    epochs: int = EPOCHS,
    checkpoint: Annotated[Path, typer.Option(help="Training state, saved every epoch (resume).")] = Path(
        "/tmp/fracscan-olczak-train.pt"
    ),
    workers: Annotated[int, typer.Option(help="Processes for synthesis, threads for training.")] = 2,
    device: Annotated[str, typer.Option(help="auto (a GPU if torch sees one), cpu or cuda.")] = "auto",
    time_one_step: Annotated[
        bool, typer.Option("--time-step", help="Time one training step and estimate the training time; build nothing.")
    ] = False,
) -> None:
    """Rebuild the Olczak demo end to end (DEMO ONLY, synthetic data)."""
    if time_one_step:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        torch.set_num_threads(workers)
        wall, cpu = time_step(load_spec(spec), device)
        steps = n_train // BATCH * epochs
        print(
            f"[olczak] one step of {BATCH} views on {device} ({workers} threads): {wall:.2f} s wall, {cpu:.2f} s CPU; "
            f"{steps} steps ({epochs} epochs of {n_train} views): ~{cpu / workers * steps / 60:.0f} min of training "
            f"on {workers} idle cores (~{wall * steps / 60:.0f} min at this step's wall time)"
        )
        return
    build(spec, repository, report_dir, n_train, n_tune, n_test, epochs, checkpoint, workers, device)


if __name__ == "__main__":
    typer.run(main)
