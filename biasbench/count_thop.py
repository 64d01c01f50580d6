"""The `thop` counting convention: thop's (pytorch-OpCounter 0.1.1) module table, written out.

thop hooks modules, not operators, and finds each module's rule by its exact class (a subclass
gets none). Per sample, in thop's units (multiply-adds for conv and dense):

- Conv1d/2d/3d and their transposes: output elements x (input channels / groups) x kernel
  elements (no bias);
- Linear: output elements x in_features (no bias);
- BatchNorm, LayerNorm, InstanceNorm, SyncBatchNorm: 2 per input element, 4 with affine
  parameters;
- AvgPool: 1 per output element; AdaptiveAvgPool: (input/output size + 1) per output element;
- Softmax (the module): 3n - 1 per softmax over n values;
- ReLU, ReLU6, max pools, Dropout, ZeroPad2d, PixelShuffle, Sequential: 0;
- anything else (GELU, attention's functional matmuls and softmax, residual additions, class
  tokens): 0, as thop, which counts only the modules in its table. Leaf modules with parameters
  but no rule (e.g. DAC, MBA) are listed as not counted rather than silently zero.

Additions: a biasbench layer may declare its own row (`cost = LayerCost(thop=...)`,
layers/contract.py): RAA does, as the DNRT paper's Table 4 implies (+1.82 M for ViT-Tiny,
+7.24 M for TNT-S, the shifts' multiply-adds): a dense layer from the d activations to one value,
d multiply-adds per token (`RAA`) or per pixel (`RAA2d`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from biasbench.layers.contract import layer_cost

Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]


def _conv(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel() * (x.shape[1] // m.groups) * math.prod(m.weight.shape[2:])


def _linear(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    return m.in_features * y.numel()


def _norm(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)  # BN / LN spell it differently
    return 2 * x.numel() * (2 if affine else 1)


def _avgpool(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel()


def _adaptive_avgpool(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    kernel = math.prod(a / b for a, b in zip(x.shape[2:], y.shape[2:]))
    return int((kernel + 1) * y.numel())


def _softmax(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    n = x.shape[m.dim]
    return x.numel() // n * (3 * n - 1)


def _zero(m: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    return 0


RULES: dict[type, Rule] = {
    **{t: _conv for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d)},
    **{t: _norm for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.InstanceNorm1d,
                          nn.InstanceNorm2d, nn.InstanceNorm3d, nn.SyncBatchNorm)},
    **{t: _avgpool for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)},
    **{t: _adaptive_avgpool for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)},
    **{t: _zero for t in (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Dropout, nn.ZeroPad2d, nn.PixelShuffle,
                          nn.Sequential)},
    nn.Linear: _linear, nn.Softmax: _softmax,
}


def thop_rule(module: nn.Module) -> Rule | None:
    """thop's rule for the module's exact class, or the row the layer declares."""
    rule = RULES.get(type(module))
    if rule is None:
        cost = layer_cost(module)
        rule = cost.thop if cost is not None else None
    return rule


class ThopCounter:
    """Forward hooks on every module with a rule (by exact class, as thop); a context manager."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.ops: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._handles: list[Any] = []

    def _hook(self, rule: Rule, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            self.ops[name] += int(rule(module, inputs[0], output))
        return hook

    def __enter__(self) -> ThopCounter:
        for module in self.model.modules():
            rule = thop_rule(module)
            name = type(module).__name__
            if rule is not None:
                self._handles.append(module.register_forward_hook(self._hook(rule, name)))
            elif not any(module.children()) and any(True for _ in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._skip(name)))
        return self

    def _skip(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            self.skipped[name] += 1
        return hook

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
