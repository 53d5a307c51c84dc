"""`fracscan export`: members (ONNX files, PyTorch checkpoints, the committed demo) -> a Triton repository.

One member at a time (the memory of one member, not ten), each reported as it finishes with its
parity figure; members exported before from the same inputs are reused (fracscan.export.resume),
so an interrupted export continues. A member comes from, in this order:

* `--random-init`: seeded random weights for every member (sizing and load tests; the repository
  says RANDOM WEIGHTS in every answer);
* its `onnx` file, or its `checkpoint` (exported, parity against PyTorch checked);
* for a spec marked `demo = true` whose members name neither: the committed demo repository.

Thresholds: `--thresholds` if given; else the calibrated thresholds already in the output folder
when the members (content hashes), regions and pre-processing are unchanged; else, when they
changed, a warning and uncalibrated ones (0.5).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fracscan import contract as c
from fracscan import provenance
from fracscan.export import resume
from fracscan.export.model_config import RepositoryOptions
from fracscan.export.repository import Target, write_repository
from fracscan.spec import EnsembleSpec, load_spec
from fracscan.thresholds import Thresholds, calibration_still_fits

Report = Callable[[str], None]
PARITY_ATOL = 1e-4


class MembersNotGiven(ValueError):
    """The spec names no weights for some members; the message says what to provide."""


@dataclass(frozen=True)
class MemberSource:
    kind: str  # "onnx", "checkpoint", "demo" (the committed demo repository) or "random"
    path: Path | None = None

    def describe(self) -> str:
        return {
            "onnx": f"ONNX file {self.path}",
            "checkpoint": f"checkpoint {self.path}",
            "demo": f"{self.path} (the committed demo)",
            "random": "random weights",
        }[self.kind]


def demo_repository(spec: EnsembleSpec) -> Path:
    """The committed repository of a demo spec: the Jones demo's, or the Olczak demo's."""
    from fracscan.server import DEMO_REPOSITORY, OLCZAK_DEMO_REPOSITORY

    return OLCZAK_DEMO_REPOSITORY if spec.name == "olczak_demo" else DEMO_REPOSITORY


def _demo_sources(spec: EnsembleSpec, indices: list[int]) -> dict[int, MemberSource]:
    """Members of a demo spec from the committed demo repository, if it holds exactly these members."""
    from dataclasses import replace

    repo = demo_repository(spec)
    served_path = repo / c.SPEC_FILE
    if not served_path.is_file():
        raise MembersNotGiven(
            f"spec '{spec.name}' takes its members from the committed demo repository, which exists only in a "
            f"source checkout ({repo} is absent); give each member an 'onnx' file or a 'checkpoint'"
        )
    served = load_spec(served_path)
    out = {}
    for i in indices:
        bare = replace(spec.members[i], checkpoint=None, onnx=None)
        if i >= len(served.members) or served.members[i] != bare or served.preprocess != spec.preprocess:
            raise MembersNotGiven(
                f"member '{bare.name}' is not member {i} of the committed demo repository {repo} "
                "(different member or pre-processing): give it an 'onnx' file or a 'checkpoint'"
            )
        out[i] = MemberSource("demo", repo / c.member_model(i) / c.MODEL_VERSION / c.ONNX_FILE)
    return out


def member_sources(spec: EnsembleSpec, random_init: bool = False) -> list[MemberSource]:
    """Where each member's weights come from; MembersNotGiven names what is missing and how to give it."""
    if random_init:
        return [MemberSource("random") for _ in spec.members]
    base = spec.source.parent if spec.source else Path.cwd()
    sources: dict[int, MemberSource] = {}
    for i, member in enumerate(spec.members):
        if member.onnx:
            path = base / member.onnx
            if not path.exists():
                raise FileNotFoundError(f"member '{member.name}': ONNX file {path} not found")
            sources[i] = MemberSource("onnx", path)
        elif member.checkpoint:
            sources[i] = MemberSource("checkpoint", base / member.checkpoint)
    bare = [i for i in range(len(spec.members)) if i not in sources]
    if bare and spec.demo:
        sources |= _demo_sources(spec, bare)
    elif bare:
        names = ", ".join(spec.members[i].name for i in bare)
        raise MembersNotGiven(
            f"{len(bare)} of the {len(spec.members)} members of spec '{spec.name}' have neither an 'onnx' file nor "
            f"a 'checkpoint' in {spec.source}: {names}. Copy the spec, set `checkpoint = \"path/to/member.pt\"` "
            "(a FractureMember, DRN reference or VGG-16 state_dict, relative to the copy) for each member and pass "
            "--spec COPY.toml (see docs/spec.md); or pass --random-init for sizing and load tests"
        )
    return [sources[i] for i in range(len(spec.members))]


INSTALL_EXPORT = (
    "install the export extra with the CPU build of torch: `make install-export` in a source checkout, "
    "else `pip install torch==2.13.0` and then `pip install 'fracscan[export]'`"
)


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def check_checkpoint_files(sources: list[MemberSource]) -> None:
    """Every checkpoint a member names exists: all missing ones in one error, whether torch is installed or not."""
    missing = [str(s.path) for s in sources if s.kind == "checkpoint" and s.path and not s.path.is_file()]
    if missing:
        also = "" if torch_installed() else f"; exporting checkpoints also needs torch: {INSTALL_EXPORT}"
        raise FileNotFoundError(f"{len(missing)} checkpoint file(s) not found: {', '.join(missing)}{also}")


def _parity_inputs(size: int, channels: int) -> list[Any]:
    """Small batches (1 and 2) of [channels, S, S]: noise and phantom radiographs through the core pre-processing."""
    import numpy as np

    from fracscan.export.phantoms import phantom_frames

    rng = np.random.default_rng(1)
    noise = rng.uniform(-1, 1, (1, channels, size, size)).astype(np.float32)
    return [noise, phantom_frames(2, size, seed=2, channels=channels)]


def _torch_member(spec: EnsembleSpec, index: int, source: MemberSource) -> Any:
    from fracscan.export.members import build_member, calibrate_batchnorm, load_member

    member = spec.members[index]
    if source.kind == "checkpoint":
        return load_member(member, spec.source.parent if spec.source else None)
    import torch

    from fracscan.export.phantoms import phantom_frames

    torch.manual_seed(index)  # the same random member every time: the export is reusable
    model = build_member(member)
    # realistic BatchNorm statistics, so the random member's outputs are not all 0 or 1
    images = torch.from_numpy(phantom_frames(2, spec.preprocess.size, seed=index, channels=member.pixel_channels))
    return calibrate_batchnorm(model, [images]).eval()


def _source_identity(source: MemberSource, index: int) -> dict[str, Any]:
    if source.kind == "random":
        return {"kind": "random", "seed": index}
    assert source.path is not None
    if source.kind == "checkpoint" and not source.path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {source.path}")
    return {"kind": source.kind, "sha256": provenance.sha256_file(source.path)}


def export_one(
    spec: EnsembleSpec,
    index: int,
    source: MemberSource,
    output: Path,
    target: Target,
    temp: resume.TempFiles,
    key: str,
    inputs: dict[str, Any],
) -> resume.MemberRecord:
    """Export member `index` to a temporary file, check parity (and TensorRT fitness), move it into place."""
    from fracscan.export.members import count_parameters
    from fracscan.export.onnx_export import check_parity, export_member

    size, channels = spec.preprocess.size, spec.members[index].pixel_channels
    model = _torch_member(spec, index, source)
    try:
        tmp = temp.new(f"{c.member_model(index)}.onnx")
        export_member(model, spec.members[index], size, tmp, opset=resume.OPSET)
        worst = check_parity(model, tmp, size, inputs=_parity_inputs(size, channels), atol=PARITY_ATOL)
        parameters = count_parameters(model)
    finally:
        del model
        gc.collect()  # one member's memory at a time
    if target == "tensorrt":
        from fracscan.export.onnx_check import check_members

        check_members([tmp], size, channels)
    final = resume.member_onnx_path(output, index)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    record = resume.MemberRecord(key, provenance.sha256_file(final), worst, parameters, inputs)
    resume.save_record(output, index, record)
    return record


def member_files(
    spec: EnsembleSpec,
    sources: list[MemberSource],
    output: Path,
    target: Target,
    temp: resume.TempFiles,
    report: Report,
) -> list[Path]:
    """Each member's final ONNX file: given, reused, or exported now (one at a time, each reported)."""
    files = []
    total = len(spec.members)
    for i, (member, source) in enumerate(zip(spec.members, sources, strict=True)):
        head = f"[{i + 1}/{total}] {c.member_model(i)} {member.name}:"
        if source.kind in ("onnx", "demo"):
            assert source.path is not None
            files.append(source.path)
            report(f"{head} {source.describe()}")
            continue
        inputs = resume.member_inputs(spec, i, _source_identity(source, i), target)
        key = resume.key_of(inputs)
        record = resume.reusable(output, i, key)
        if record is not None:
            report(
                f"{head} reused from {output} (same {source.describe()}, spec entry, target and exporter; "
                f"parity max |ONNX Runtime - PyTorch| {record.parity:.2g})"
            )
        else:
            started = time.monotonic()
            output.mkdir(parents=True, exist_ok=True)
            record = export_one(spec, i, source, output, target, temp, key, inputs)
            report(
                f"{head} exported from {source.describe()} in {time.monotonic() - started:.1f} s, "
                f"{record.parameters:,} parameters, parity max |ONNX Runtime - PyTorch| {record.parity:.2g} "
                f"(<= {PARITY_ATOL:g})"
            )
        files.append(resume.member_onnx_path(output, i))
    return files


@dataclass(frozen=True)
class Existing:
    """What an output folder held before this export (read before anything is written)."""

    record: provenance.Provenance
    spec: EnsembleSpec | None


def existing_repository(output: Path) -> Existing | None:
    if not (output / c.THRESHOLDS_FILE).is_file():
        return None
    try:
        record = provenance.read(output)
        spec = load_spec(output / c.SPEC_FILE) if (output / c.SPEC_FILE).is_file() else None
    except (OSError, ValueError):
        return None
    return Existing(record, spec)


def choose_thresholds(
    spec: EnsembleSpec,
    output: Path,
    given: Thresholds | None,
    existing: Existing | None,
    hashes: list[str],
    sources: list[MemberSource],
    report: Report,
    warn: Report,
) -> Thresholds | None:
    """The thresholds to install (None: uncalibrated 0.5); says why when it keeps or drops calibrated ones."""
    if given is not None:
        return given
    if existing is not None and existing.record.calibrated:
        old = existing.spec
        changed = calibration_still_fits(
            same_members=tuple(hashes) == existing.record.member_hashes,
            same_regions=old is not None and old.regions == spec.regions,
            same_preprocess=old is not None and old.preprocess == spec.preprocess,
        )
        if changed is None:
            report(
                f"kept the calibrated {c.THRESHOLDS_FILE} in {output}: the members are unchanged "
                "(same content hashes), and so are the regions and the pre-processing"
            )
            return Thresholds.load(output / c.THRESHOLDS_FILE)
        warn(
            f"the {changed} changed since {output / c.THRESHOLDS_FILE} was calibrated: those thresholds no longer "
            "fit, so uncalibrated ones (0.5) are written. Run `fracscan calibrate ... --repository "
            f"{output}` on tuning data, or pass --thresholds"
        )
        return None
    if sources and all(s.kind == "demo" for s in sources):
        demo = demo_repository(spec)
        record = provenance.read(demo)
        if record.calibrated and record.member_hashes == tuple(hashes):
            report(f"installed the demo repository's calibrated {c.THRESHOLDS_FILE} (the same members)")
            return Thresholds.load(demo / c.THRESHOLDS_FILE)
    return None


def build_repository(
    spec: EnsembleSpec,
    output: Path,
    target: Target,
    thresholds: Thresholds | None = None,
    options: RepositoryOptions | None = None,
    *,
    random_init: bool = False,
    report: Report | None = None,
    warn: Report | None = None,
) -> Path:
    """Write (or update) the repository in `output`; temporary files never outlive the call (but SIGKILL)."""
    report = report or (lambda line: None)
    warn = warn or report
    output = Path(output)
    sources = member_sources(spec, random_init)
    check_checkpoint_files(sources)
    given = [s.path for s in sources if s.kind in ("onnx", "demo") and s.path is not None]
    if target == "tensorrt" and given:  # fail now, not later when the engines are built in the container
        from fracscan.export.onnx_check import check_members  # needs onnx (the export extra)

        check_members(given, spec.preprocess.size, spec.preprocess.channels)
    existing = existing_repository(output)
    stale = resume.remove_stale_temp_files(output)
    if stale:
        report(f"removed {len(stale)} temporary file(s) an interrupted export left in {output}")
    temp = resume.TempFiles(output)
    try:
        with resume.exit_on_sigterm():
            files = member_files(spec, sources, output, target, temp, report)
            hashes = [provenance.sha256_file(f) for f in files]
            chosen = choose_thresholds(spec, output, thresholds, existing, hashes, sources, report, warn)
            written = write_repository(
                spec, output, target, files, chosen, options or RepositoryOptions(), random_weights=random_init
            )
            return Path(written)
    finally:
        temp.cleanup()
