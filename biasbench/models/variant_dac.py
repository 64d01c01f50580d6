"""`dac`: pre-activation with unshared biases (DAC paper; spec section 1).

Every "activation followed by linear operator" unit becomes a DAC layer (the activation moves
inside, with one bias per (output, input) pair); BN that fed the activation loses its shift and
an activation with no linear operator behind it disappears (both from `Variant`). Stems stay
plain: they read raw pixels. The head `activation -> GAP -> dense` becomes `GAP -> DAC dense`:
pooling is linear, so the dense layer after it is where the pre-activation sits (our choice;
spec section 1, "the final dense layer after global average pooling").

Options: `bias_sharing` ("kernel", the paper's partially shared conv biases, or "none"),
`activation` (phi; ReLU in every experiment of the paper).
"""

from __future__ import annotations

import math

from torch import nn

from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.models.variants import VARIANTS, Variant


@VARIANTS.register("dac")
class DACVariant(Variant):
    name = "dac"
    removes_activation_shift = True
    # DAC dense layers carry one bias per weight; the paper's MLP twin narrows widths by about
    # sqrt(2) so that weights halve and the total stays at the baseline's count.
    dense_width_factor = 1 / math.sqrt(2)

    def __init__(self, activation: str = "relu", bias_sharing: str = "kernel"):
        super().__init__(activation=activation)
        if bias_sharing not in ("kernel", "none"):
            raise UserError(f"variant `dac`: bias_sharing must be `kernel` or `none`, got {bias_sharing!r}")
        self.bias_sharing = bias_sharing

    def act_linear(self, in_features: int, out_features: int, bias: bool = True, role: str | None = None) -> nn.Module:
        return DACLinear(in_features, out_features, bias=bias, activation=self.activation)

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, role: str | None = None) -> nn.Module:
        return DACConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias_sharing=self.bias_sharing, activation=self.activation, bias=bias)

    def act_pool_linear(self, in_channels: int, out_features: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             DACLinear(in_channels, out_features, activation=self.activation))
