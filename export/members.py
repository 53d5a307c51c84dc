"""The ensemble members: Dilated Residual Networks (Yu, Koltun, Funkhouser 2017) with fracture heads.

Backbone layout (output stride 8), levels 0..8 with channels (16, 32, 64, 128, 256, 512, 512, 512):

    level 0    7x7 conv stem, stride 1
    level 1-2  C: residual BasicBlocks            D: plain 3x3 conv-bn-relu layers   (level 2: stride 2)
    level 3-4  residual blocks, stride 2 each
    level 5-6  residual blocks, dilation 2 and 4  (no more striding: the map stays at S/8)
    level 7-8  dilation 2 then 1, no residual     ("degridding"; C: BasicBlocks, D: conv layers)

A member (`FractureMember`) takes the pre-processed input `image` [B, pixel_channels, S, S]
(channel 0 plain, channel 1 LCN where the spec has LCN, all in [-1, 1]), picks the channel(s) its
spec asks for, and outputs probabilities: `score` [B, 1], for map members `map` [B, 1, S/8, S/8],
and for each classification head of the spec `head_<name>` [B, K] (softmax). `build_member`
dispatches on the arch: the DRNs here, vgg16 in fracscan.export.vgg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fracscan import contract
from fracscan.spec import DRN_ARCHS, HeadSpec, MemberSpec

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
SPP_GRIDS = (1, 2, 4)  # spatial pyramid pooling grids: 1x1 + 2x2 + 4x4 = 21 bins per channel

# arch -> (stem kind, residual block, blocks per level 1..8)
ARCH_CONFIGS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "drn_c_26": ("C", "basic", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_22": ("D", "basic", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_38": ("D", "basic", (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_54": ("D", "bottleneck", (1, 1, 3, 4, 6, 3, 1, 1)),
}
assert set(ARCH_CONFIGS) == set(DRN_ARCHS), "fracscan.spec.DRN_ARCHS and ARCH_CONFIGS disagree"


class CheckpointMismatchError(ValueError):
    """A checkpoint's state_dict does not fit the member's architecture; the message says how."""


def scale_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier: a multiple of 4, at least 4."""
    if width == 1.0:
        return channels
    return max(4, round(channels * width / 4) * 4)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation=(1, 1), residual: bool = True):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride) if residual else None
        self.residual = residual

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation=(1, 1), residual: bool = True):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride) if residual else None
        self.residual = residual

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """1x1 projection on the residual path when the shape changes (None: identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def _conv_layers(cin: int, cout: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """DRN-D's plain levels: n x (3x3 conv, BN, ReLU), the first one strided."""
    mods: list[nn.Module] = []
    for i in range(n):
        mods += [
            _conv3x3(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*mods)


def _res_level(
    block, cin: int, planes: int, n: int, stride: int = 1, dilation: int = 1, residual: bool = True
) -> nn.Sequential:
    blocks = [block(cin, planes, stride, (dilation, dilation), residual)]
    blocks += [block(planes * block.expansion, planes, 1, (dilation, dilation), residual) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class DRN(nn.Module):
    """DRN feature extractor: [B, in_channels, S, S] -> [B, out_channels, S/8, S/8]."""

    def __init__(self, arch: str, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if arch not in ARCH_CONFIGS:
            raise ValueError(f"unknown arch {arch!r}, expected one of {list(ARCH_CONFIGS)}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        kind, block_name, n = ARCH_CONFIGS[arch]
        block = BasicBlock if block_name == "basic" else Bottleneck
        ch = [scale_channels(c, width) for c in CHANNELS]
        exp = block.expansion

        self.layer0 = nn.Sequential(
            nn.Conv2d(in_channels, ch[0], 7, padding=3, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True)
        )
        if kind == "C":
            self.layer1 = _res_level(BasicBlock, ch[0], ch[0], n[0])
            self.layer2 = _res_level(BasicBlock, ch[0], ch[1], n[1], stride=2)
        else:
            self.layer1 = _conv_layers(ch[0], ch[0], n[0])
            self.layer2 = _conv_layers(ch[0], ch[1], n[1], stride=2)
        self.layer3 = _res_level(block, ch[1], ch[2], n[2], stride=2)
        self.layer4 = _res_level(block, ch[2] * exp, ch[3], n[3], stride=2)
        self.layer5 = _res_level(block, ch[3] * exp, ch[4], n[4], dilation=2)
        self.layer6 = _res_level(block, ch[4] * exp, ch[5], n[5], dilation=4)
        if kind == "C":
            self.layer7 = _res_level(BasicBlock, ch[5] * exp, ch[6], n[6], dilation=2, residual=False)
            self.layer8 = _res_level(BasicBlock, ch[6], ch[7], n[7], dilation=1, residual=False)
        else:
            self.layer7 = _conv_layers(ch[5] * exp, ch[6], n[6], dilation=2)
            self.layer8 = _conv_layers(ch[6], ch[7], n[7], dilation=1)
        self.out_channels = ch[7]

        for m in self.modules():  # He init as in the DRN paper's code: N(0, 2 / (k*k*out_channels))
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for i in range(9):
            x = getattr(self, f"layer{i}")(x)
        return x


class DRNClassifier(nn.Module):
    """ImageNet-style DRN: global average pool + 1x1 conv classifier (as in the paper's parameter counts)."""

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.backbone = DRN(arch, in_channels, width)
        self.fc = nn.Conv2d(self.backbone.out_channels, num_classes, 1)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.backbone(x), 1)).flatten(1)


def drn_backbone(arch: str, num_classes: int = 1000) -> DRNClassifier:
    """The full-width ImageNet classifier of an arch (used to check parameter counts against the paper)."""
    return DRNClassifier(arch, num_classes)


def member_output_names(spec: MemberSpec) -> tuple[str, ...]:
    """score, [map], head_<name> per head: a member's outputs in the contract's order."""
    names = (contract.MEMBER_SCORE, contract.MEMBER_MAP) if spec.map else (contract.MEMBER_SCORE,)
    return names + tuple(contract.member_head(h.name) for h in spec.heads)


def select_channels(image: torch.Tensor, spec: MemberSpec) -> torch.Tensor:
    """The channel(s) `spec.input` names of the shared input [B, pixel_channels, S, S]: plain 0, LCN 1."""
    channels = spec.pixel_channels
    # Checked eagerly only: under ONNX tracing the shape is fixed by the export itself.
    if not torch.jit.is_tracing() and (image.dim() != 4 or image.shape[1] != channels):
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


class FractureMember(nn.Module):
    """One DRN ensemble member built from a `MemberSpec`.

    `forward(image)` returns {"score": [B, 1], "map": [B, 1, S/8, S/8] (map members only),
    "head_<name>": [B, K] per head} as probabilities; `forward_logits(image)` returns the same
    before the sigmoid / softmax (for training with BCE- / cross-entropy-with-logits). Every member
    takes the same input `image` [B, pixel_channels, S, S].
    """

    def __init__(self, spec: MemberSpec):
        super().__init__()
        check_channels(spec)
        self.spec = spec
        self.backbone = DRN(spec.arch, in_channels=spec.in_channels, width=spec.width)
        c = self.backbone.out_channels
        # Spatial attention: a per-pixel weight in (0, 1) that gates the features before pooling.
        self.attention = nn.Conv2d(c, 1, 1) if spec.attention else None
        bins = sum(g * g for g in SPP_GRIDS) if spec.head == "spp" else 1
        self.score_head = nn.Linear(c * bins, 1)
        self.map_head = nn.Conv2d(c, 1, 1) if spec.map else None
        self.heads = head_layers(c * bins, spec.heads)  # on the pooled features, like the score

    @property
    def output_names(self) -> tuple[str, ...]:
        return member_output_names(self.spec)

    def select_input(self, image: torch.Tensor) -> torch.Tensor:
        return select_channels(image, self.spec)

    def forward_logits(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(self.select_input(image))
        gated = feats if self.attention is None else feats * torch.sigmoid(self.attention(feats))
        if self.spec.head == "spp":
            # Max pooling over 1x1, 2x2, 4x4 grids (He et al. 2014); ONNX needs S/8 divisible by 4.
            pooled = torch.cat([F.adaptive_max_pool2d(gated, g).flatten(1) for g in SPP_GRIDS], dim=1)
        else:
            pooled = F.adaptive_avg_pool2d(gated, 1).flatten(1)
        out = {contract.MEMBER_SCORE: self.score_head(pooled)}
        if self.map_head is not None:
            out[contract.MEMBER_MAP] = self.map_head(feats)  # the map sees the ungated features
        return out | head_logits(self.heads, pooled)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return probabilities(self.forward_logits(image))


Member = nn.Module  # FractureMember or fracscan.export.vgg.VGGMember: spec, output_names, forward_logits, forward


def build_member(spec: MemberSpec) -> Member:
    """A freshly initialised member of `spec.arch` (train mode, as any new nn.Module)."""
    if spec.arch == "vgg16":
        from .vgg import VGGMember  # vgg builds on this module's head and channel helpers

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
