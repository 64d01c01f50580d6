"""DAC layers: linear operators whose inputs are pre-activated with unshared biases.

    dense: f_i(z)   = sum_j W[i,j] phi(B[i,j] + z_j)                       (+ bias_i)
    conv:  f[i, p]  = sum_j sum_(a,b) W[i,j,a,b] phi(B[i,j] + z[j, p+(a,b)])  (+ bias_i)

One pre-activation bias per (output, input) pair (per weight for a dense layer; per kernel for
a conv, or per weight with `bias_sharing="none"`). B starts at zero, so a fresh DAC layer equals
phi followed by the plain layer. Zero padding is applied after the activation (spec section 1,
our choice): padded positions contribute 0, not phi(B).

`impl` picks the implementation: "auto" (fastest available for the tensors at hand), "chunked"
(pure PyTorch, always available), "cpp" (fused CPU kernel), "triton" (fused CUDA kernel).
See docs/dac_layers.md.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.layers.contract import LayerCost, bias_additions, counted_operator, touched_positions
from biasbench.layers.dac_activation import ActivationFn, is_relu, resolve_activation
from biasbench.layers.dac_dispatch import dac_conv2d, dac_linear

Impl = Literal["auto", "chunked", "cpp", "triton"]


def _square(value: int | tuple[int, int], what: str) -> int:
    if isinstance(value, int):
        return value
    a, b = value
    if a != b:
        raise ValueError(f"DACConv2d supports square {what} only, got {value}")
    return a


# -- cost (`biasbench count`, docs/dac.md) ----------------------------------------------------------
def _conv_cost(args, out):
    """2 per multiply-add, + a layer bias, + the pre-activation additions: with kernel-shared biases
    cached once per (output, input, input position a tap reads), the paper's m*n*s*t; fully
    unshared biases cannot be cached: one addition per multiply-add."""
    x, w, bias, stride, padding, cached = args
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    macs = out.numel() * c_in * k * k
    if cached:
        adds = n * c_out * c_in * touched_positions(h, k, stride, padding) * touched_positions(wd, k, stride, padding)
    else:
        adds = macs
    return 2 * macs + bias_additions(bias, out) + adds, macs


def _conv_cost_at_outputs(args, out):
    """`dac-formula`: the DAC paper's formula read literally, `m n s t` cached additions with s x t
    the output grid."""
    x, w, bias, stride, padding, cached = args
    if not cached:
        return _conv_cost(args, out)
    macs = out.numel() * x.shape[1] * w.shape[2] * w.shape[3]
    adds = out.shape[0] * w.shape[0] * x.shape[1] * out.shape[2] * out.shape[3]
    return 2 * macs + bias_additions(bias, out) + adds, macs


def _dense_cost(args, out):
    """3 per multiply-add: 2, + the bias addition in front of each weight; + a layer bias."""
    macs = out.numel() * args[1].shape[1]
    return 2 * macs + bias_additions(args[2], out) + macs, macs


def reset_like_torch(weight: nn.Parameter, unshared_bias: nn.Parameter, bias: nn.Parameter | None,
                     fan_in: int) -> None:
    """nn.Linear's / nn.Conv2d's weight and output-bias init (in their order: the same random
    numbers for a seed); B = 0, so a DAC layer starts as phi followed by the plain layer."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    nn.init.zeros_(unshared_bias)
    if bias is not None:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


_CONV_OPERATOR = counted_operator(
    "dac_conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, bool cached) -> Tensor",
    lambda x, w, b, s, p, cached: F.conv2d(x, w, b, s, p),
    lambda m, x: (x, m.weight, m.bias, m.stride, m.padding, m.unshared_bias.dim() == 2),
    {"dac-paper": _conv_cost, "dac-formula": _conv_cost_at_outputs})
_DENSE_OPERATOR = counted_operator(
    "dac_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
    lambda x, w, b: F.linear(x, w, b),
    lambda m, x: (x, m.weight, m.bias),
    {"dac-paper": _dense_cost})


class _FusedKernel:
    """DAC layers build their fused kernel (Triton on CUDA, C++ on the CPU) on their first call."""

    @classmethod
    def warm_up_kernel(cls, device: torch.device) -> str | None:
        return "DAC"


class DACLinear(_FusedKernel, nn.Module):
    """Dense layer with one pre-activation bias per weight (DAC paper, eq. 4)."""

    param_roles = {"weight": "weight", "unshared_bias": "bias", "bias": "bias"}
    cost = LayerCost(_DENSE_OPERATOR)  # 3 FLOPs per multiply-add (+ the bias in front of each weight)

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 activation: str | ActivationFn = "relu", impl: Impl = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.activation_name, self.phi = resolve_activation(activation)
        self.activation = activation
        self.relu = is_relu(activation)  # (the fused kernel's condition, once: forward runs every step)
        self.impl: Impl = impl
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.unshared_bias = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_like_torch(self.weight, self.unshared_bias, self.bias, fan_in=self.in_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z if z.dim() == 2 else z.reshape(-1, self.in_features)
        out = dac_linear(flat, self.weight, self.unshared_bias, self.phi, relu=self.relu, impl=self.impl,
                         bias=self.bias)
        return out if z.dim() == 2 else out.reshape(*z.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation_name}, impl={self.impl}")


class DACConv2d(_FusedKernel, nn.Module):
    """2-d convolution with pre-activation biases per (output, input) channel (DAC eq. 5).

    bias_sharing="kernel": B is (out, in), shared over kernel positions (the paper's choice).
    bias_sharing="none":   B is (out, in, k, k), one bias per weight.
    """

    param_roles = {"weight": "weight", "unshared_bias": "bias", "bias": "bias"}
    cost = LayerCost(_CONV_OPERATOR)  # 2 per multiply-add + the cached pre-activation additions

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *,
                 bias_sharing: Literal["kernel", "none"] = "kernel",
                 activation: str | ActivationFn = "relu", bias: bool = False, impl: Impl = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        if bias_sharing not in ("kernel", "none"):
            raise ValueError(f"bias_sharing must be 'kernel' or 'none', got {bias_sharing!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _square(kernel_size, "kernels")
        self.stride = _square(stride, "strides")
        self.padding = _square(padding, "padding")
        self.bias_sharing = bias_sharing
        self.activation_name, self.phi = resolve_activation(activation)
        self.activation = activation
        self.impl: Impl = impl
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k, **factory))
        b_shape = (out_channels, in_channels) + ((k, k) if bias_sharing == "none" else ())
        self.unshared_bias = nn.Parameter(torch.empty(b_shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_like_torch(self.weight, self.unshared_bias, self.bias, fan_in=self.in_channels * self.kernel_size**2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = dac_conv2d(z, self.weight, self.unshared_bias, self.stride, self.padding, self.phi,
                         relu=is_relu(self.activation), impl=self.impl)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias_sharing={self.bias_sharing}, "
                f"activation={self.activation_name}, bias={self.bias is not None}, impl={self.impl}")
