"""`preact`: pre-activation with *shared* biases, the DAC paper's ablation (Table 3).

Same placement as `dac` (the shared rule: models/preactivation.py), but the pre-activation has one bias per input
channel, `phi(x_c + b_c)`, so the linear operator behind it is a plain one (grouped convs
included). This isolates the effect of pre-activation from that of unsharing the biases.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.models.preactivation import PreActivationVariant
from biasbench.models.variants import VARIANTS, factory_options


@VARIANTS.register("preact")
class SharedBiasPreActVariant(PreActivationVariant):
    name = "preact"
    summary = "pre-activation with one shared bias per input channel (DAC Table 3 ablation)"
    mechanism = (SharedBiasPreActivation,)

    def _pre(self, channels: int, kwargs: dict[str, Any], feature_dim: int) -> nn.Module:
        return SharedBiasPreActivation(channels, activation=self.phi, feature_dim=feature_dim,
                                       **factory_options(kwargs))

    def preactivated_linear(self, in_features: int, out_features: int, bias: bool, feature_dim: int,
                            **kwargs: Any) -> list[nn.Module]:
        return [self._pre(in_features, kwargs, feature_dim), nn.Linear(in_features, out_features, bias=bias, **kwargs)]

    def preactivated_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                            bias: bool, groups: int, **kwargs: Any) -> list[nn.Module]:
        return [self._pre(in_channels, kwargs, feature_dim=1),
                nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                          bias=bias, **kwargs)]
