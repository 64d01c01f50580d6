"""`mba`: multi-bias activation (Li, Ouyang, Wang 2016; spec section 2), the DAC paper's rival.

Every activation that feeds a linear operator becomes K shifted ReLUs, `ReLU(x_c + b[k, c])`,
concatenated, so the linear operator behind it reads K*C channels: its weights and MACs grow
K-fold. Norms and the ResNet v1 identity path keep the baseline's form (MBA changes what the
linear operators read, not where the activations are).

Options (`model.variant_options`): `K` (2, 4 or 8 in the DAC paper; default 4), `pre_relu`
(the authors' released network applies a ReLU before adding the biases; default off, the
paper's formula) and `init` ("zeros", or K floats such as [1, 0.5, -0.5, -1], the authors'
per-k constants).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.errors import UserError
from biasbench.layers.mba import MultiBiasActivation
from biasbench.models.variants import VARIANTS, Variant


@VARIANTS.register("mba")
class MultiBiasVariant(Variant):
    name = "mba"

    def __init__(self, activation: str = "relu", K: int = 4, pre_relu: bool = False, init: Any = "zeros"):
        super().__init__(activation=activation)
        if activation != "relu":
            raise UserError("variant `mba` is defined with ReLU only (activation: relu)")
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise UserError(f"variant `mba`: K must be a positive integer, got {K!r}")
        if init != "zeros" and (not isinstance(init, (list, tuple)) or len(init) != K):
            raise UserError(f"variant `mba`: init must be `zeros` or a list of K={K} numbers, got {init!r}")
        self.K, self.pre_relu, self.init = K, bool(pre_relu), init

    def _mba(self, channels: int) -> MultiBiasActivation:
        return MultiBiasActivation(channels, self.K, pre_relu=self.pre_relu, init=self.init)

    def act_linear(self, in_features: int, out_features: int, bias: bool = True, role: str | None = None) -> nn.Module:
        return nn.Sequential(self._mba(in_features), nn.Linear(self.K * in_features, out_features, bias=bias))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, role: str | None = None) -> nn.Module:
        return nn.Sequential(self._mba(in_channels), nn.Conv2d(self.K * in_channels, out_channels, kernel_size,
                                                                stride=stride, padding=padding, bias=bias))

    def act_pool_linear(self, in_channels: int, out_features: int) -> nn.Module:
        return nn.Sequential(self._mba(in_channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(self.K * in_channels, out_features))
