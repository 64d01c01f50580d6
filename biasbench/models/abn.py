"""The `dmb` variant: ABN's ResNet-DMB (spec section 3).

Every residual block's *second* conv becomes `DynamicModulatedConv2d(planes, planes, 3, K)`,
reading the activated input as in the author's block; every other unit stays the baseline's.
Models mark that conv with `role="block_conv2"` (resnet_s, resnet18 here; the CIFAR ResNets of
the DAC issue do the same), so `dmb` applies to all of them.
"""

from __future__ import annotations

from torch import nn

from biasbench.layers.abn import DynamicModulatedConv2d
from biasbench.models.variants import VARIANTS, Variant


@VARIANTS.register("dmb")
class DMBVariant(Variant):
    name = "dmb"

    def __init__(self, activation: str = "relu", num_biases: int = 4):
        super().__init__(activation)
        if num_biases < 1:
            raise ValueError(f"num_biases must be at least 1, got {num_biases}")
        self.num_biases = num_biases

    def act_conv2d(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        role: str | None = None,
    ) -> nn.Module:
        if role != "block_conv2":
            return super().act_conv2d(in_channels, out_channels, kernel_size, stride, padding, bias, role)
        # The author's layer keeps its conv bias whatever the baseline conv had (bias=True).
        return nn.Sequential(
            self.act(in_channels, dims=2),
            DynamicModulatedConv2d(
                in_channels, out_channels, kernel_size, self.num_biases, stride=stride, padding=padding
            ),
        )
