"""Fused CPU dense DAC layer (ReLU): C++ compiled on first use, chunked fallback when that fails.

The source is `dac_linear_cpu.cpp` next to this file; it is built, cached and disabled exactly
like the conv kernel (`dac_cpu.py`: same cache directory, build key, flags,
`BIASBENCH_DAC_CPP=0`, one warning and `available()` False on any build failure).
"""

from __future__ import annotations

from pathlib import Path

import torch

from biasbench.kernels.dac_cpu import build_source, load_once

_SOURCE = Path(__file__).with_name("dac_linear_cpu.cpp")
_state: dict[str, object] = {}


def _build() -> None:
    build_source(_SOURCE, "biasbench_dac_linear_cpu_")


def available() -> bool:
    """True once the C++ linear operator is loaded; compiles it on the first call."""
    return load_once(_state, lambda: _build(), "biasbench_dac_linear", "DAC linear")


class _DACLinearCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, unshared_bias):
        z, weight, unshared_bias = z.contiguous(), weight.contiguous(), unshared_bias.contiguous()
        ctx.save_for_backward(z, weight, unshared_bias)  # only the inputs
        return torch.ops.biasbench_dac_linear.forward(z, weight, unshared_bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, weight, unshared_bias = ctx.saved_tensors
        gz, gw, gb = torch.ops.biasbench_dac_linear.backward(z, weight, unshared_bias,
                                                              grad.contiguous())
        return gz, gw, gb


def dac_linear(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor) -> torch.Tensor:
    """z is (N, in); callers flatten leading dimensions."""
    return _DACLinearCPU.apply(z, weight, unshared_bias)
