"""The `dmb` variant: ABN's ResNet-DMB (spec section 3).

Every residual block's *second* conv becomes `DynamicModulatedConv2d(planes, planes, 3, K)`,
reading the activated input as in the author's block; every other unit stays the baseline's.
Models mark that conv with `role="block_conv2"` and declare the `residual_blocks` capability
(resnet_s, resnet18 and the CIFAR ResNets of the DAC issue); on other models `dmb` is refused.
Option `K`: the number of biases in the modulator's bank (4, the author's; `num_biases` was the
old name, the same idea as MBA's K).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from torch import nn

from biasbench.layers.abn import DynamicModulatedConv2d
from biasbench.models.variants import VARIANTS, Variant


@VARIANTS.register("dmb")
class DMBVariant(Variant):
    name = "dmb"
    summary = "residual blocks' second conv rescaled per sample by a bias mixture (ABN)"
    requires = frozenset({"residual_blocks"})
    mechanism = (DynamicModulatedConv2d,)
    renamed_options = MappingProxyType({"num_biases": "K"})

    def __init__(self, activation: str | None = None, K: int = 4):
        super().__init__(activation)
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be a positive integer, got {K!r}")
        self.K = K

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        if role != "block_conv2":
            return super().act_conv2d(in_channels, out_channels, kernel_size, stride, padding, bias, groups=groups,
                                      role=role, stage=stage, feeds_activation=feeds_activation, **kwargs)
        # The author's layer keeps its conv bias whatever the baseline conv had (bias=True).
        return nn.Sequential(
            self.act(in_channels, dims=2),
            DynamicModulatedConv2d(in_channels, out_channels, kernel_size, self.K, stride=stride, padding=padding,
                                   groups=groups, **kwargs),
        )
