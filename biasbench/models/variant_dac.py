"""`dac`: pre-activation with unshared biases (DAC paper; spec section 1).

Every "activation followed by linear operator" unit becomes a DAC layer (the activation moves
inside, with one bias per (output, input) pair); BN that fed the activation loses its shift and
an activation with no linear operator behind it disappears (the rule `dac` shares with `preact`:
models/preactivation.py). Stems stay
plain: they read raw pixels. The head `activation -> GAP -> dense` becomes `GAP -> DAC dense`:
pooling is linear, so the dense layer after it is where the pre-activation sits (our choice;
spec section 1, "the final dense layer after global average pooling").

Grouped convs get a DAC conv per group (`GroupedDACConv2d`). A depthwise conv (one input and
one output channel per group) is where, in the paper's words (section 4), "the standard shared
biases are effectively unshared ... DAC reduces to a standard connection": its DAC form is
`phi(z_c + b_c)` then the plain depthwise conv, built as exactly that (one bias per channel, the
same function and parameter count as the DAC formula with B of shape (C, 1)).

Options: `bias_sharing` ("kernel", the paper's partially shared conv biases, or "none"),
`activation` (phi, element-wise; ReLU in every experiment of the paper and the only one the
fused kernels implement: others run the pure-PyTorch path).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.layers.grouped_dac import GroupedDACConv2d
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.models.preactivation import PreActivationVariant
from biasbench.models.variants import VARIANTS, factory_options


def _layer_options(kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """DAC layers take device / dtype; any other layer option (dilation, ...) is refused."""
    other = sorted(set(kwargs) - set(factory_options(kwargs)))
    if other:
        raise ValueError(f"{what} takes no {', '.join(other)}")
    return kwargs


@VARIANTS.register("dac")
class DACVariant(PreActivationVariant):
    name = "dac"
    summary = "pre-activation with unshared biases, one per (output, input) pair (DAC)"
    mechanism = (DACConv2d, DACLinear, GroupedDACConv2d, SharedBiasPreActivation)  # the last: depthwise
    # DAC dense layers carry one bias per weight; the paper's MLP twin narrows widths by about
    # sqrt(2) so that weights halve and the total stays at the baseline's count.
    dense_width_factor = 1 / math.sqrt(2)

    def __init__(self, activation: str | None = None, bias_sharing: str = "kernel"):
        super().__init__(activation=activation)
        if bias_sharing not in ("kernel", "none"):
            raise UserError(f"variant `dac`: bias_sharing must be `kernel` or `none`, got {bias_sharing!r}")
        self.bias_sharing = bias_sharing

    def preactivated_linear(self, in_features: int, out_features: int, bias: bool, feature_dim: int,
                            **kwargs: Any) -> list[nn.Module]:
        return [DACLinear(in_features, out_features, bias=bias, activation=self.phi,
                          **_layer_options(kwargs, "DACLinear"))]

    def preactivated_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                            bias: bool, groups: int, **kwargs: Any) -> list[nn.Module]:
        options = _layer_options(kwargs, "a DAC conv")
        depthwise = groups == in_channels == out_channels
        if depthwise and self.bias_sharing == "kernel":  # DAC reduces to a standard connection
            return [SharedBiasPreActivation(in_channels, activation=self.phi, **options),  # phi(z_c + b_c)
                    nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                              bias=bias, **options)]
        layer = dict(bias_sharing=self.bias_sharing, activation=self.phi, bias=bias, **options)
        if groups > 1:
            return [GroupedDACConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, **layer)]
        return [DACConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, **layer)]
