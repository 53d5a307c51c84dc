"""VGG-16 (Simonyan and Zisserman 2015) as an ensemble member, as Olczak et al. 2017 used it.

The layouts are torchvision's, so ImageNet-style `vgg16` and `vgg16_bn` state_dicts map 1:1
(fracscan.export.checkpoints):

    vgg16     features.0 ... features.28   13 3x3 convs (bias, ReLU after each), 2x2 max pools at 4, 9, 16, 23, 30
    vgg16_bn  features.0 ... features.42   conv (bias), BatchNorm2d, ReLU per conv, max pools at 6, 13, 23, 33, 43
    both      classifier.0                 Linear(512 * 7 * 7 -> 4096), ReLU (1), Dropout (2)
              classifier.3                 Linear(4096 -> 4096), ReLU (4), Dropout (5)

A `vgg16_bn` member trains with its batch norm; at export `fold_batchnorm` folds each BatchNorm2d into
the conv before it (torch.nn.utils.fusion.fuse_conv_bn_eval), so the served graph is a plain VGG-16.

torchvision's `classifier.6` (ImageNet's 1000 classes) is replaced by `score_head` Linear(4096 -> 1)
(sigmoid: `score`) and one `heads.<name>` Linear(4096 -> K) per classification head (softmax:
`head_<name>`). A `width` multiplier scales every channel count and the 4096 hidden units by
`fracscan.export.member_parts.scale_channels` (1.0 is the paper's network; the demo uses 1/16, width = 0.0625).

The member reads the same pre-processed input as every member, `image` [B, pixel_channels, S, S] in
[-1, 1], takes its one channel (plain, or LCN where the spec has it), and replicates it to R = G = B
with ImageNet's normalisation in one broadcast affine, so ImageNet weights see what they were trained
on: `(x + 1) / 2` is the [0, 1] image, then `(x01 - mean_c) / std_c` per colour channel. The graph
holds that as one Mul and one Add with [1, 3, 1, 1] constants.

torchvision pools the features to 7 x 7 with AdaptiveAvgPool2d(7). ONNX has no such op, and exporters
turn it into a plain AveragePool only when the bins tile the grid. Here the pooling is a plain average
pool that computes the identical result: at S = 224 k the features are 7k x 7k and the bins are
AvgPool(k, stride k); at S = 256 they are 8 x 8 and torchvision's bins [floor(8i/7), ceil(8(i+1)/7))
are 2 wide at stride 1, i.e. AvgPool(2, stride 1) (tests/test_vgg.py proves both against
AdaptiveAvgPool2d). So ImageNet weights keep their meaning at 256 x 256 without interpolation.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fracscan import contract
from fracscan.spec import VGG_ARCHS, VGG_STRIDE, MemberSpec

from .member_parts import (
    check_channels,
    head_layers,
    head_logits,
    member_output_names,
    probabilities,
    scale_channels,
    select_channels,
)

# torchvision's "D" configuration: five blocks of 3x3 convs (output channels), each followed by a 2x2 max pool
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
HIDDEN = 4096
POOLED = 7  # torchvision's classifier reads 7 x 7 features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DROPOUT = 0.5


def vgg16_features(width: float = 1.0, batch_norm: bool = False) -> nn.Sequential:
    """`features.*` in torchvision's indices: conv (BatchNorm2d), ReLU per layer, a max pool after each block."""
    layers: list[nn.Module] = []
    cin = 3
    for block in VGG16_BLOCKS:
        for channels in block:
            cout = scale_channels(channels, width)
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), *norm, nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def pooling_to_7(grid: int) -> tuple[int, int] | None:
    """(kernel, stride) of the average pool equal to AdaptiveAvgPool2d(7) on a grid x grid map; None at 7."""
    if grid == POOLED:
        return None
    if grid % POOLED == 0:
        return grid // POOLED, grid // POOLED
    if grid == POOLED + 1:
        return 2, 1
    raise ValueError(
        f"vgg16: features of {grid} x {grid} (input {grid * VGG_STRIDE}) have no exact plain 7 x 7 pooling; "
        "use an input size of 224 x k or 256"
    )


class VGGMember(nn.Module):
    """A vgg16 / vgg16_bn member of a `MemberSpec`: `forward(image)` -> {"score", "head_<name>" ...} probabilities.

    The same surface as `FractureMember`: `spec`, `output_names`, `select_input`, `forward_logits`
    (before the sigmoid / softmax, for training) and `forward`.
    """

    def __init__(self, spec: MemberSpec):
        super().__init__()
        if spec.arch not in VGG_ARCHS:
            raise ValueError(f"member {spec.name!r}: VGGMember builds arch {' or '.join(VGG_ARCHS)}, not {spec.arch}")
        if spec.map or spec.attention or spec.head != "gap":
            raise ValueError(f"member {spec.name!r}: a {spec.arch} member has no map, attention or spp head")
        if spec.input == "both":
            raise ValueError(
                f"member {spec.name!r}: a {spec.arch} member reads one channel (input plain or lcn), not both"
            )
        if not spec.width > 0:
            raise ValueError(f"member {spec.name!r}: width must be > 0, got {spec.width}")
        check_channels(spec)
        self.spec = spec
        self.features = vgg16_features(spec.width, batch_norm=spec.arch == "vgg16_bn")
        channels = scale_channels(512, spec.width)
        hidden = scale_channels(HIDDEN, spec.width)
        self.classifier = nn.Sequential(
            nn.Linear(channels * POOLED * POOLED, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
        )
        self.score_head = nn.Linear(hidden, 1)
        self.heads = head_layers(hidden, spec.heads)
        # (x + 1) / 2 then ImageNet's (x01 - mean) / std == x * 0.5 / std + (0.5 - mean) / std; the [1, 3, 1, 1]
        # shape replicates the one gray channel to R = G = B. Not in the state_dict: it is not a weight.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("rgb_scale", (0.5 / std).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_shift", ((0.5 - mean) / std).reshape(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation: He (fan out) for convs, BatchNorm at identity, N(0, 0.01) for linears."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def output_names(self) -> tuple[str, ...]:
        return member_output_names(self.spec)

    def select_input(self, image: torch.Tensor) -> torch.Tensor:
        """The member's one channel [B, 1, S, S] of the shared input."""
        return select_channels(image, self.spec)

    def to_rgb(self, gray: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] in [-1, 1] -> [B, 3, S, S] as torchvision's ImageNet VGG-16 expects it."""
        return gray * self.rgb_scale + self.rgb_shift

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        # Under ONNX tracing the grid becomes a constant: only the batch is dynamic in the exported graph.
        pool = pooling_to_7(int(feats.shape[-1]))
        return feats if pool is None else F.avg_pool2d(feats, kernel_size=pool[0], stride=pool[1])

    def forward_logits(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(self.to_rgb(self.select_input(image)))
        hidden = self.classifier(self.pooled(feats).flatten(1))
        return {contract.MEMBER_SCORE: self.score_head(hidden), **head_logits(self.heads, hidden)}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return probabilities(self.forward_logits(image))


def fold_batchnorm(member: VGGMember) -> VGGMember:
    """An eval-mode copy of `member` with each BatchNorm2d folded into its conv (a plain VGG-16 graph).

    The copy computes what the eval-mode member computes (up to float rounding); the BatchNorm2d modules
    become nn.Identity, so the torchvision indices of the other layers stay. A member without batch norm
    comes back as an eval-mode copy.
    """
    folded = copy.deepcopy(member).eval()
    layers = folded.features
    for i in range(len(layers) - 1):
        conv, norm = layers[i], layers[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            layers[i] = fuse_conv_bn_eval(conv, norm)
            layers[i + 1] = nn.Identity()
    return folded
