"""Fused CPU dense DAC layer (ReLU, `dac_linear_cpu.cpp`): built, cached, disabled and fallen
back from exactly like the conv kernel (`biasbench.kernels.build`). Its autograd node is C++."""

from __future__ import annotations

import torch

from biasbench.kernels.build import CpuKernel

KERNEL = CpuKernel("dac_linear_cpu.cpp", "biasbench_dac_linear", "DAC linear")


def available(isa: str | None = None) -> bool:
    """True once the C++ linear operator for `isa` (default: this CPU's) is loaded."""
    return KERNEL.available(isa)


def dac_linear(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
               isa: str | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """z is (N, in); callers flatten leading dimensions. `isa=None`: this CPU's build; `bias`:
    the layer's output bias. One operator whose autograd node (`DACLinearNode`) is C++
    (dac_linear_cpu.cpp): a Python node, a separate bias add and their dispatch cost as much as
    the kernels' gap to the plain layer at the SGEMM widths."""
    return KERNEL.ops(isa).layer(z, weight, unshared_bias, bias)
