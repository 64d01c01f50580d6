"""`preact`: pre-activation with *shared* biases, the DAC paper's ablation (Table 3).

Same placement as `dac` (activations move in front of the linear operators, BN loses its shift,
the v1 identity path loses its activation), but the pre-activation has one bias per input
channel, `phi(x_c + b_c)`, so the linear operator behind it is a plain one. This isolates the
effect of pre-activation from that of unsharing the biases.
"""

from __future__ import annotations

from torch import nn

from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.models.variants import VARIANTS, Variant


@VARIANTS.register("preact")
class SharedBiasPreActVariant(Variant):
    name = "preact"
    removes_activation_shift = True

    def _pre(self, channels: int) -> nn.Module:
        return SharedBiasPreActivation(channels, activation=self.activation)

    def act_linear(self, in_features: int, out_features: int, bias: bool = True, role: str | None = None) -> nn.Module:
        return nn.Sequential(self._pre(in_features), nn.Linear(in_features, out_features, bias=bias))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, role: str | None = None) -> nn.Module:
        return nn.Sequential(self._pre(in_channels), nn.Conv2d(in_channels, out_channels, kernel_size,
                                                                stride=stride, padding=padding, bias=bias))

    def act_pool_linear(self, in_channels: int, out_features: int) -> nn.Module:
        # Same placement as the DAC head: GAP, then the pre-activated dense layer.
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), self._pre(in_channels),
                             nn.Linear(in_channels, out_features))
