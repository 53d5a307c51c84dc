"""`fracscan export --check`: load every member as the export would, report, export nothing.

For a checkpoint: its layout (fracscan, DRN reference classification, DRNSeg, torchvision VGG-16),
what the conversion did (fracscan.export.checkpoints), the member's parameter count and every missing,
unexpected or mis-shaped key, in full, and what to do about missing ones (an ImageNet-only VGG-16). For an ONNX file (given, or the committed demo's): its weight count and
whether its inputs, outputs and operators are what the serving side expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fracscan import contract as c
from fracscan.export.build import INSTALL_EXPORT, MemberSource, member_sources, torch_installed
from fracscan.spec import EnsembleSpec


@dataclass
class MemberCheck:
    index: int
    name: str
    source: str
    parameters: int = 0
    layout: str = ""
    notes: list[str] = field(default_factory=list)
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    reasons: dict[str, str] = field(default_factory=dict)  # unexpected key -> why it has no place
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.error or self.missing or self.unexpected or self.shapes)

    def lines(self) -> list[str]:
        """The report of this member: a summary line, then every problem in full."""
        layout = f" ({self.layout} layout)" if self.layout else ""
        status = "OK" if self.ok else "PROBLEMS"
        out = [
            f"{c.member_model(self.index)} {self.name}: {self.source}{layout}, {self.parameters:,} parameters: {status}"
        ]
        out += [f"  {note}" for note in self.notes]
        if self.missing:
            out.append(f"  {len(self.missing)} missing keys: {', '.join(self.missing)}")
        if self.unexpected:
            shown = [f"{k} ({self.reasons[k]})" if k in self.reasons else k for k in self.unexpected]
            out.append(f"  {len(self.unexpected)} unexpected keys: {', '.join(shown)}")
        if self.shapes:
            out.append(f"  {len(self.shapes)} shape mismatches (checkpoint vs model): {'; '.join(self.shapes)}")
        if self.error:
            out.append(f"  {self.error}")
        return out


def _check_checkpoint(spec: EnsembleSpec, index: int, check: MemberCheck) -> None:
    from fracscan.export.members import compare_state_dict, count_parameters, member_state

    member, converted = member_state(spec.members[index], spec.source.parent if spec.source else None)
    keys = compare_state_dict(member, converted.state)
    check.parameters = count_parameters(member)
    check.layout, check.notes, check.reasons = converted.layout, converted.notes, converted.unmapped
    check.missing, check.unexpected, check.shapes = keys.missing, keys.unexpected, keys.shapes
    if converted.hint and not keys.ok:
        check.notes = [*check.notes, converted.hint]


def _check_onnx(spec: EnsembleSpec, index: int, source: MemberSource, check: MemberCheck) -> None:
    import numpy as np
    import onnx

    from fracscan.export.onnx_export import validate_onnx

    model = onnx.load(str(source.path))
    check.parameters = int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))
    check.notes.append("ONNX: BatchNorm folded into the convolutions, so fewer weights than the PyTorch member")
    validate_onnx(model, spec.members[index], spec.preprocess.size)


def inspect_members(spec: EnsembleSpec, random_init: bool = False) -> list[MemberCheck]:
    """One MemberCheck per member; nothing is written."""
    checks = []
    for index, source in enumerate(member_sources(spec, random_init)):
        check = MemberCheck(index, spec.members[index].name, source.describe())
        try:
            if source.kind == "checkpoint" and not (source.path and source.path.is_file()):
                check.error = f"checkpoint file not found: {source.path}"
            elif source.kind in ("checkpoint", "random") and not torch_installed():
                check.error = f"No module named 'torch': {INSTALL_EXPORT}"
            elif source.kind == "checkpoint":
                _check_checkpoint(spec, index, check)
            elif source.kind == "random":
                from fracscan.export.members import build_member, count_parameters

                check.parameters = count_parameters(build_member(spec.members[index]))
            else:
                _check_onnx(spec, index, source, check)
        except Exception as exc:
            check.error = str(exc)
        checks.append(check)
    return checks
