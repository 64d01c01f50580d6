"""`preact`: pre-activation with *shared* biases, the DAC paper's ablation (Table 3).

Same placement as `dac` (activations move in front of the linear operators, BN loses its shift,
the v1 identity path loses its activation), but the pre-activation has one bias per input
channel, `phi(x_c + b_c)`, so the linear operator behind it is a plain one (grouped convs
included). This isolates the effect of pre-activation from that of unsharing the biases.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.layers.activations import ELEMENTWISE, activation
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.models.variants import VARIANTS, Variant, factory_options


@VARIANTS.register("preact")
class SharedBiasPreActVariant(Variant):
    name = "preact"
    summary = "pre-activation with one shared bias per input channel (DAC Table 3 ablation)"
    requires = frozenset({"act_linear"})
    activations = ELEMENTWISE
    activation_rule = "pre-activates each input with an element-wise phi (GDN mixes channels)"
    mechanism = (SharedBiasPreActivation,)
    removes_activation_shift = True

    def _pre(self, channels: int, kwargs: dict[str, Any], feature_dim: int = 1) -> nn.Module:
        return SharedBiasPreActivation(channels, activation=activation(self.activation or "relu").elementwise,
                                       feature_dim=feature_dim, **factory_options(kwargs))

    def act_linear(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
                   stage: int | None = None, **kwargs: Any) -> nn.Module:
        return nn.Sequential(self._pre(in_features, kwargs, feature_dim=-1),
                             nn.Linear(in_features, out_features, bias=bias, **kwargs))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
                   stage: int | None = None, **kwargs: Any) -> nn.Module:
        return nn.Sequential(self._pre(in_channels, kwargs),
                             nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                       groups=groups, bias=bias, **kwargs))

    def act_pool_linear(self, in_channels: int, out_features: int, *, stage: int | None = None,
                        **kwargs: Any) -> nn.Module:
        # Same placement as the DAC head: GAP, then the pre-activated dense layer.
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), self._pre(in_channels, kwargs),
                             nn.Linear(in_channels, out_features, **kwargs))
