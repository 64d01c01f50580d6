"""MBA: multi-bias activation (Li, Ouyang, Wang, ICML 2016; spec section 2).

    y[:, k*C + c] = ReLU(x[:, c] + b[k, c])        k = 0..K-1, c = 0..C-1

Channel ordering: the K maps are concatenated block by block, each block holding all C channels
(k-major), as the paper's "K*C maps are concatenated" and the authors' Concat layer. The next
linear layer therefore takes K*C inputs. With `groups=g` (a grouped or depthwise conv behind
it) the order is k-major *within each group*: group 0's K copies, then group 1's, ..., so
that every group of the conv reads the copies of its own channels and nothing else.

`pre_relu=True` applies a ReLU to x before the biases are added, as the authors' released
network does (the paper's formula has no such ReLU): ReLU -> Bias x K -> Concat -> ReLU.
`lr_mult` and `decay` reach the optimiser through `param_settings()` (the authors' caffe
prototxt: `lr_mult: 2, decay_mult: 0` on these biases).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from biasbench.layers.contract import LayerCost, counted_operator
from biasbench.params import ParamSettings


def _cost(args, out):
    """One addition per output element (K*C per position); the ReLUs are not counted."""
    return out.numel(), 0


_OPERATOR = counted_operator("multi_bias(Tensor x, int K, int dim) -> Tensor",
                             lambda x, k, dim: torch.cat([x] * k, dim=dim),
                             lambda m, x: (x, m.K, m.feature_dim), {"dac-paper": _cost})


class MultiBiasActivation(nn.Module):
    param_roles = {"bias": "bias"}
    cost = LayerCost(_OPERATOR)  # one addition per output element

    def __init__(self, channels: int, K: int, *, groups: int = 1, feature_dim: int = 1, pre_relu: bool = False,
                 init: str | Sequence[float] = "zeros", lr_mult: float = 1.0, decay: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if groups < 1 or channels % groups:
            raise ValueError(f"groups must divide the {channels} channels, got {groups}")
        if feature_dim not in (1, -1) or (feature_dim == -1 and groups > 1):
            raise ValueError(f"feature_dim must be 1 (maps, any groups) or -1 (vectors, no groups), got {feature_dim}")
        if isinstance(init, str):
            if init != "zeros":
                raise ValueError(f"init must be 'zeros' or a list of K floats, got {init!r}")
        elif len(init) != K:
            raise ValueError(f"init needs K={K} values, got {len(init)}: {list(init)}")
        self.channels, self.K, self.groups, self.feature_dim = channels, K, groups, feature_dim
        self.pre_relu = pre_relu
        self.init = init if isinstance(init, str) else tuple(float(v) for v in init)
        self.settings = ParamSettings(float(lr_mult), bool(decay))
        self.bias = nn.Parameter(torch.empty(K, channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "zeros":
                self.bias.zero_()
            else:  # per-k constants, e.g. (1, .5, -.5, -1), the same for every channel
                values = torch.tensor(self.init, dtype=self.bias.dtype, device=self.bias.device)
                self.bias.copy_(values[:, None].expand_as(self.bias))

    def param_settings(self) -> Mapping[str, ParamSettings]:
        return {"bias": self.settings}

    @property
    def out_channels(self) -> int:
        return self.K * self.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_dim == -1:
            if x.shape[-1] != self.channels:
                raise ValueError(f"expected (..., {self.channels}), got {tuple(x.shape)}")
            x = torch.relu(x) if self.pre_relu else x
            return torch.relu(x.unsqueeze(-2) + self.bias).flatten(-2)  # (..., K, C) -> (..., K*C)
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}) or (N, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if self.pre_relu:
            x = torch.relu(x)
        extra = (1,) * (x.dim() - 2)
        g, per_group = self.groups, self.channels // self.groups
        # (N, 1, g, C/g, ...) + (1, K, g, C/g, ...) -> (N, K, g, C/g, ...)
        y = torch.relu(x.reshape(x.shape[0], 1, g, per_group, *x.shape[2:])
                       + self.bias.view(1, self.K, g, per_group, *extra))
        if g > 1:
            y = y.transpose(1, 2)  # group-major: (N, g, K, C/g, ...)
        return y.flatten(1, 3)

    def extra_repr(self) -> str:
        settings = "" if self.settings == ParamSettings() else \
            f", lr_mult={self.settings.lr_mult}, decay={self.settings.decay}"
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        groups += ", feature_dim=-1" if self.feature_dim == -1 else ""
        return f"{self.channels}, K={self.K}{groups}, pre_relu={self.pre_relu}, init={self.init}{settings}"
