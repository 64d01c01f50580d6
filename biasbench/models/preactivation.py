"""The pre-activation rule `dac` and `preact` share (DAC paper, section 1 and Table 3).

Every activation that feeds a linear operator moves into that operator as a pre-activation
`phi(z + b)` with biases of its own; the norm or linear bias that fed it loses its shift
(`removes_activation_shift`: BN -> BN', `keeps_bias`), the ResNet v1 identity path loses its
activation (`backbone_act`), and the classifier head pre-activates after the global average
pool. A variant on this base says only what a pre-activated operator is (`preactivated_linear`,
`preactivated_conv2d`): `dac` unshares the biases per (output, input) pair, `preact` keeps one per
input channel. Not registered: it is a base, not a variant.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.layers.activations import ELEMENTWISE, activation
from biasbench.models.variants import Variant


class PreActivationVariant(Variant):
    requires = frozenset({"act_linear"})
    activations = ELEMENTWISE
    activation_rule = "pre-activates each input with an element-wise phi (GDN mixes channels)"
    removes_activation_shift = True

    @property
    def phi(self):
        """The element-wise activation the pre-activations apply."""
        return activation(self.activation or "relu").elementwise

    # -- what a subclass builds: the parts of one pre-activated operator, in order ----------------
    def preactivated_linear(self, in_features: int, out_features: int, bias: bool, feature_dim: int,
                            **kwargs: Any) -> list[nn.Module]:
        """`phi(z + b)` then a dense layer; `feature_dim` where the input's features are (-1: (..., d),
        1: the head's pooled (N, C))."""
        raise NotImplementedError

    def preactivated_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                            bias: bool, groups: int, **kwargs: Any) -> list[nn.Module]:
        raise NotImplementedError

    # -- the units ---------------------------------------------------------------------------------
    def act_linear(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return _one(self.preactivated_linear(in_features, out_features, self.keeps_bias(bias, feeds_activation),
                                             feature_dim=-1, **kwargs))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return _one(self.preactivated_conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                             self.keeps_bias(bias, feeds_activation), groups, **kwargs))

    def act_pool_linear(self, in_channels: int, out_features: int, *, stage: int | None = None,
                        bias: bool = True, **kwargs: Any) -> nn.Module:
        # GAP first, then the pre-activated dense layer: the activation moves in front of the
        # operator, past the pool
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             *self.preactivated_linear(in_channels, out_features, bias, feature_dim=1, **kwargs))


def _one(parts: list[nn.Module]) -> nn.Module:
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
