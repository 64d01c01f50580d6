"""Fused CPU RAA (`raa_cpu.cpp`): shift and activation in one pass, backward from (x, shift).

Built, cached and loaded per instruction set by `biasbench.kernels.build`, exactly like the DAC
kernels (`BIASBENCH_DAC_CPP=0` disables it too; a failed build warns once and callers use the
reference path in `biasbench.layers.raa`).
"""

from __future__ import annotations

import torch

from biasbench.kernels.build import CpuKernel

KERNEL = CpuKernel("raa_cpu.cpp", "biasbench_raa", "RAA")


def available(isa: str | None = None) -> bool:
    """True once the C++ RAA operator for `isa` (default: this CPU's) is loaded."""
    return KERNEL.available(isa)


class _RAACPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gelu, two_d, isa):
        x, weight = x.contiguous(), weight.contiguous()
        y, shift = KERNEL.ops(isa).forward(x, weight, bias, gelu, two_d)
        ctx.save_for_backward(x, shift, weight)  # the input and one shift per vector
        ctx.conf = (gelu, two_d, isa)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, shift, weight = ctx.saved_tensors
        gelu, two_d, isa = ctx.conf
        gx, gw, gb = KERNEL.ops(isa).backward(x, shift, weight, grad.contiguous(), gelu, two_d)
        return gx, gw, gb, None, None, None


def raa(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool, two_d: bool,
        isa: str | None = None) -> torch.Tensor:
    """RAA of x: (N, C, H, W) per pixel over channels (two_d) or (..., C) per row."""
    return _RAACPU.apply(x, weight, bias, gelu, two_d, isa)
