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
(`fracscan.export.members`) dispatches on the arch: the DRNs here, vgg16 in fracscan.export.vgg;
the parts both share (channel selection, heads, output names) are in fracscan.export.member_parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fracscan import contract
from fracscan.spec import DRN_ARCHS, MemberSpec

from .member_parts import (
    check_channels,
    head_layers,
    head_logits,
    member_output_names,
    probabilities,
    scale_channels,
    select_channels,
)

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


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, cin: int, planes: int, stride: int = 1, dilation: tuple[int, int] = (1, 1), residual: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride) if residual else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, cin: int, planes: int, stride: int = 1, dilation: tuple[int, int] = (1, 1), residual: bool = True
    ) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


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
    block: Block, cin: int, planes: int, n: int, stride: int = 1, dilation: int = 1, residual: bool = True
) -> nn.Sequential:
    blocks = [block(cin, planes, stride, (dilation, dilation), residual)]
    blocks += [block(planes * block.expansion, planes, 1, (dilation, dilation), residual) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class DRN(nn.Module):
    """DRN feature extractor: [B, in_channels, S, S] -> [B, out_channels, S/8, S/8]."""

    def __init__(self, arch: str, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if arch not in ARCH_CONFIGS:
            raise ValueError(f"unknown arch {arch!r}, expected one of {list(ARCH_CONFIGS)}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        kind, block_name, n = ARCH_CONFIGS[arch]
        block: Block = BasicBlock if block_name == "basic" else Bottleneck
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(9):
            x = getattr(self, f"layer{i}")(x)
        return x


class DRNClassifier(nn.Module):
    """ImageNet-style DRN: global average pool + 1x1 conv classifier (as in the paper's parameter counts)."""

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.backbone = DRN(arch, in_channels, width)
        self.fc = nn.Conv2d(self.backbone.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(F.adaptive_avg_pool2d(self.backbone(x), 1))  # Module calls return Any
        return logits.flatten(1)


def drn_backbone(arch: str, num_classes: int = 1000) -> DRNClassifier:
    """The full-width ImageNet classifier of an arch (used to check parameter counts against the paper)."""
    return DRNClassifier(arch, num_classes)


class FractureMember(nn.Module):
    """One DRN ensemble member built from a `MemberSpec`.

    `forward(image)` returns {"score": [B, 1], "map": [B, 1, S/8, S/8] (map members only),
    "head_<name>": [B, K] per head} as probabilities; `forward_logits(image)` returns the same
    before the sigmoid / softmax (for training with BCE- / cross-entropy-with-logits). Every member
    takes the same input `image` [B, pixel_channels, S, S].
    """

    def __init__(self, spec: MemberSpec) -> None:
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
