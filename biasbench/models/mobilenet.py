"""MobileNetV2 for 32 px inputs (Sandler et al. 2018): the CIFAR form of DNRT's Tables 1-2.

The paper's network (Table 2: a 3x3 stem of 32 channels, seven sequences of inverted residual
blocks (t, c, n, s), a 1x1 conv to 1280, global pooling, dense), with torchvision's widths and
rounding (`width` multiplies every width, rounded to multiples of 8; the last conv keeps 1280 for
width <= 1) and the CIFAR strides of the common CIFAR MobileNetV2 (kuangliu/pytorch-cifar): stem
stride 1 and the second sequence's stride 1, so 32 px shrink to 4 (8x, not 32x). A block adds
its input only when the stride is 1 and the width stays, as in the paper (the CIFAR repo adds a
1x1 projection elsewhere; we do not). ReLU6, the paper's activation, unless
`model.variant_options.activation` says otherwise. No dropout before the dense layer.

Written in the variant's units (docs/architecture.md): a block is the expansion `conv2d` (it
reads the linear bottleneck, not an activation) + `norm`, the depthwise
`act_conv2d(groups=hidden)` + `norm`, the projection `act_conv2d` + `norm(feeds_activation=False)`
(the bottleneck stays linear). So `dac` makes the depthwise conv the standard connection it
reduces to and the projection a DAC conv; `mba` keeps each depthwise group's copies together.
There are no BasicBlock second convs: `dmb` does not apply. Stages are the seven sequences;
ARR reads each sequence's pooled output.
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.models import register_model
from biasbench.models.staged import StagedNet
from biasbench.models.variants import Variant

# (expansion t, channels c, blocks n, stride s) of the paper's Table 2, with CIFAR strides.
SEQUENCES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))
STEM, LAST = 32, 1280


def divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never below 90% of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    def __init__(self, v: Variant, c_in: int, c_out: int, stride: int, t: int, stage: int):
        super().__init__()
        hidden = int(round(c_in * t))
        layers: list[nn.Module] = []
        if t != 1:
            layers += [v.conv2d(c_in, hidden, 1), v.norm(hidden)]
        layers += [v.act_conv2d(hidden, hidden, 3, stride, 1, groups=hidden, stage=stage), v.norm(hidden),
                   v.act_conv2d(hidden, c_out, 1, stage=stage), v.norm(c_out, feeds_activation=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2_cifar(v: Variant, in_channels: int, num_classes: int, width: float = 1.0) -> StagedNet:
    c = divisible(STEM * width)
    stem = nn.Sequential(v.conv2d(in_channels, c, 3, padding=1, role="stem"), v.norm(c))
    sequences, widths = [], []
    for stage, (t, channels, n, s) in enumerate(SEQUENCES, start=1):
        c_out = divisible(channels * width)
        sequences.append(nn.Sequential(*[InvertedResidual(v, c if i == 0 else c_out, c_out, s if i == 0 else 1, t,
                                                          stage) for i in range(n)]))
        widths.append(c_out)
        c = c_out
    last = divisible(LAST * max(1.0, width))
    head = nn.Sequential(v.conv2d(c, last, 1), v.norm(last), v.act_pool_linear(last, num_classes, stage=len(SEQUENCES)))
    return StagedNet(stem, sequences, head, widths)


@register_model("mobilenet_v2", summary="CIFAR MobileNetV2: 17 inverted residual blocks, ReLU6 (DNRT's MobileNet)",
                inputs="images", offers=("activations", "act_linear", "stages", "response_taps"),
                activation="relu6", taps=StagedNet.response_taps, tiny_options={"width": 0.1})
def mobilenet_v2(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                 width: float = 1.0) -> nn.Module:
    """`width`: torchvision's `width_mult` (every width x width, rounded to multiples of 8)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    return mobilenet_v2_cifar(variant, in_channels, num_classes, float(width))
