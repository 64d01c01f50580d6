"""ABN: dynamic multi-bias modulation (spec section 3, the author's public code).

`DynamicMultiBiasLinear`: `y = W x + softmax(G x + g) @ bank`. The static bias of a dense layer
is replaced by a convex mixture of K bias vectors (`K`, as MBA's K and the author's code name
it), the mixture chosen per sample by a small gate. W has no static bias of its own; `bank`
starts at zero, so at initialisation the layer is a bias-free dense layer whatever the gate says.

`DynamicModulatedConv2d`: `y = Conv(x) * (1 + tanh(m))`, `m = DynamicMultiBiasLinear(GAP(x))`,
computed from the conv's *input*; one factor per output channel and sample. The inner conv keeps
its own bias (that is what makes ResNet-DMB exactly 2,957,794 parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DynamicMultiBiasLinear(nn.Module):
    """Dense layer whose bias is a softmax-gated mixture of `K` learned bias vectors."""

    # `bank` holds biases (no weight decay under `bias_weight_decay: 0`, trainable in bias-only
    # mode); the gate is an ordinary Linear child and gets the default rules.
    param_roles = {"weight": "weight", "bank": "bias"}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        K: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1 or K < 1:
            raise ValueError("in_features, out_features and K must be at least 1")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.K = in_features, out_features, K
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bank = nn.Parameter(torch.empty(K, out_features, **factory))
        self.gate = nn.Linear(in_features, K, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Kaiming-uniform as nn.Linear does it (a = sqrt(5)): the author's layer is a Linear
        # without its bias, so it starts where a Linear would.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.bank)
        self.gate.reset_parameters()

    def mixture(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample gate weights over the bank, (..., K)."""
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.mixture(x) @ self.bank

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, K={self.K}"
        )


class DynamicModulatedConv2d(nn.Module):
    """Conv2d whose output channels are rescaled by `1 + tanh(m(x))`, m read from GAP(input)."""

    param_roles: dict[str, str] = {}  # its parameters are its conv's and its modulator's

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        K: int = 4,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            **factory,
        )
        self.modulator = DynamicMultiBiasLinear(in_channels, out_channels, K, **factory)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.modulator.reset_parameters()

    def modulation(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel factor `1 + tanh(m)`, shape (N, C_out); in (0, 2)."""
        return 1.0 + torch.tanh(self.modulator(x.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.modulation(x)[:, :, None, None]
