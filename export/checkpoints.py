"""Checkpoints in, member state_dicts out: fracscan's own layout, the DRN reference layout, torchvision's VGG-16.

Most DRNs are trained with the DRN authors' reference implementation (github.com/fyu/drn). Its
checkpoints are read here without its code, by renaming keys (the mapping is documented in
docs/spec.md, "Checkpoints from the DRN reference implementation"):

* classification models (`drn_d_22(...)` etc.): `layer0.*` (D) or `conv1.*` / `bn1.*` (C), then
  `layer1.*` ... `layer8.*` -> `backbone.layerN.*`; `fc` (a 1x1 conv after global average
  pooling) -> `score_head` when it has 1 class, or 2 classes (softmax: p = sigmoid(z1 - z0));
* the segmentation wrapper `DRNSeg`: `base.N.*` (an nn.Sequential of the DRN's children minus
  avgpool and fc, so the index depends on C or D) -> `backbone.*`; `seg` (1x1 conv at stride 8)
  -> `map_head` by the same 1- or 2-class rule; `up` (a fixed bilinear upsampler) is dropped;
* fracscan's own keys (`backbone.*`, `score_head.*`, ...) pass unchanged, so a converted
  checkpoint can be completed with the heads the reference layout lacks.

A 3-channel (RGB, ImageNet) stem feeding a 1- or 2-channel member is summed over its colour
channels: for a grayscale radiograph replicated to R = G = B, which is how an RGB network sees a
radiograph, the summed filter gives the identical response (an average would scale it by 1/3
and the BatchNorm statistics behind it would no longer fit). A 2-channel member gets the sum on
its plain channel and zeros on its LCN channel: it computes what the RGB network computed on
the plain image until fine-tuning teaches it the LCN channel.

A vgg16 member (fracscan.export.vgg) has torchvision's layout, so torchvision VGG-16 state_dicts map
1:1: `features.*` and `classifier.0/3` at width 1.0. Its stem keeps 3 channels (the member replicates
the gray channel in its graph), so no stem is adapted. `classifier.6` is ImageNet's 1000-class
classifier: it is dropped, with a note (a 1- or 2-class `classifier.6`, a fine-tuned fracture
classifier, becomes `score_head` by the rule above). An ImageNet-only checkpoint therefore lacks
`score_head` and the spec's `heads.*`; loading it fails naming those keys and saying that a trained
fracture network is needed (fine-tune first). A checkpoint of fracscan's own vgg16 loads as is. A vgg16_bn
member reads torchvision's `vgg16_bn` keys the same way (its BatchNorm2d at features.1, 4, ...: weight,
bias, running_mean, running_var, num_batches_tracked).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fracscan.spec import VGG_ARCHS, MemberSpec

WRAPPER_KEYS = ("state_dict", "model")  # {"state_dict": ...}, {"model": ...} as training scripts save them
NATIVE_PREFIXES = ("backbone.", "score_head.", "map_head.", "attention.", "heads.")
VGG_PREFIXES = ("features.", "classifier.", "score_head.", "heads.")
TORCHVISION_CLASSIFIER = "classifier.6"  # torchvision VGG-16's last Linear: ImageNet's 1000 classes
# DRNSeg's `base` is nn.Sequential(*children[:-2]) of the classification DRN: the index of each level
DRNSEG_C = {0: "layer0.0", 1: "layer0.1", **{i + 2: f"layer{i}" for i in range(1, 9)}}  # conv1, bn1, relu, layer1..8
DRNSEG_D = {i: f"layer{i}" for i in range(0, 9)}  # layer0 (conv, bn, relu), layer1..8
STEM = "backbone.layer0.0.weight"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit its member; the message says which and how."""


@dataclass
class Converted:
    """A state_dict in fracscan's layout, where it came from, and what the conversion did."""

    state: dict[str, torch.Tensor]
    layout: str  # "fracscan", "drn" (classification) or "drnseg"
    notes: list[str] = field(default_factory=list)
    # keys of the checkpoint with no place in the member -> why; kept in `state` under their own names, so
    # that loading reports them as unexpected instead of dropping weights silently
    unmapped: dict[str, str] = field(default_factory=dict)
    hint: str = ""  # what to do when the member's keys are missing (an ImageNet-only VGG-16: fine-tune first)


def read_state_dict(path: Path, member_name: str) -> dict[str, Any]:
    """The state_dict in a checkpoint file: bare, or under "state_dict" / "model"; DataParallel's "module." off."""
    if not path.is_file():
        raise FileNotFoundError(f"member {member_name!r}: checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # Python objects beyond tensors: torch.save(model) saves the module
        raise CheckpointError(
            f"member {member_name!r}: checkpoint {path} holds pickled Python objects, not only tensors: most likely "
            "a whole model saved with torch.save(model). fracscan reads weights only (it never runs pickled code): "
            f"where the model's class is defined, load it and save its weights with "
            f"`torch.save(model.state_dict(), {str(path)!r})`"
        ) from exc
    except Exception as exc:  # zip / format errors: say which member and file
        raise CheckpointError(f"member {member_name!r}: cannot read checkpoint {path}: {exc}") from exc
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"member {member_name!r}: checkpoint {path} is not a state_dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def detect_layout(state: dict[str, Any]) -> str:
    """'drnseg' (base.N keys), 'drn' (layerN / conv1 keys at the top level) or 'fracscan'."""
    if any(k.startswith("base.") for k in state):
        return "drnseg"
    if any(re.match(r"(layer[0-8]|conv1|bn1|fc)\.", k) for k in state):
        return "drn"
    return "fracscan"


def _head(weight: torch.Tensor, bias: torch.Tensor | None, target: str, linear: bool) -> dict[str, torch.Tensor]:
    """A 1- or 2-class 1x1 conv as fracscan's one-logit head (2 classes: softmax p1 = sigmoid(z1 - z0))."""
    if weight.shape[0] == 2:
        weight = weight[1:2] - weight[0:1]
        bias = None if bias is None else bias[1:2] - bias[0:1]
    out = {f"{target}.weight": weight.reshape(1, -1) if linear else weight}
    if bias is not None:
        out[f"{target}.bias"] = bias
    return out


def _drnseg_renamer(state: dict[str, Any]) -> Callable[[str], str | None]:
    """DRNSeg's `base.N.*` -> `backbone.layerM.*`; C and D differ at base.0 (conv1 itself, or layer0)."""
    table = DRNSEG_C if "base.0.weight" in state else DRNSEG_D

    def rename(key: str) -> str | None:
        match = re.match(r"base\.(\d+)\.(.+)", key)
        target = table.get(int(match[1])) if match else None
        return f"backbone.{target}.{match[2]}" if match and target else None

    return rename


def _rename_drn(key: str) -> str | None:
    if key.startswith("conv1."):
        return "backbone.layer0.0." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "backbone.layer0.1." + key[len("bn1.") :]
    if re.match(r"layer[0-8]\.", key):
        return "backbone." + key
    return None


def _add_head(converted: Converted, state: dict[str, Any], source: str, member: MemberSpec) -> None:
    """The reference layout's `fc` (classification) or `seg` (DRNSeg) as the member's score or map head."""
    weight, bias = state.get(f"{source}.weight"), state.get(f"{source}.bias")
    if weight is None:
        return
    keys = [k for k in (f"{source}.weight", f"{source}.bias") if k in state]
    classes = weight.shape[0]
    if classes not in (1, 2):
        why = f"{classes} classes (an ImageNet classifier?): only a 1- or 2-class {source} is a fracture head"
        converted.unmapped.update(dict.fromkeys(keys, why))
        return
    if source == "fc":
        if member.head != "gap" or member.attention:
            why = "fc follows global average pooling: it fits a gap head without attention only"
            converted.unmapped.update(dict.fromkeys(keys, why))
            return
        converted.state.update(_head(weight, bias, "score_head", linear=True))
        converted.notes.append(f"fc ({classes} classes) -> score_head")
    else:
        if not member.map:
            converted.unmapped.update(dict.fromkeys(keys, "the member has no map (map = false)"))
            return
        converted.state.update(_head(weight, bias, "map_head", linear=False))
        converted.notes.append(f"seg ({classes} classes) -> map_head")


def adapt_stem(state: dict[str, torch.Tensor], in_channels: int, notes: list[str]) -> None:
    """A 3-channel (RGB) stem for a 1- or 2-channel member: the sum over R, G, B on the (plain) channel."""
    stem = state.get(STEM)
    if stem is None or stem.dim() != 4 or stem.shape[1] != 3 or in_channels not in (1, 2):
        return
    summed = stem.sum(dim=1, keepdim=True)
    if in_channels == 2:
        summed = torch.cat([summed, torch.zeros_like(summed)], dim=1)
    state[STEM] = summed
    where = "on the plain channel, zeros on the LCN channel" if in_channels == 2 else ""
    notes.append(f"3-channel stem summed over R, G, B {where}".rstrip())


def _vgg_state(state: dict[str, Any], member: MemberSpec) -> Converted:
    """torchvision's VGG-16 or fracscan's own vgg16 layout: the same names; classifier.6 has no place."""
    layout = "torchvision" if any(k.startswith(f"{TORCHVISION_CLASSIFIER}.") for k in state) else "fracscan"
    converted = Converted({}, layout)
    for key, value in state.items():
        if key.startswith(f"{TORCHVISION_CLASSIFIER}."):
            continue
        if not key.startswith(VGG_PREFIXES):
            converted.unmapped[key] = "no place in a vgg16 member"
        converted.state[key] = value
    weight = state.get(f"{TORCHVISION_CLASSIFIER}.weight")
    if weight is not None:
        classes = weight.shape[0]
        if classes in (1, 2) and "score_head.weight" not in state:
            converted.state.update(_head(weight, state.get(f"{TORCHVISION_CLASSIFIER}.bias"), "score_head", True))
            converted.notes.append(f"{TORCHVISION_CLASSIFIER} ({classes} classes) -> score_head")
        else:
            converted.notes.append(
                f"{TORCHVISION_CLASSIFIER} ({classes} classes, torchvision's ImageNet classifier) dropped: "
                "score_head and the heads replace it"
            )
    wanted = ["score_head", *(f"heads.{h.name}" for h in member.heads)]
    absent = [m for m in wanted if f"{m}.weight" not in converted.state]
    if absent:
        converted.hint = (
            f"The checkpoint has no {', '.join(absent)}: a vgg16 member needs a trained fracture network, which an "
            "ImageNet VGG-16 is not. Fine-tune it first (its features.* and classifier.0/3 load as they are) and "
            "give the trained network's checkpoint"
        )
    return converted


def to_member_state(state: dict[str, Any], member: MemberSpec) -> Converted:
    """`state` in the member's key layout (see the module docstring); nothing is loaded yet."""
    if member.arch in VGG_ARCHS:
        return _vgg_state(state, member)
    layout = detect_layout(state)
    converted = Converted({}, layout)
    rename = {"drn": _rename_drn, "drnseg": _drnseg_renamer(state)}.get(layout)
    heads = {"drn": "fc", "drnseg": "seg"}.get(layout)
    for key, value in state.items():
        if key.startswith(NATIVE_PREFIXES) or rename is None:
            converted.state[key] = value
            continue
        if heads and key.startswith(f"{heads}."):
            continue  # _add_head below
        if layout == "drnseg" and key.startswith("up."):
            converted.notes.append("up (DRNSeg's fixed bilinear upsampler) dropped: fracscan upsamples the map itself")
            continue
        target = rename(key)
        if target is None:
            converted.unmapped[key] = "no place in a fracscan member"
        converted.state[target or key] = value
    if heads:
        _add_head(converted, state, heads, member)
    for key in converted.unmapped:  # kept under their own names: the load reports them as unexpected
        converted.state.setdefault(key, state[key])
    adapt_stem(converted.state, member.in_channels, converted.notes)
    return converted
