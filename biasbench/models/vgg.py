"""VGG-like plain networks of the DAC paper (section 5, "Plain convolutional networks on CIFAR").

A sequence of 3x3 convs, each `conv -> BN -> ReLU`, then global average pooling and a dense
layer. `vgg20_16`: 19 convs starting at 16 kernels, doubled to 32 and 64 after 7 and 13 layers.
`vgg14_32`: 13 convs starting at 32, doubled after 5 and 9. The paper does not say where the
resolution drops; the first conv of each doubled width has stride 2, as in the CIFAR ResNets
and RepVGG (our choice; `downsample: false` keeps the full resolution throughout). A stage is a
run of convs of one width; a unit's `stage` is the stage of the conv whose output it activates.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.variants import Variant


def vgg_widths(convs: int, first: int, doubles_after: tuple[int, ...]) -> list[int]:
    """Width of conv 1..convs: `first`, doubled after each layer count in `doubles_after`."""
    return [first * 2 ** sum(i > d for d in doubles_after) for i in range(1, convs + 1)]


def plain_vgg(v: Variant, num_classes: int, in_channels: int, convs: int, first: int,
              doubles_after: tuple[int, ...], downsample: bool) -> nn.Module:
    widths = vgg_widths(convs, first, doubles_after)
    stage = {w: i + 1 for i, w in enumerate(dict.fromkeys(widths))}
    layers: list[nn.Module] = [v.conv2d(in_channels, widths[0], 3, padding=1, role="stem"), v.norm(widths[0])]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        stride = 2 if downsample and c_out != c_in else 1
        layers += [v.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, stage=stage[c_in]), v.norm(c_out)]
    layers.append(v.act_pool_linear(widths[-1], num_classes, stage=stage[widths[-1]]))
    return nn.Sequential(*layers)


_VGG = dict(inputs="images", offers=("activations", "act_linear", "stages"))


@register_model("vgg20_16", summary="DAC paper's plain net: 19 3x3 convs from 16 kernels (x2 after 7, 13)", **_VGG)
def vgg20_16(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             downsample: bool = True, first: int = 16) -> nn.Module:
    return plain_vgg(variant, num_classes, in_channels, 19, _kernels(first), (7, 13), downsample)


@register_model("vgg14_32", summary="DAC paper's plain net: 13 3x3 convs from 32 kernels (x2 after 5, 9)", **_VGG)
def vgg14_32(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             downsample: bool = True, first: int = 32) -> nn.Module:
    return plain_vgg(variant, num_classes, in_channels, 13, _kernels(first), (5, 9), downsample)


def _kernels(first: int) -> int:
    """`first`: kernels of the first conv (the paper's 16 or 32; others widen the net for a
    capacity-matched baseline, `match:` in studies/dac_vgg_cifar_matched.yaml)."""
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise ValueError(f"first must be a positive number of kernels, got {first!r}")
    return first
