"""VGG-11 for 32 px inputs: the CIFAR form of DNRT's Tables 1-2.

Simonyan and Zisserman's configuration A (convs 64, M, 128, M, 256, 256, M, 512, 512, M, 512,
512, M; every conv 3x3 with padding 1 and a bias, followed by BN as in torchvision's
`vgg11_bn`), with the CIFAR head of the common CIFAR VGGs (e.g. kuangliu/pytorch-cifar): after
the fifth pool the 32 px map is 1x1, read by one dense layer of 512 -> classes instead of
torchvision's three 4096-wide layers. The DNRT authors' code does not define it
(docs/architectures.md); this is our reading.

Written in the variant's units; each max pool sits before the activation that follows its BN
(the same function for monotone activations, see models/alexnet.py). Stages are the five
resolutions; ARR reads each stage's pooled output (its last BN, before the pool).
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.staged import StagedNet
from biasbench.models.variants import Variant

# Configuration A: widths as multiples of the first; "M" is a 2x2 max pool.
CONFIG_A = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


def vgg11_cifar(v: Variant, in_channels: int, num_classes: int, width: int = 64) -> StagedNet:
    stages: list[list[nn.Module]] = [[]]
    widths: list[int] = [0]  # each stage's output channels (its last conv's)
    c_in, reads = in_channels, None  # reads: the stage whose features the next activation reads
    for item in CONFIG_A[:-1]:
        if item == "M":
            stages.append([nn.MaxPool2d(2)])
            widths.append(c_in)
            continue
        c_out = int(item) * width
        if reads is None:
            conv = v.conv2d(c_in, c_out, 3, padding=1, bias=True, role="stem")
        else:
            conv = v.act_conv2d(c_in, c_out, 3, padding=1, bias=True, stage=reads)
        stages[-1] += [conv, v.norm(c_out)]
        widths[-1] = c_out
        c_in, reads = c_out, len(stages)
    head = nn.Sequential(nn.MaxPool2d(2), v.act_pool_linear(c_in, num_classes, stage=reads))
    return StagedNet(nn.Identity(), [nn.Sequential(*layers) for layers in stages], head, widths)


@register_model("vgg11", summary="CIFAR VGG-11 with BN: 8 convs (64-512), 5 max pools, dense (DNRT's)",
                inputs="images", offers=("activations", "act_linear", "stages", "response_taps"),
                taps=StagedNet.response_taps, tiny_options={"width": 2}, tiny_input=(3, 32, 32))
def vgg11(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
          width: int = 64) -> nn.Module:
    """`width`: the first conv's channels (64); later stages double it up to 8x."""
    if len(input_shape) == 3 and min(input_shape[1:]) < 32:
        raise ValueError(f"vgg11 pools five times and needs images of at least 32 px, "
                         f"got {input_shape[1]}x{input_shape[2]}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return vgg11_cifar(variant, in_channels, num_classes, width)
