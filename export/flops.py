"""Per-member compute and size of an ensemble: `python -m fracscan.export.flops [--spec PATH] [--size S]`.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` for one radiograph (batch 1):
one multiply-add = 2 FLOPs; only convolutions and matrix products are counted (BatchNorm is
folded into the convolutions at export; ReLU, pooling and sigmoid are a negligible remainder).
The models are built on the `meta` device, so nothing is computed or allocated.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fracscan.spec import MemberSpec, builtin_spec_path, load_spec

from .members import build_member, count_parameters


@dataclass(frozen=True)
class MemberCost:
    name: str
    params: int
    flops: int  # per radiograph, multiply-add = 2


def member_cost(spec: MemberSpec, size: int) -> MemberCost:
    with torch.device("meta"):
        model = build_member(spec).eval()
        image = torch.empty(1, spec.pixel_channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return MemberCost(spec.name, count_parameters(model), counter.get_total_flops())


def format_table(members: tuple[MemberSpec, ...], costs: list[MemberCost], size: int) -> str:
    head = (
        f"{'#':>2}  {'member':<30} {'arch':<9} {'input':<6} {'head':<4} {'attn':<4} {'map':<4} "
        f"{'width':>6} {'params (M)':>11} {'GFLOPs':>9}"
    )
    lines = [f"S = {size}, batch 1; FLOPs count a multiply-add as 2 (conv + matmul only)", head, "-" * len(head)]
    for i, (m, c) in enumerate(zip(members, costs, strict=True)):
        lines.append(
            f"{i:>2}  {m.name:<30} {m.arch:<9} {m.input:<6} {m.head:<4} {'yes' if m.attention else 'no':<4} "
            f"{'yes' if m.map else 'no':<4} {m.width:>6g} {c.params / 1e6:>11.3f} {c.flops / 1e9:>9.2f}"
        )
    lines.append("-" * len(head))
    total_p, total_f = sum(c.params for c in costs), sum(c.flops for c in costs)
    lines.append(f"{'':>2}  {'ensemble total per radiograph':<66} {total_p / 1e6:>11.3f} {total_f / 1e9:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fracscan.export.flops", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec",
        default=str(builtin_spec_path("jones2020")),
        help="ensemble spec TOML (default: the built-in jones2020)",
    )
    parser.add_argument("--size", type=int, default=None, help="input size S (default: the spec's preprocess.size)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    size = args.size or spec.preprocess.size
    costs = [member_cost(m, size) for m in spec.members]
    print(f"ensemble {spec.name!r} ({args.spec})")
    print(format_table(spec.members, costs, size))


if __name__ == "__main__":
    main()
