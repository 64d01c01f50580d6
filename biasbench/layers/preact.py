"""Shared-bias pre-activation, the DAC paper's ablation: phi(x + b_c), one bias per channel.

Placed where a DAC layer would pre-activate its input, followed by a plain linear operator;
b starts at zero, so it starts as a plain activation. The channels are dimension 1 of (N, C)
or (N, C, H, W) (`feature_dim=1`), or the last dimension of (..., C) (`feature_dim=-1`: a
transformer's tokens, the input of a dense layer).
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.layers.contract import LayerCost, counted_operator
from biasbench.layers.dac_activation import ActivationFn, resolve_activation


def _cost(args, out):
    """One addition per element; phi is not counted."""
    return out.numel(), 0


_OPERATOR = counted_operator("shared_bias_preact(Tensor x) -> Tensor", lambda x: x.clone(), lambda m, x: (x,),
                             {"dac-paper": _cost})


class SharedBiasPreActivation(nn.Module):
    param_roles = {"bias": "bias"}
    cost = LayerCost(_OPERATOR)  # one addition per element

    def __init__(self, channels: int, activation: str | ActivationFn = "relu", *, feature_dim: int = 1,
                 device=None, dtype=None) -> None:
        super().__init__()
        if feature_dim not in (1, -1):
            raise ValueError(f"feature_dim must be 1 (maps) or -1 (vectors), got {feature_dim}")
        self.channels, self.feature_dim = channels, feature_dim
        self.activation_name, self.phi = resolve_activation(activation)
        self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_dim == -1:
            if x.shape[-1] != self.channels:
                raise ValueError(f"expected (..., {self.channels}), got {tuple(x.shape)}")
            return self.phi(x + self.bias)
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}) or (N, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        return self.phi(x + self.bias.view(1, -1, *(1,) * (x.dim() - 2)))

    def extra_repr(self) -> str:
        dim = "" if self.feature_dim == 1 else ", feature_dim=-1"
        return f"{self.channels}, activation={self.activation_name}{dim}"
