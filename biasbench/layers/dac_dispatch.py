"""Pick a DAC implementation for the tensors at hand.

"auto": the fused Triton kernel on CUDA, the fused C++ kernel on CPU when it compiled (strides
1 and 2), the chunked pure-PyTorch path otherwise (any activation, fully unshared biases, other
strides, no compiler, no Triton). DACLinear: the fused C++ kernel for ReLU on CPU float32 /
float64 tensors, the chunked path otherwise (no CUDA kernel for it).
Asking for "cpp" / "triton" explicitly raises if that kernel cannot serve the call, so a test
or benchmark never silently measures the fallback.

Under autocast the fused kernels get what autocast gives a convolution: on CUDA all three
tensors in the autocast dtype (the Triton kernel accumulates in float32), on the CPU float32,
since the C++ kernels have no bfloat16 path (the chunked path is autocast like any PyTorch code).
"""

from __future__ import annotations

import torch

from biasbench.kernels.build import selected_isa
from biasbench.layers.dac_activation import ActivationFn
from biasbench.layers.dac_functional import dac_conv2d_chunked, dac_linear_chunked

_CPP_DTYPES = (torch.float32, torch.float64)


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as a fused kernel takes them under autocast (module docstring); unchanged
    outside autocast."""
    device = tensors[0].device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device) if device == "cuda" else torch.float32
    return tuple(t.to(dtype) for t in tensors)


def _fast_conv(impl: str, z: torch.Tensor, b: torch.Tensor, relu: bool, stride: int):
    """The fused conv kernel module to use, or None for the chunked path."""
    eligible = relu and b.dim() == 2  # the kernels implement ReLU with (out, in) biases
    if impl == "chunked":
        return None
    if impl in ("auto", "triton") and z.is_cuda:
        from biasbench.kernels import dac_triton
        if eligible and dac_triton.available():
            return dac_triton
    if impl in ("auto", "cpp") and z.device.type == "cpu":
        from biasbench.kernels import dac_cpu
        if eligible and stride in (1, 2) and autocast_inputs(z)[0].dtype in _CPP_DTYPES and dac_cpu.available():
            return dac_cpu
    if impl == "auto":
        return None
    raise RuntimeError(f"DAC impl {impl!r} cannot run here (device={z.device}, relu={relu}, "
                       f"bias shape={tuple(b.shape)})")


def dac_conv2d(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor, stride: int,
               padding: int, phi: ActivationFn, *, relu: bool, impl: str = "auto") -> torch.Tensor:
    kernel = _fast_conv(impl, z, unshared_bias, relu, stride)
    if kernel is None:
        return dac_conv2d_chunked(z, weight, unshared_bias, stride, padding, phi)
    return kernel.dac_conv2d(*autocast_inputs(z, weight, unshared_bias), stride, padding)


def _fast_linear(impl: str, z: torch.Tensor, relu: bool, isa: str | None):
    """The fused linear kernel module to use, or None for the chunked path."""
    if impl == "triton":
        raise RuntimeError("DACLinear has no 'triton' kernel; use 'auto', 'cpp' or 'chunked'")
    if impl == "chunked":
        return None
    if impl in ("auto", "cpp") and z.device.type == "cpu":
        from biasbench.kernels import dac_linear_cpu
        # (CPU autocast hands the kernel float32: autocast_inputs)
        float_ok = z.dtype in _CPP_DTYPES or torch.is_autocast_enabled("cpu")
        if relu and float_ok and dac_linear_cpu.available(isa):
            return dac_linear_cpu
    if impl == "auto":
        return None
    raise RuntimeError(f"DACLinear impl {impl!r} cannot run here (device={z.device}, relu={relu}, "
                       f"dtype={z.dtype})")


def dac_linear(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
               phi: ActivationFn, *, relu: bool, impl: str = "auto",
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """z is (N, in); callers flatten leading dimensions. `bias`: the output bias (the fused
    kernel adds it inside its autograd node)."""
    isa = selected_isa() if z.device.type == "cpu" else None  # once per call: layers call this every step
    kernel = _fast_linear(impl, z, relu, isa)
    if kernel is None:
        out = dac_linear_chunked(z, weight, unshared_bias, phi)
        return out if bias is None else out + bias
    return kernel.dac_linear(*autocast_inputs(z, weight, unshared_bias), isa=isa, bias=bias)
