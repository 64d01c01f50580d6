"""GDN: generalised divisive normalisation (Ballé, Laparra, Simoncelli, ICLR 2016).

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)

over the feature vector at each position: the channels of a (N, C, H, W) map (`feature_dim=1`)
or the last dimension of (..., d) (`feature_dim=-1`). DNRT compares it with the other
activations in its Tables 1-2. beta > 0 and gamma >= 0 are kept so by Ballé's
reparameterisation: the stored parameter p is sqrt(value + pedestal) and the value is
`lower_bound(p, sqrt(minimum + pedestal))^2 - pedestal`, where the lower bound passes a
gradient through whenever it would move p up (so a parameter at its bound can leave it).
Initialisation as Ballé's code: beta = 1, gamma = 0.1 * identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_PEDESTAL = 2.0**-36  # Ballé's reparam_offset (2^-18), squared
_BETA_MIN = 1e-6


class _LowerBound(torch.autograd.Function):
    """max(x, bound), with a gradient wherever x is above the bound or the step would raise x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)  # gradient descent moves x by -grad
        return grad * passes, None


def _nonnegative(stored: torch.Tensor, minimum: float) -> torch.Tensor:
    bound = (minimum + _PEDESTAL) ** 0.5
    return _LowerBound.apply(stored, bound) ** 2 - _PEDESTAL


class GDN(nn.Module):
    # gamma couples the channels like a connection matrix; beta is an additive constant per
    # channel (a bias of the normaliser)
    param_roles = {"gamma_stored": "weight", "beta_stored": "bias"}

    def __init__(self, num_features: int, feature_dim: int = 1, *, device=None, dtype=None) -> None:
        super().__init__()
        if feature_dim not in (1, -1):
            raise ValueError(f"GDN normalises over dimension 1 (maps) or -1 (vectors), got {feature_dim}")
        factory = {"device": device, "dtype": dtype}
        self.num_features, self.feature_dim = num_features, feature_dim
        self.beta_stored = nn.Parameter(torch.empty(num_features, **factory))
        self.gamma_stored = nn.Parameter(torch.empty(num_features, num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.beta_stored.fill_((1.0 + _PEDESTAL) ** 0.5)
            eye = torch.eye(self.num_features, dtype=self.gamma_stored.dtype, device=self.gamma_stored.device)
            self.gamma_stored.copy_((0.1 * eye + _PEDESTAL).sqrt())

    @property
    def beta(self) -> torch.Tensor:
        return _nonnegative(self.beta_stored, _BETA_MIN)

    @property
    def gamma(self) -> torch.Tensor:
        return _nonnegative(self.gamma_stored, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.feature_dim] != self.num_features:
            raise ValueError(f"GDN expected {self.num_features} features on dimension {self.feature_dim}, "
                             f"got shape {tuple(x.shape)}")
        if self.feature_dim == -1 or x.dim() == 2:
            norm = F.linear(x * x, self.gamma, self.beta)
        elif x.dim() == 4:  # maps: a 1x1 conv of x^2, so `count` sees its multiply-adds
            norm = F.conv2d(x * x, self.gamma[:, :, None, None], self.beta)
        else:
            raise ValueError(f"GDN over dimension 1 reads (N, C) or (N, C, H, W), got {tuple(x.shape)}")
        return x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        return f"{self.num_features}, feature_dim={self.feature_dim}"
