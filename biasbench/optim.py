"""Optimiser, L2-in-the-loss and learning-rate schedule built from a recipe.

Parameters are split by role (`params.parameter_roles`): weights get `weight_decay` / `l2`;
biases and other parameters (norm scales, tokens) get `bias_weight_decay` / `bias_l2`.
`l2` is added to the gradient as d/dw of `l2 * sum(w**2)`, which is exactly L2 in the loss (the
DAC paper's choice), also under Adam, where it differs from decoupled decay. A layer may ask for
other settings for some of its parameters (`params.parameter_settings`: a learning-rate
multiplier, no decay); those parameters get groups of their own, after the role groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from biasbench.params import ParamSettings, parameter_roles, parameter_settings
from biasbench.recipe import OptimConfig, ScheduleConfig


@dataclass
class L2Penalty:
    """Adds 2*l2*w to each gradient (the gradient of l2 * ||w||^2), one fused call per group."""

    groups: list[tuple[list[torch.Tensor], float]]

    def apply(self) -> None:
        for params, l2 in self.groups:
            if l2 > 0:
                with_grad = [p for p in params if p.grad is not None]
                if with_grad:
                    torch._foreach_add_([p.grad for p in with_grad], with_grad, alpha=2.0 * l2)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, L2Penalty]:
    roles, special = parameter_roles(model), parameter_settings(model)
    weights, others = [], []
    by_settings: dict[tuple[str, ParamSettings], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = "weight" if roles[name] == "weight" else "bias"
        if name in special:
            by_settings.setdefault((role, special[name]), []).append(p)
        else:
            (weights if role == "weight" else others).append(p)
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "role": "weight"},
              {"params": others, "weight_decay": cfg.bias_weight_decay, "role": "bias"}]
    if cfg.weight_decay == cfg.bias_weight_decay:  # one group: half the optimiser's kernel launches
        groups = [{"params": weights + others, "weight_decay": cfg.weight_decay, "role": "all"}]
    l2_groups = [(weights, cfg.l2), (others, cfg.bias_l2)]
    for (role, settings), params in by_settings.items():  # after the role groups: group 0 keeps the base lr
        decay = cfg.weight_decay if role == "weight" else cfg.bias_weight_decay
        groups.append({"params": params, "weight_decay": decay if settings.decay else 0.0, "role": role,
                       "lr": cfg.lr * settings.lr_mult, "lr_mult": settings.lr_mult})
        if settings.decay:
            l2_groups.append((params, cfg.l2 if role == "weight" else cfg.bias_l2))
    groups = [g for g in groups if g["params"]]
    fused = fused_kernels_apply(p for g in groups for p in g["params"])
    if cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                              fused=fused)
    elif cfg.name == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    return opt, L2Penalty(l2_groups)


def fused_kernels_apply(params) -> bool | None:
    """PyTorch's fused optimiser step (one kernel over all parameters instead of one foreach
    call per term) where it exists: floating-point parameters on the CPU or CUDA. On the MNIST
    MLP's parameters, SGD with Nesterov momentum and weight decay: 201 -> 100 us a step at one
    thread, 197 -> 69 us at two (issue 22): the step's Python-side serial part is what bounds
    two threads' speed-up there. Elsewhere None: PyTorch's default (foreach)."""
    return True if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None


def lr_factor(cfg: ScheduleConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate after `step` optimiser steps.

    With `per: epoch` the schedule moves at epoch boundaries only; with `per: step` every step.
    """
    if cfg.name == "timm_cosine":
        return timm_cosine_lr(cfg, base_lr, step, steps_per_epoch, epochs) / base_lr
    t = step / steps_per_epoch if cfg.per == "step" else float(step // steps_per_epoch)
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        start = cfg.warmup_start_lr / base_lr
        return start + (1.0 - start) * t / cfg.warmup_epochs
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        return cfg.gamma ** sum(t >= m for m in cfg.milestones)
    # cosine from lr (after warm-up) down to the floor min_lr at the last epoch
    span = max(epochs - cfg.warmup_epochs, 1e-12)
    progress = min(max((t - cfg.warmup_epochs) / span, 0.0), 1.0)
    floor = cfg.min_lr / base_lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def timm_cosine_lr(cfg: ScheduleConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning rate of optimiser step `step` (from 0) as the DNRT authors get it from timm.

    They build `CosineLRScheduler(t_initial=S - W, warmup_t=W, warmup_lr_init, lr_min,
    cycle_limit=1, t_in_epochs=False)` with S = epochs * steps and W = warmup_epochs * steps
    (`qtcls/schedulers/__init__.py`); warmup_prefix=False, so the cosine runs on the absolute step
    and reaches lr_min at step S - W (epoch 280 of 300), where it stays. They call
    `step_update(epoch * steps + batch)` after each step (`engine.py`), so step s runs with the
    value for s - 1. The arithmetic is timm's, term for term.
    """
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    span = int(epochs * steps_per_epoch) - warmup
    t = max(step - 1, 0)
    if t < warmup:
        return cfg.warmup_start_lr + t * ((base_lr - cfg.warmup_start_lr) / warmup)
    if t >= span:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t / span))


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step; its state is just the step count."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(cfg, base_lr, step, steps_per_epoch, epochs))
