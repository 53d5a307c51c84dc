"""Members by arch, from checkpoints: the factory, checkpoint loading and BatchNorm calibration.

`build_member` makes a fresh member of a spec's arch (the DRNs of `fracscan.export.drn`, vgg16 / vgg16_bn of
`fracscan.export.vgg`); `load_member` fills it from the spec's checkpoint (`fracscan.export.checkpoints`
reads the file and maps reference key layouts), with a key-by-key report when the state_dict does not fit;
`calibrate_batchnorm` gives an untrained member realistic BatchNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fracscan.spec import DRN_ARCHS, VGG_ARCHS, MemberSpec

from .drn import FractureMember
from .vgg import VGGMember


class CheckpointMismatchError(ValueError):
    """A checkpoint's state_dict does not fit the member's architecture; the message says how."""


Member = nn.Module  # FractureMember or fracscan.export.vgg.VGGMember: spec, output_names, forward_logits, forward


def build_member(spec: MemberSpec) -> Member:
    """A freshly initialised member of `spec.arch` (train mode, as any new nn.Module)."""
    if spec.arch in VGG_ARCHS:
        return VGGMember(spec)
    return FractureMember(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shape(t) -> str:
    return "(" + ",".join(str(d) for d in t.shape) + ")"


def _listed(keys: list[str], limit: int = 6) -> str:
    """'in [module, ...]': keys grouped by their module, so a missing block reads as one entry."""
    modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    more = f" ... and {len(modules) - limit} more modules" if len(modules) > limit else ""
    return "in [" + ", ".join(modules[:limit]) + "]" + more


@dataclass(frozen=True)
class KeyReport:
    """How a state_dict differs from a member's own: every key, nothing left out."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()  # "key (checkpoint shape) vs (model shape)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)


def compare_state_dict(member: Member, state: dict) -> KeyReport:
    own = member.state_dict()
    return KeyReport(
        missing=tuple(k for k in own if k not in state),
        unexpected=tuple(k for k in state if k not in own),
        shapes=tuple(
            f"{k} {_shape(state[k])} vs {_shape(own[k])}"
            for k in own
            if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
        ),
    )


def check_state_dict(member: Member, state: dict, hint: str = "") -> None:
    """Raise CheckpointMismatchError when `state` does not fit `member` exactly; `hint` says what to do."""
    report = compare_state_dict(member, state)
    if report.ok:
        return
    missing, unexpected, shapes = report.missing, report.unexpected, report.shapes
    spec = member.spec
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {_listed(list(missing))}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_listed(list(unexpected))}")
    if shapes:
        problems.append(
            f"shape mismatch (checkpoint vs model) {'; '.join(shapes[:3])}"
            + (f" ... and {len(shapes) - 3} more" if len(shapes) > 3 else "")
        )
    heads = f" heads [{', '.join(h.name for h in spec.heads)}]" if spec.heads else ""
    raise CheckpointMismatchError(
        f"member {spec.name!r}: checkpoint does not match arch {spec.arch} width {spec.width} "
        f"input {spec.input} head {spec.head} attention {spec.attention} map {spec.map}{heads}: "
        + ", ".join(problems)
        + (f". {hint}" if hint else "")
        + " (`fracscan export --check` lists every key)"
    )


def member_state(spec: MemberSpec, spec_dir: str | Path | None = None):
    """(member, converted checkpoint) for `spec.checkpoint`, any supported layout (fracscan.export.checkpoints).

    BatchNorm's `num_batches_tracked` counters, absent from checkpoints of older PyTorch versions, are
    taken from the fresh member: they do not change what the member computes.
    """
    from fracscan.export.checkpoints import CheckpointError, read_state_dict, to_member_state

    if not spec.checkpoint:
        raise ValueError(f"member {spec.name!r}: the spec gives no checkpoint")
    path = Path(spec.checkpoint)
    if not path.is_absolute() and spec_dir is not None:
        path = Path(spec_dir) / path
    try:
        converted = to_member_state(read_state_dict(path, spec.name), spec)
    except CheckpointError as exc:
        raise CheckpointMismatchError(str(exc)) from exc
    member = build_member(spec)
    for key, value in member.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in converted.state:
            converted.state[key] = value
    if not compare_state_dict(member, converted.state).ok:
        other = _arch_that_fits(spec, converted.state)
        if other:
            fix = f'set arch = "{other}" for member {spec.name!r} in the spec, or give it a {spec.arch} checkpoint'
            converted.hint = f"the checkpoint's keys and shapes are those of {other}, not {spec.arch}: {fix}"
    return member, converted


def _arch_that_fits(spec: MemberSpec, state: dict) -> str | None:
    """The other arch whose member takes `state` exactly (a drn_d_54 checkpoint in a drn_d_38 slot), if any."""
    from dataclasses import replace

    family = DRN_ARCHS if spec.arch in DRN_ARCHS else ()
    for arch in (a for a in family if a != spec.arch):
        if compare_state_dict(build_member(replace(spec, arch=arch)), state).ok:
            return arch
    return None


def load_member(spec: MemberSpec, spec_dir: str | Path | None = None) -> Member:
    """Build a member and load `spec.checkpoint` (path relative to `spec_dir`), in eval mode.

    Accepts a bare state_dict or a dict holding one under "state_dict" / "model", strips a
    DataParallel "module." prefix, and maps the DRN reference implementation's layouts
    and torchvision's VGG-16 (fracscan.export.checkpoints). Raises CheckpointMismatchError if it does not fit.
    """
    member, converted = member_state(spec, spec_dir)
    check_state_dict(member, converted.state, converted.hint)
    member.load_state_dict(converted.state)
    return member.eval()


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images) -> nn.Module:
    """Set BatchNorm running statistics from a few batches (no weight changes).

    A freshly initialised network in eval mode uses running mean 0 / var 1, so its activations
    grow with depth and its sigmoid outputs saturate at 0 or 1; this gives untrained members
    (tests, demos) realistic, non-saturated outputs.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the given batches
    model.train()
    for x in images:
        model(x)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    return model.train(was_training)
