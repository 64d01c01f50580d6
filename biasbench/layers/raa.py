"""DNRT's response-adaptive activation (RAA, spec section 4).

GELU form: `RAA(x) = x * Phi(x + w.x + b)`; ReLU form: `max(0, x + w.x + b)`. The shift `w.x + b`
is ONE scalar per feature vector: per token for a transformer's (..., d) activations, per pixel
over the channels for a CNN's (N, C, H, W) maps (`RAA2d`). w (d) and b start at zero, so at
initialisation RAA is exactly the static activation it replaces.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Form = Literal["gelu", "relu"]
_FORMS = ("gelu", "relu")


def raa(x: torch.Tensor, shift: torch.Tensor, form: Form) -> torch.Tensor:
    """The activation with its response threshold moved by `shift` (broadcast against x)."""
    if form == "gelu":
        # x * Phi(x + s): the erf form of exact GELU (F.gelu(approximate="none")).
        return x * (0.5 * (1.0 + torch.erf((x + shift) * (1.0 / math.sqrt(2.0)))))
    return F.relu(x + shift)


class _RAABase(nn.Module):
    # w is the gate of a threshold, not a connection between units: role "other" (no weight decay
    # by default, like the other 1-d parameters of a ViT; frozen in plain bias-only training).
    param_roles = {"weight": "other", "bias": "bias"}

    def __init__(
        self,
        num_features: int,
        form: Form = "gelu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if form not in _FORMS:
            raise ValueError(f"RAA form must be one of {_FORMS}, got {form!r}")
        self.num_features, self.form = num_features, form
        self.weight = nn.Parameter(torch.empty(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, form={self.form}"


class RAA(_RAABase):
    """RAA over the last dimension: input (..., d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = F.linear(x, self.weight[None, :], self.bias)  # (..., 1)
        return raa(x, shift, self.form)


class RAA2d(_RAABase):
    """RAA per pixel over channels: input (N, C, H, W), one shift per (n, h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 conv to one channel: the same sum over channels, and `count` sees its MACs.
        shift = F.conv2d(x, self.weight.view(1, -1, 1, 1), self.bias)  # (N, 1, H, W)
        return raa(x, shift, self.form)
