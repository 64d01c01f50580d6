"""`StagedNet`: stem -> stages -> head, the layout of the CIFAR CNNs of this package.

ARR reads each stage's output, globally pooled (`contract.pooled`): the models that use this
class offer `response_taps` with `taps=StagedNet.response_taps`.
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.models.contract import Taps, pooled


class StagedNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Module], head: nn.Module, widths: list[int]):
        super().__init__()
        if len(stages) != len(widths):
            raise ValueError(f"{len(stages)} stages but {len(widths)} widths")
        self.stem, self.stages, self.head = stem, nn.ModuleList(stages), head
        self.widths = list(widths)  # each stage's output channels

    def response_taps(self) -> Taps:
        return Taps(list(self.stages), list(self.widths), pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
