"""What every member architecture shares: channel selection, classification heads, output names.

The DRN members (`fracscan.export.drn`) and the VGG-16 member (`fracscan.export.vgg`) both build on
these, so the two layouts read the same shared input and answer in the contract's order.
"""

from __future__ import annotations

import torch
from torch import nn

from fracscan import contract
from fracscan.spec import HeadSpec, MemberSpec


def scale_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier: a multiple of 4, at least 4."""
    if width == 1.0:
        return channels
    return max(4, round(channels * width / 4) * 4)


def member_output_names(spec: MemberSpec) -> tuple[str, ...]:
    """score, [map], head_<name> per head: a member's outputs in the contract's order."""
    names = (contract.MEMBER_SCORE, contract.MEMBER_MAP) if spec.map else (contract.MEMBER_SCORE,)
    return names + tuple(contract.member_head(h.name) for h in spec.heads)


def select_channels(image: torch.Tensor, spec: MemberSpec) -> torch.Tensor:
    """The channel(s) `spec.input` names of the shared input [B, pixel_channels, S, S]: plain 0, LCN 1."""
    channels = spec.pixel_channels
    # Checked eagerly only: under ONNX tracing the shape is fixed by the export itself.
    # torch.jit.is_tracing is public but unannotated and missing from torch.jit's __all__.
    tracing = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    if not tracing and (image.dim() != 4 or image.shape[1] != channels):
        names = "plain, LCN" if channels == 2 else "plain"
        raise ValueError(
            f"member {spec.name!r}: expected image [B, {channels}, S, S] ({names}), got {list(image.shape)}"
        )
    if channels == 1:
        return image
    if spec.input == "plain":
        return image[:, 0:1]
    if spec.input == "lcn":
        return image[:, 1:2]
    return image


def check_channels(spec: MemberSpec) -> None:
    """The member's input exists in the shared input: LCN (input lcn or both) needs pixel_channels 2."""
    if spec.pixel_channels not in (1, 2):
        raise ValueError(f"member {spec.name!r}: pixel_channels must be 1 (plain) or 2 (plain, LCN)")
    if spec.pixel_channels == 1 and spec.input != "plain":
        raise ValueError(f"member {spec.name!r}: input {spec.input!r} needs the LCN channel (pixel_channels 2)")


def head_layers(features: int, heads: tuple[HeadSpec, ...]) -> nn.ModuleDict | None:
    """`heads.<name>`: one Linear(features -> K) per classification head; None without heads (no state_dict keys)."""
    if not heads:
        return None
    taken = [h.name for h in heads if hasattr(nn.ModuleDict, h.name)]
    if taken:
        raise ValueError(f"head names {taken} are names of torch's ModuleDict: rename the heads")
    return nn.ModuleDict({h.name: nn.Linear(features, len(h.classes)) for h in heads})


def head_logits(heads: nn.ModuleDict | None, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """`head_<name>` -> logits [B, K], in the spec's head order (the ONNX output order)."""
    if heads is None:
        return {}
    return {contract.member_head(name): layer(pooled) for name, layer in heads.items()}


def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sigmoid for score and map, softmax over the classes for each head."""
    return {
        k: torch.softmax(v, dim=1) if k.startswith(contract.MEMBER_HEAD_PREFIX) else torch.sigmoid(v)
        for k, v in logits.items()
    }
