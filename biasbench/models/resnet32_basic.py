"""ResNet-32 for CIFAR as a `ResNetBasic` (widths 16/32/64, five BasicBlocks per stage): the
ResNet-32 of DNRT's long-tailed CIFAR-10 rows (Table 5), with an `activation` option (gelu/relu)
and ARR reading the pooled output of each of its three stages.

It differs from `resnet32_v1` (He et al.'s option-A network, identity shortcuts padded with
zeros) in its two downsampling shortcuts, which are 1x1 convolutions + BN here (option B, +2,752
parameters), because `ResNetBasic` is the ResNet written to carry RAA and ARR. `resnet32_v1` has
no activation option and no response taps, so GELU and DNRT cannot be built on it today.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.resnet_basic import ResNetBasic
from biasbench.models.response import finish_variant_model, with_activation
from biasbench.models.variants import Variant


@register_model("resnet32_basic")
def resnet32_basic(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    width: int = 16,
    activation: str | None = "relu",
) -> nn.Module:
    v = with_activation(variant, activation)
    model = ResNetBasic(v, in_channels, num_classes, [width, 2 * width, 4 * width], [5, 5, 5], [1, 2, 2])
    return finish_variant_model(model, v, num_classes)
