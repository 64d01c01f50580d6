"""The training loss: the task's loss plus any stateful terms a variant or recipe adds.

A loss term is an `nn.Module` with `forward(outputs, targets) -> scalar` that may keep state in
buffers (running means, say); that state is saved in checkpoints with the criterion. Terms see
labels, so they are used in training only, never at evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Criterion(nn.Module):
    def __init__(self, task: str, label_smoothing: float = 0.0, terms: dict[str, nn.Module] | None = None):
        super().__init__()
        self.task = task
        self.label_smoothing = label_smoothing
        self.terms = nn.ModuleDict(terms or {})

    def task_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)
        return F.mse_loss(outputs.reshape(targets.shape), targets)  # in the target's own scale

    def example_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) per-example task loss of a regression batch: squared error, averaged over each
        example's outputs (its mean over the batch is `task_loss`)."""
        se = F.mse_loss(outputs.reshape(targets.shape), targets, reduction="none")
        return se.reshape(len(targets), -1).mean(1)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.task_loss(outputs, targets)
        for term in self.terms.values():
            loss = loss + term(outputs, targets)
        return loss
