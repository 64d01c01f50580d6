"""`multitask`: one network, one set of (frozen, random) weights, one bias set per task.

Wraps a base model built as usual (any model of flat feature vectors, e.g. `mlp`). Every
parameter of the base with role "bias" (biasbench.params) moves into a bank with one copy per
task (all copies start from the base's initial biases); the base keeps its weights, shared by
all tasks. An input row is `[features..., task id]` (the `multitask` data set); each task's rows
run through the base with that task's biases, via `torch.func.functional_call`.

Bias-only multi-task learning is `train.trainable: biases`: the shared weights stay frozen and
every task trains only its own biases. `metric_groups` (declared with the registration) lets
evaluation report accuracy per task. A variant applies to the base model, which `build_model`
checks against the base's own registration; the wrapper offers what the default base (`mlp`)
offers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from biasbench.models import build_model, register_model
from biasbench.models.variants import Variant
from biasbench.params import parameter_roles


class MultiTaskBiases(nn.Module):
    def __init__(self, base: nn.Module, num_tasks: int, task_names: list[str] | None = None):
        super().__init__()
        if num_tasks < 1:
            raise ValueError("num_tasks must be at least 1")
        if task_names is not None and len(task_names) != num_tasks:
            raise ValueError(f"task_names has {len(task_names)} names for {num_tasks} tasks")
        self.base = base
        self.num_tasks = num_tasks
        self.task_names = list(task_names) if task_names else [f"task{t}" for t in range(num_tasks)]
        self.banks = nn.ParameterDict()  # keys start with "bias_": role "bias" for the optimiser
        self._slots: list[tuple[str, str]] = []  # (base parameter name, bank key)
        for name, role in parameter_roles(base).items():
            if role != "bias":
                continue
            mod_name, _, attr = name.rpartition(".")
            module = base.get_submodule(mod_name)
            p = module._parameters.pop(attr)
            # A buffer of the same name keeps the base's forward working; it is overridden per task.
            module.register_buffer(attr, p.detach().clone(), persistent=False)
            key = "bias_" + name.replace(".", "__")
            self.banks[key] = nn.Parameter(
                p.detach().unsqueeze(0).repeat(num_tasks, *([1] * p.dim())).clone()
            )
            self._slots.append((name, key))
        if not self._slots:
            raise ValueError("the base model has no biases to make task-specific")
        self._checked = False

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1], x[:, -1].round().long()

    def metric_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        return self.split(x)[1], self.task_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, task = self.split(x)
        if not self._checked:  # once: a wrong id is a data/recipe mismatch, not a per-batch event
            if task.min() < 0 or task.max() >= self.num_tasks:
                raise ValueError(
                    f"task ids go up to {int(task.max())} but the model has {self.num_tasks} tasks "
                    "(model.options.num_tasks)"
                )
            self._checked = True
        out: torch.Tensor | None = None
        for t in range(self.num_tasks):
            idx = torch.nonzero(task == t).squeeze(1)
            if len(idx) == 0:
                continue
            biases = {name: self.banks[key][t] for name, key in self._slots}
            o = functional_call(self.base, biases, (feats[idx],))
            if out is None:
                out = o.new_zeros((len(x),) + o.shape[1:])
            out = out.index_copy(0, idx, o)
        assert out is not None
        return out


@register_model("multitask", summary="one shared frozen base (default mlp), one bias set per task",
                inputs="task_rows", offers=("activations", "act_linear"),
                metric_groups=lambda net: net.metric_groups,
                tiny_options={"num_tasks": 1, "base_options": {"depth": 1, "width": 8}}, tiny_input=(7,))
def multitask(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    base: str = "mlp",
    base_options: dict[str, Any] | None = None,
    num_tasks: int = 2,
    task_names: list[str] | None = None,
) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"multitask reads flat rows [features..., task id], got input shape {input_shape}")
    feats = input_shape[0] - 1
    net = build_model(
        base, variant, num_classes=num_classes, in_channels=1, input_shape=(feats,), **(base_options or {})
    )
    return MultiTaskBiases(net, num_tasks, task_names)
