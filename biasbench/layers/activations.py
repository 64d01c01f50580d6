"""Every activation the papers compare, in one table used by every variant.

DNRT's Tables 1-2 compare Softplus, ELU, SELU, SiLU, ReLU, GELU and GDN with RAA; the DAC paper
uses ReLU and keeps phi pluggable; ReLU6 and LeakyReLU complete the usual set. A variant asks
this table for a module (`make_activation`) or, where its formula applies phi element-wise
inside a layer (DAC, shared-bias pre-activation), for the element-wise function. GDN divides by
a sum over channels, so it has no element-wise form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.layers.gdn import GDN


@dataclass(frozen=True)
class Activation:
    name: str
    formula: str
    # (num_features, feature_dim) -> module; feature_dim 1 for (N, C, ...) maps, -1 for (..., d)
    module: Callable[[int, int], nn.Module]
    elementwise: Callable[[torch.Tensor], torch.Tensor] | None  # None: not element-wise


ACTIVATIONS: Mapping[str, Activation] = MappingProxyType({a.name: a for a in (
    # torch.relu itself: the fused DAC kernels recognise it (layers/dac_activation.is_relu)
    Activation("relu", "max(0, x)", lambda c, d: nn.ReLU(), torch.relu),
    Activation("gelu", "x * Phi(x), exact (erf)", lambda c, d: nn.GELU(), F.gelu),
    Activation("silu", "x * sigmoid(x)", lambda c, d: nn.SiLU(), F.silu),
    Activation("elu", "x if x > 0 else exp(x) - 1", lambda c, d: nn.ELU(), F.elu),
    Activation("selu", "1.0507 * elu(x, 1.6733)", lambda c, d: nn.SELU(), F.selu),
    Activation("softplus", "log(1 + exp(x))", lambda c, d: nn.Softplus(), F.softplus),
    Activation("relu6", "min(max(0, x), 6)", lambda c, d: nn.ReLU6(), F.relu6),
    Activation("leaky_relu", "x if x > 0 else 0.01 x", lambda c, d: nn.LeakyReLU(), F.leaky_relu),
    Activation("gdn", "x_i / sqrt(b_i + sum_j g_ij x_j^2)", lambda c, d: GDN(c, d), None),
)})

ELEMENTWISE: tuple[str, ...] = tuple(name for name, a in ACTIVATIONS.items() if a.elementwise is not None)


def activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation `{name}`{did_you_mean(name, ACTIVATIONS)}; "
                        f"known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_activation(name: str, num_features: int, dims: int = 2) -> nn.Module:
    """The activation module for `num_features` channels (dims=2: maps) or features (dims=1: last dim)."""
    return activation(name).module(num_features, 1 if dims == 2 else -1)
