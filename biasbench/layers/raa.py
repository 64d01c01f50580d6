"""DNRT's response-adaptive activation (RAA, spec section 4).

GELU form: `RAA(x) = x * Phi(x + w.x + b)`; ReLU form: `max(0, x + w.x + b)`. The shift `w.x + b`
is ONE scalar per feature vector: per token for a transformer's (..., d) activations, per pixel
over the channels for a CNN's (N, C, H, W) maps (`RAA2d`). w (d) and b start at zero, so at
initialisation RAA is exactly the static activation it replaces.

Two implementations compute it: `raa_reference` (the formula in PyTorch operators; autograd keeps
the input, the shift, x + s and erf's output) and the fused C++ kernel on the CPU
(`biasbench/kernels/raa_cpu.cpp`: one pass computes the shift and the activation, backward keeps
only the input and the shift). A module's `impl` attribute picks one: "auto" (the kernel for
float32 / float64 CPU tensors, in float32 under CPU autocast, when it built; the reference
otherwise: on the meta device, where `biasbench count` runs, so it sees the shift's multiply-adds,
and while torch.jit traces),
"cpp" or "reference". See docs/dac_layers.md for speed and memory.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.layers.contract import LayerCost

Form = Literal["gelu", "relu"]
Impl = Literal["auto", "cpp", "reference"]
_FORMS = ("gelu", "relu")


def raa(x: torch.Tensor, shift: torch.Tensor, form: Form) -> torch.Tensor:
    """The activation with its response threshold moved by `shift` (broadcast against x)."""
    if form == "gelu":
        # x * Phi(x + s): the erf form of exact GELU (F.gelu(approximate="none")).
        return x * (0.5 * (1.0 + torch.erf((x + shift) * (1.0 / math.sqrt(2.0)))))
    return F.relu(x + shift)


def raa_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, form: Form,
                  two_d: bool) -> torch.Tensor:
    """RAA in PyTorch operators: the shift as a linear map (a 1x1 conv to one channel for
    (N, C, H, W) maps), then the activation."""
    if two_d:
        shift = F.conv2d(x, weight.view(1, -1, 1, 1), bias)  # (N, 1, H, W)
    else:
        shift = F.linear(x, weight[None, :], bias)  # (..., 1)
    return raa(x, shift, form)


def raa_function(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, form: Form,
                 two_d: bool, impl: Impl = "auto") -> torch.Tensor:
    """RAA through the implementation `impl` names; "cpp" raises where the kernel cannot run."""
    if impl not in ("auto", "cpp", "reference"):
        raise ValueError(f"RAA impl must be auto, cpp or reference, got {impl!r}")
    if impl != "reference" and not torch.jit.is_tracing():
        from biasbench.kernels import raa_cpu
        from biasbench.layers.dac_dispatch import autocast_inputs
        xc, wc, bc = autocast_inputs(x, weight, bias)  # CPU autocast: float32, as for DAC
        fits = x.device.type == "cpu" and xc.dtype in (torch.float32, torch.float64) and wc.dtype == xc.dtype
        if fits and raa_cpu.available():
            return raa_cpu.raa(xc, wc, bc, form == "gelu", two_d)
        if impl == "cpp":
            raise RuntimeError(f"RAA impl 'cpp' cannot run here (device={x.device}, dtype={x.dtype}, "
                               f"kernel built: {raa_cpu.available()})")
    return raa_reference(x, weight, bias, form, two_d)


def _thop_shift(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """thop has no RAA row; the DNRT paper's Table 4 implies this one (+1.82 M for ViT-Tiny, +7.24 M
    for TNT-S): the shift, a dense layer from the d activations to one value, d multiply-adds per
    token (per pixel for RAA2d)."""
    return x.numel()


class _RAABase(nn.Module):
    # w is the gate of a threshold, not a connection between units: role "other" (no weight decay
    # by default, like the other 1-d parameters of a ViT; frozen in plain bias-only training).
    param_roles = {"weight": "other", "bias": "bias"}
    # `count` sees the reference's operators on meta (the shift's multiply-adds); thop: the shift
    cost = LayerCost(thop=_thop_shift)
    impl: Impl = "auto"  # set on an instance to force "cpp" or "reference"

    @classmethod
    def warm_up_kernel(cls, device: torch.device) -> str | None:
        """The fused C++ kernel, on the CPU only (RAA has no CUDA kernel)."""
        return "RAA" if device.type == "cpu" else None

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
        return raa_function(x, self.weight, self.bias, self.form, two_d=False, impl=self.impl)


class RAA2d(_RAABase):
    """RAA per pixel over channels: input (N, C, H, W), one shift per (n, h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return raa_function(x, self.weight, self.bias, self.form, two_d=True, impl=self.impl)
