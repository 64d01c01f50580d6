"""Fused CPU dense DAC layer (ReLU, `dac_linear_cpu.cpp`): built, cached, disabled and fallen
back from exactly like the conv kernel (`biasbench.kernels.build`)."""

from __future__ import annotations

import torch

from biasbench.kernels.build import CpuKernel

KERNEL = CpuKernel("dac_linear_cpu.cpp", "biasbench_dac_linear", "DAC linear")


def available(isa: str | None = None) -> bool:
    """True once the C++ linear operator for `isa` (default: this CPU's) is loaded."""
    return KERNEL.available(isa)


class _DACLinearCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, unshared_bias, isa):
        z, weight, unshared_bias = z.contiguous(), weight.contiguous(), unshared_bias.contiguous()
        ctx.save_for_backward(z, weight, unshared_bias)  # only the inputs
        ctx.isa = isa
        return KERNEL.ops(isa).forward(z, weight, unshared_bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, weight, unshared_bias = ctx.saved_tensors
        gz, gw, gb = KERNEL.ops(ctx.isa).backward(z, weight, unshared_bias, grad.contiguous())
        return gz, gw, gb, None


def dac_linear(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
               isa: str | None = None) -> torch.Tensor:
    """z is (N, in); callers flatten leading dimensions. `isa=None`: this CPU's build."""
    return _DACLinearCPU.apply(z, weight, unshared_bias, isa)
