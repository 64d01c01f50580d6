"""ResNets of BasicBlocks for 32 px inputs: ABN's ResNet-S and the CIFAR ResNet-18 of DNRT.

Both are `stem (3x3 conv + BN) -> stages of BasicBlocks -> ReLU -> GAP -> Linear`, written in the
variant's units so every variant applies. A block receives the *un-activated* sum z of the
previous block (or the stem's BN output); the activation that a post-activated ResNet applies at
the end of a block is the first half of the units that read z:

    conv1 = act_conv2d(role="block_conv1")  : ReLU -> conv1   (then BN -> ...)
    conv2 = act_conv2d(role="block_conv2")  : ReLU -> conv2   (then BN)
    shortcut = act_conv2d(1x1, role="shortcut") + BN   when the shape changes, else act(z)
    out = BN2(conv2(BN1(conv1(z)))) + shortcut(z)

With the baseline units this is exactly `conv1 -> BN -> ReLU -> conv2 -> BN -> +shortcut -> ReLU`
(ReLU computed once per consumer; same values). The `dmb` variant turns every `block_conv2` unit
into ReLU -> DynamicModulatedConv2d, which reads the activated input as the author's block does.

ResNet-S (the ABN paper) ends in an 8x8 average pool, which is the global average pool for 32 px
inputs; the global pool here also lets smoke runs use 8 px digits.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.response import ResponseModel, finish_variant_model, with_activation
from biasbench.models.variants import Variant


class BasicBlock(nn.Module):
    def __init__(self, variant: Variant, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = variant.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, role="block_conv1")
        self.bn1 = variant.norm(c_out)
        self.conv2 = variant.act_conv2d(c_out, c_out, 3, stride=1, padding=1, role="block_conv2")
        self.bn2 = variant.norm(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                variant.act_conv2d(c_in, c_out, 1, stride=stride, role="shortcut"), variant.norm(c_out)
            )
        else:
            self.shortcut = variant.act(c_in, dims=2)

    def forward(self, z):
        return self.bn2(self.conv2(self.bn1(self.conv1(z)))) + self.shortcut(z)


class ResNetBasic(ResponseModel):
    """Stem, stages of BasicBlocks, head. ARR reads the pooled output of every stage."""

    def __init__(
        self,
        variant: Variant,
        in_channels: int,
        num_classes: int,
        widths: list[int],
        blocks: list[int],
        strides: list[int],
    ):
        super().__init__()
        self.stem = nn.Sequential(
            variant.conv2d(in_channels, widths[0], 3, padding=1), variant.norm(widths[0])
        )
        stages, c_in = [], widths[0]
        for width, n, stride in zip(widths, blocks, strides, strict=True):
            stages.append(
                nn.Sequential(
                    *[
                        BasicBlock(variant, c_in if i == 0 else width, width, stride if i == 0 else 1)
                        for i in range(n)
                    ]
                )
            )
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.head = variant.act_pool_linear(c_in, num_classes)
        self.widths = list(widths)

    def response_layers(self) -> list[nn.Module]:
        return list(self.stages)

    def response_dims(self) -> list[int]:
        return self.widths

    def forward(self, x):
        z = self.stem(x)
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


@register_model("resnet_s")
def resnet_s(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    width: int = 64,
    activation: str | None = "relu",
) -> nn.Module:
    """ABN's ResNet-S: widths w/2w/4w (64/128/256), two blocks per stage, strides 1/2/2."""
    v = with_activation(variant, activation)
    model = ResNetBasic(v, in_channels, num_classes, [width, 2 * width, 4 * width], [2, 2, 2], [1, 2, 2])
    return finish_variant_model(model, v, num_classes)


@register_model("resnet18")
def resnet18(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    width: int = 64,
    activation: str | None = "relu",
) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, no max-pool, widths 64/128/256/512, two blocks per stage."""
    v = with_activation(variant, activation)
    model = ResNetBasic(
        v, in_channels, num_classes, [width, 2 * width, 4 * width, 8 * width], [2, 2, 2, 2], [1, 2, 2, 2]
    )
    return finish_variant_model(model, v, num_classes)
