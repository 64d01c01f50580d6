"""DAC on grouped convolutions: equation 5 of the DAC paper within each group.

A conv with `groups=g` is g independent convs, each reading in/g channels and writing out/g;
DAC pre-activates each of them with its own unshared biases B[i, j] (i an output of the group,
j one of the group's inputs), so B has out x in/g entries, one per kernel as in a plain DAC conv.

The depthwise case (one input and one output per group) is not built here: there every input
channel feeds exactly one kernel, so the shared bias in front of it is already unshared and DAC
reduces to a standard connection (DAC paper, section 4). The `dac` variant builds that as
`phi(z_c + b_c)` followed by the plain depthwise conv (see `models/variant_dac.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.layers.contract import copy_operator
from biasbench.layers.dac import DACConv2d


class GroupedDACConv2d(nn.Module):
    param_roles: dict[str, str] = {}  # its parameters are its DAC convs'
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, groups: int, bias: bool = False, **dac_options) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.groups = groups
        self.convs = nn.ModuleList(
            DACConv2d(in_channels // groups, out_channels // groups, kernel_size, stride, padding, bias=bias,
                      **dac_options)
            for _ in range(groups))

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def take_operator(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """`convert`'s copy rule: a grouped conv's weight (and bias) split by group, one slice each."""
        biases = bias.chunk(self.groups) if bias is not None else [None] * self.groups
        for conv, w, b in zip(self.convs, weight.chunk(self.groups), biases, strict=True):
            copy_operator(conv, w, b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        parts = z.chunk(self.groups, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts, strict=True)], dim=1)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
