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
inputs; the global pool here also lets smoke runs use 8 px digits. Units pass the stage of the
features their activation reads (the stem's are stage 1); ARR taps every stage's output.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps, pooled
from biasbench.models.variants import Variant


class BasicBlock(nn.Module):
    def __init__(self, variant: Variant, c_in: int, c_out: int, stride: int, stages: tuple[int, int] = (1, 1)):
        super().__init__()
        s_in, s = stages  # the stage of the block's input, its own
        self.conv1 = variant.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, role="block_conv1", stage=s_in)
        self.bn1 = variant.norm(c_out)
        self.conv2 = variant.act_conv2d(c_out, c_out, 3, stride=1, padding=1, role="block_conv2", stage=s)
        self.bn2 = variant.norm(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                variant.act_conv2d(c_in, c_out, 1, stride=stride, role="shortcut", stage=s_in), variant.norm(c_out)
            )
        else:
            self.shortcut = variant.act(c_in, dims=2)

    def forward(self, z):
        return self.bn2(self.conv2(self.bn1(self.conv1(z)))) + self.shortcut(z)


class ResNetBasic(nn.Module):
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
        for s, (width, n, stride) in enumerate(zip(widths, blocks, strides, strict=True), start=1):
            first = BasicBlock(variant, c_in, width, stride, (max(s - 1, 1), s))
            stages.append(nn.Sequential(first, *[BasicBlock(variant, width, width, 1, (s, s)) for _ in range(n - 1)]))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.head = variant.act_pool_linear(c_in, num_classes, stage=len(widths))
        self.widths = list(widths)

    def response_taps(self) -> Taps:
        return Taps(list(self.stages), self.widths, pooled)

    def forward(self, x):
        z = self.stem(x)
        for stage in self.stages:
            z = stage(z)
        return self.head(z)


_RESNET = dict(inputs="images", taps=ResNetBasic.response_taps, tiny_options={"width": 4},
               offers=("activations", "act_linear", "residual_blocks", "stages", "response_taps"))


@register_model("resnet_s", summary="ABN's ResNet-S: 3 stages of 2 basic blocks, widths 64/128/256", **_RESNET)
def resnet_s(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             width: int = 64) -> nn.Module:
    """ABN's ResNet-S: widths w/2w/4w (64/128/256), two blocks per stage, strides 1/2/2."""
    return ResNetBasic(variant, in_channels, num_classes, [width, 2 * width, 4 * width], [2, 2, 2], [1, 2, 2])


@register_model("resnet18", summary="CIFAR ResNet-18 (3x3 stem, no max-pool), widths 64-512, DNRT's", **_RESNET)
def resnet18(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             width: int = 64) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem, no max-pool, widths 64/128/256/512, two blocks per stage."""
    widths = [width, 2 * width, 4 * width, 8 * width]
    return ResNetBasic(variant, in_channels, num_classes, widths, [2, 2, 2, 2], [1, 2, 2, 2])
