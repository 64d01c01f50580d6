"""AlexNet for 32 px inputs: the CIFAR form of DNRT's Tables 1-2.

torchvision's AlexNet needs at least 63 px. The CIFAR AlexNet in common use (e.g.
bearpaw/pytorch-classification's `alexnet`, "FC layers are removed, paddings are adjusted")
keeps torchvision's five convs and widths (64, 192, 384, 256, 256; kernels 11, 5, 3, 3, 3; the
first with stride 4 and padding 5), max-pools 2x2 after convs 1, 2 and 5 (32 -> 8 -> 4 -> 2 -> 1)
and classifies the 256 pooled features with one dense layer. No BN, no dropout; the convs carry
biases. The DNRT authors' code does not define it (docs/architectures.md); this is our reading.

Written in the variant's units. Each max pool sits *before* the activation that follows its
conv (`conv -> pool -> act -> conv`): for the monotone activations (ReLU, ELU, SELU, Softplus,
ReLU6, LeakyReLU) that is the same function as `conv -> act -> pool`, and it lets every
activation be the first half of the unit that reads it. A conv bias feeds an activation, so a
variant that moves the shift into the next layer (`dac`, `preact`) drops it. The head is
`act_pool_linear` (a global pool, which is the identity on the 1x1 map of a 32 px input).
Stages: 1 = conv 1's output, 2 = conv 2's, 3 = convs 3-5; ARR reads each stage's pooled output.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.staged import StagedNet
from biasbench.models.variants import Variant

MIN_SIDE = 29  # the 11x11 / stride 4 stem must leave 8 positions for the three 2x2 pools


def alexnet_cifar(v: Variant, in_channels: int, num_classes: int, width: int = 64) -> StagedNet:
    c1, c2, c3, c4 = width, 3 * width, 6 * width, 4 * width  # 64, 192, 384, 256
    feeds = {"bias": True, "feeds_activation": True}  # no norms: each conv's bias feeds an activation
    stages = [
        nn.Sequential(v.conv2d(in_channels, c1, 11, stride=4, padding=5, role="stem", **feeds)),
        nn.Sequential(nn.MaxPool2d(2), v.act_conv2d(c1, c2, 5, padding=2, stage=1, **feeds)),
        nn.Sequential(nn.MaxPool2d(2),
                      v.act_conv2d(c2, c3, 3, padding=1, stage=2, **feeds),
                      v.act_conv2d(c3, c4, 3, padding=1, stage=3, **feeds),
                      v.act_conv2d(c4, c4, 3, padding=1, stage=3, **feeds)),
    ]
    head = nn.Sequential(nn.MaxPool2d(2), v.act_pool_linear(c4, num_classes, stage=3))
    return StagedNet(nn.Identity(), stages, head, [c1, c2, c4])


@register_model("alexnet", summary="CIFAR AlexNet: 5 convs (64-192-384-256-256), 3 max pools, dense (DNRT's)",
                inputs="images", offers=("activations", "act_linear", "stages", "response_taps"),
                taps=StagedNet.response_taps, tiny_options={"width": 4}, tiny_input=(3, 32, 32))
def alexnet(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
            width: int = 64) -> nn.Module:
    """`width`: conv 1's channels; the others keep torchvision's ratios (x3, x6, x4, x4)."""
    if len(input_shape) == 3 and min(input_shape[1:]) < MIN_SIDE:
        raise ValueError(f"alexnet pools 32 px down to 1 and needs images of at least {MIN_SIDE} px, "
                         f"got {input_shape[1]}x{input_shape[2]}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return alexnet_cifar(variant, in_channels, num_classes, width)
