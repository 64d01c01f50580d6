"""ShuffleNetV2 for 32 px inputs (Ma et al. 2018): the CIFAR form of DNRT's Tables 1-2.

The paper's network at its four widths (torchvision's `shufflenet_v2_x{0_5,1_0,1_5,2_0}`:
stage widths (48, 96, 192), (116, 232, 464), (176, 352, 704) or (244, 488, 976), a 24-channel
3x3 stem, 4 / 8 / 4 units per stage, a 1x1 conv to 1024 (2048 at 2x), global pooling, dense),
with the CIFAR stem of the common CIFAR ShuffleNetV2 (kuangliu/pytorch-cifar): stride 1 and no
max pool, so 32 px shrink to 4. ReLU unless `model.variant_options.activation` says otherwise.

Written in the variant's units. A unit's branch is `act_conv2d` 1x1 + `norm`, the depthwise
`act_conv2d(groups=c)` + `norm(feeds_activation=False)`, `conv2d` 1x1 + `norm`; a downsampling
unit's second branch is the depthwise `act_conv2d(stride 2)` + `norm(feeds_activation=False)`,
`conv2d` 1x1 + `norm`. Channel split, concatenation and shuffle are plain tensor code. As in
the ResNets of this package, the tensor passed between units is the one *before* the
activation that ends every branch: each consumer (the next branch, the head) activates it
itself, and the half a unit passes on untouched carries it unactivated to them. With the
baseline units that is exactly the paper's network (ReLU computed per consumer, same values);
under `dac` every consumer pre-activates with its own biases, and the BNs that fed those
activations lose their shift. Stages are the three unit stages; ARR reads each one's pooled
output.
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.models import register_model
from biasbench.models.staged import StagedNet
from biasbench.models.variants import Variant

# width multiplier -> (stem, three stage widths, last conv), torchvision's table
WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024), 1.5: (24, 176, 352, 704, 1024),
          2.0: (24, 244, 488, 976, 2048)}
REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels, pass one half on, send the other through the branch.
    Stride 2: send the whole input through both branches (each gives half the output)."""

    def __init__(self, v: Variant, c_in: int, c_out: int, stride: int, stages: tuple[int, int]):
        super().__init__()
        s_in, s = stages  # the stage of the unit's input, its own
        half = c_out // 2
        if stride == 1 and c_in != c_out:
            raise ValueError(f"a stride-1 ShuffleNet unit keeps its width, got {c_in} -> {c_out}")
        self.stride = stride
        if stride == 2:  # (registered first: the paper's, and torchvision's, parameter order)
            self.down = nn.Sequential(
                v.act_conv2d(c_in, c_in, 3, stride, 1, groups=c_in, stage=s_in), v.norm(c_in, feeds_activation=False),
                v.conv2d(c_in, half, 1), v.norm(half))
        reads = c_in if stride == 2 else c_in // 2
        self.branch = nn.Sequential(
            v.act_conv2d(reads, half, 1, stage=s_in), v.norm(half),
            v.act_conv2d(half, half, 3, stride, 1, groups=half, stage=s), v.norm(half, feeds_activation=False),
            v.conv2d(half, half, 1), v.norm(half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.down(x)
        return channel_shuffle(torch.cat([kept, self.branch(x)], dim=1))


def shufflenet_v2_cifar(v: Variant, in_channels: int, num_classes: int, widths: tuple[int, ...],
                        repeats: tuple[int, ...]) -> StagedNet:
    stem_width, *stage_widths, last = widths
    if len(stage_widths) != len(repeats) or any(w % 2 for w in stage_widths):
        raise ValueError(f"need one even width per stage ({len(repeats)} stages), got {list(stage_widths)}")
    stem = nn.Sequential(v.conv2d(in_channels, stem_width, 3, padding=1, role="stem"), v.norm(stem_width))
    stages, c = [], stem_width
    for s, (c_out, n) in enumerate(zip(stage_widths, repeats, strict=True), start=1):
        stages.append(nn.Sequential(*[ShuffleUnit(v, c if i == 0 else c_out, c_out, 2 if i == 0 else 1,
                                                  (max(s - 1, 1) if i == 0 else s, s)) for i in range(n)]))
        c = c_out
    head = nn.Sequential(v.act_conv2d(c, last, 1, stage=len(repeats)), v.norm(last),
                         v.act_pool_linear(last, num_classes, stage=len(repeats)))
    return StagedNet(stem, stages, head, list(stage_widths))


@register_model("shufflenet_v2", summary="CIFAR ShuffleNetV2 (1x: 116-232-464, 4/8/4 units), DNRT's ShuffleNet",
                inputs="images", offers=("activations", "act_linear", "stages", "response_taps"),
                taps=StagedNet.response_taps,
                tiny_options={"channels": [4, 8, 8, 8, 16], "repeats": [1, 2, 1]})
def shufflenet_v2(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                  width: float = 1.0, repeats: list[int] | None = None, channels: list[int] | None = None) -> nn.Module:
    """`width`: 0.5, 1.0, 1.5 or 2.0 (the paper's); `channels` [stem, stage widths..., last] and
    `repeats` (units per stage) replace the paper's tables (small models for tests)."""
    if channels is not None and width != 1.0:
        raise ValueError("give `width` (the paper's tables) or `channels`, not both")
    if channels is None and width not in WIDTHS:
        raise ValueError(f"width must be one of {', '.join(map(str, WIDTHS))} (or give channels), got {width!r}")
    widths = tuple(channels) if channels is not None else WIDTHS[width]
    counts = tuple(repeats) if repeats is not None else REPEATS
    if any(not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(f"repeats must be positive integers, got {list(counts)}")
    return shufflenet_v2_cifar(variant, in_channels, num_classes, widths, counts)
