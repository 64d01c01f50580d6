"""Fused CPU DAC conv (`dac_cpu.cpp`): C++ built on first use, pure-PyTorch fallback otherwise.

Built, cached and loaded per instruction set by `biasbench.kernels.build` (AVX-512 where the CPU
has it, AVX2 elsewhere; `BIASBENCH_CPU_ISA=avx2` forces the 256-bit build, `BIASBENCH_DAC_CPP=0`
disables it). Callers check `available()` and fall back to the chunked path when it is False.
"""

from __future__ import annotations

import torch

from biasbench.kernels.build import CpuKernel

KERNEL = CpuKernel("dac_cpu.cpp", "biasbench_dac", "DAC conv")


def available(isa: str | None = None) -> bool:
    """True once the C++ conv operator for `isa` (default: this CPU's) is loaded."""
    return KERNEL.available(isa)


class _DACConvCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, unshared_bias, stride, padding, isa):
        z, weight, unshared_bias = z.contiguous(), weight.contiguous(), unshared_bias.contiguous()
        ctx.save_for_backward(z, weight, unshared_bias)  # only the inputs: planes are rebuilt
        ctx.conf = (stride, padding, isa)
        return KERNEL.ops(isa).forward(z, weight, unshared_bias, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, weight, unshared_bias = ctx.saved_tensors
        stride, padding, isa = ctx.conf
        gz, gw, gb = KERNEL.ops(isa).backward(z, weight, unshared_bias, grad.contiguous(), stride,
                                              padding)
        return gz, gw, gb, None, None, None


def dac_conv2d(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor, stride: int,
               padding: int, isa: str | None = None) -> torch.Tensor:
    """`isa=None`: this CPU's build (call `available()` first)."""
    return _DACConvCPU.apply(z, weight, unshared_bias, stride, padding, isa)
