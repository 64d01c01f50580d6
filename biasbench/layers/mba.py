"""MBA: multi-bias activation (Li, Ouyang, Wang, ICML 2016; spec section 2).

    y[:, k*C + c] = ReLU(x[:, c] + b[k, c])        k = 0..K-1, c = 0..C-1

Channel ordering: the K maps are concatenated block by block, each block holding all C channels
(k-major), as the paper's "K*C maps are concatenated". The next linear layer therefore takes
K*C inputs. `pre_relu=True` applies a ReLU to x before the biases are added, as the authors'
released network does (the paper's formula has no such ReLU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiBiasActivation(nn.Module):
    param_roles = {"bias": "bias"}

    def __init__(self, channels: int, K: int, *, pre_relu: bool = False,
                 init: str | Sequence[float] = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        if isinstance(init, str):
            if init != "zeros":
                raise ValueError(f"init must be 'zeros' or a list of K floats, got {init!r}")
        elif len(init) != K:
            raise ValueError(f"init needs K={K} values, got {len(init)}: {list(init)}")
        self.channels = channels
        self.K = K
        self.pre_relu = pre_relu
        self.init = init if isinstance(init, str) else tuple(float(v) for v in init)
        self.bias = nn.Parameter(torch.empty(K, channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "zeros":
                self.bias.zero_()
            else:  # the authors' per-k constants, e.g. (1, .5, -.5, -1), same for every channel
                values = torch.tensor(self.init, dtype=self.bias.dtype, device=self.bias.device)
                self.bias.copy_(values[:, None].expand_as(self.bias))

    @property
    def out_channels(self) -> int:
        return self.K * self.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}) or (N, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if self.pre_relu:
            x = torch.relu(x)
        extra = (1,) * (x.dim() - 2)
        # (N, 1, C, ...) + (1, K, C, ...) -> (N, K, C, ...) -> (N, K*C, ...): k-major ordering.
        y = torch.relu(x.unsqueeze(1) + self.bias.view(1, self.K, self.channels, *extra))
        return y.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"{self.channels}, K={self.K}, pre_relu={self.pre_relu}, init={self.init}"
