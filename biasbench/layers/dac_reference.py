"""Slow, obviously-correct DAC references written straight from the formulas (tests only).

    dense: f[n,i]   = sum_j W[i,j] phi(B[i,j] + z[n,j])
    conv:  f[n,i,p] = sum_j sum_(a,b) W[i,j,a,b] phi(B[i,j(,a,b)] + zpad[n,j,p*s+(a,b)])
           where zpad's padded positions contribute 0 (padding after the activation).

Loops over output positions and kernel taps; differentiable by plain autograd.
"""

from __future__ import annotations

import torch

from biasbench.layers.dac_activation import ActivationFn


def dac_linear_reference(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
                         phi: ActivationFn = torch.relu) -> torch.Tensor:
    # (N, 1, in) + (out, in) -> (N, out, in): one activated copy of z per output unit.
    return (weight * phi(z[:, None, :] + unshared_bias)).sum(-1)


def dac_conv2d_reference(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
                         stride: int = 1, padding: int = 0,
                         phi: ActivationFn = torch.relu) -> torch.Tensor:
    n, c, h, w = z.shape
    out_c, _, k, _ = weight.shape
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    bias = unshared_bias if unshared_bias.dim() == 4 else unshared_bias[:, :, None, None].expand(-1, -1, k, k)
    out = z.new_zeros(n, out_c, ho, wo)
    for a in range(k):
        for b in range(k):
            for y in range(ho):
                for x in range(wo):
                    iy, ix = y * stride + a - padding, x * stride + b - padding
                    if not (0 <= iy < h and 0 <= ix < w):
                        continue  # a padded input position: contributes exactly 0
                    zj = z[:, :, iy, ix]  # (N, in)
                    act = phi(zj[:, None, :] + bias[None, :, :, a, b])  # (N, out, in)
                    out[:, :, y, x] = out[:, :, y, x] + (act * weight[None, :, :, a, b]).sum(-1)
    return out
