"""Model EMA: an exponential moving average of a model's weights, as timm's ModelEmaV3 keeps it.

After every optimiser step, every floating-point entry of the state dict (parameters and
buffers such as BatchNorm's running statistics) moves towards the model's:
`ema = decay * ema + (1 - decay) * value` (timm's `lerp_(value, 1 - decay)`, exclude_buffers
False, no warm-up); integer entries (BatchNorm's `num_batches_tracked`) are copied. The copy
is evaluated beside the raw weights every epoch (the history's `ema_*` columns) and saved in
the checkpoint as its own part.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from biasbench.distributed import unwrap


class ModelEma:
    """The averaged copy of `model` (in eval mode, no gradients) and its update."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval()
        self.module.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = unwrap(model).state_dict()
        for name, averaged in self.module.state_dict().items():
            value = current[name].detach()
            if averaged.is_floating_point():
                averaged.lerp_(value.to(averaged.dtype), 1.0 - self.decay)
            else:
                averaged.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
