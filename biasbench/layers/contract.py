"""What a biasbench layer declares, read by generic code (`count`, the trainer, `convert`, params).

A layer says what it is next to its code; nothing elsewhere names layer classes:

- parameter roles: `param_roles = {"unshared_bias": "bias", ...}` (biasbench.params), one entry
  for every parameter the layer owns directly; a test walks the package to hold every layer to it;
- cost: `cost = LayerCost(operator=counted_operator(...), thop=...)`. `count` runs the layer as
  ONE operator of the namespace `biasbench_count` (so its internals, grouped convs or kernels,
  never reach the count) and applies the operator's rule for the convention (`dac-paper` unless
  the convention has its own); `thop` is the layer's row of thop's module table;
- warm-up: a classmethod `warm_up_kernel(device) -> str | None`, the name of the fused kernel the
  layer builds on its first call on `device` ("DAC", "RAA"), None when it builds none there; the
  trainer runs one forward pass before its clock starts for the kernels the model's layers name;
- conversion: a method `take_operator(weight, bias)`, the copy rule `convert` uses to give the
  layer an original Conv2d / Linear's weight and bias. Without one, `copy_operator` copies
  `.weight` and `.bias` and refuses to drop an original bias the layer has no room for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from biasbench.errors import UserError

# (operator arguments, output) -> (FLOPs or the convention's unit, multiply-adds)
Rule = Callable[[tuple, torch.Tensor], tuple[int, int]]
ThopRule = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]
DEFAULT_CONVENTION = "dac-paper"

_LIBRARY = torch.library.Library("biasbench_count", "DEF")


@dataclass(frozen=True)
class CountedOperator:
    """A layer as one operator: `arguments(module, x)` gives the operator's arguments (x first),
    `rules` its cost per convention; the operator's result only needs the right shape."""

    name: str
    packet: Any  # torch.ops.biasbench_count.<name>
    arguments: Callable[[nn.Module, torch.Tensor], tuple]
    rules: Mapping[str, Rule]

    def rule(self, convention: str) -> Rule:
        return self.rules.get(convention, self.rules[DEFAULT_CONVENTION])

    def stand_in(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """What replaces `module.forward` while counting."""
        return lambda x: self.packet(*self.arguments(module, x))


# Every operator a layer registered, by overload packet: what the count's dispatch mode reads.
COUNTED_OPERATORS: dict[Any, CountedOperator] = {}


def counted_operator(schema: str, shape: Callable[..., torch.Tensor], arguments: Callable[[nn.Module, torch.Tensor],
                     tuple], rules: Mapping[str, Rule]) -> CountedOperator:
    """Define `biasbench_count::<schema>` (e.g. "multi_bias(Tensor x, int K, int dim) -> Tensor")
    computing `shape(*args)` (any tensor of the output's shape: later layers' counts depend on
    shapes alone) and register its cost rules."""
    if DEFAULT_CONVENTION not in rules:
        raise ValueError(f"a counted operator needs a `{DEFAULT_CONVENTION}` rule, got {sorted(rules)}")
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, shape, "CompositeExplicitAutograd")
    packet = getattr(torch.ops.biasbench_count, name)
    op = CountedOperator(name, packet, arguments, dict(rules))
    COUNTED_OPERATORS[packet] = op
    return op


@dataclass(frozen=True)
class LayerCost:
    """A layer's cost declaration (class attribute `cost`)."""

    operator: CountedOperator | None = None  # None: its internals are counted operator by operator
    thop: ThopRule | None = None  # its row in thop's module table; None: it has none


@runtime_checkable
class DeclaresCost(Protocol):
    cost: ClassVar[LayerCost]


def layer_cost(module: nn.Module) -> LayerCost | None:
    return module.cost if isinstance(module, DeclaresCost) and isinstance(module.cost, LayerCost) else None


def touched_positions(size: int, kernel: int, stride: int, padding: int) -> int:
    """Input positions along one axis that some kernel tap reads (padding excluded)."""
    out = (size + 2 * padding - kernel) // stride + 1
    return len({o * stride - padding + a for o in range(out) for a in range(kernel)} & set(range(size)))


def bias_additions(bias: Any, out: torch.Tensor) -> int:
    """One addition per output element for a layer bias, none without one."""
    return out.numel() if isinstance(bias, torch.Tensor) else 0


# -- warm-up ------------------------------------------------------------------------------------
@runtime_checkable
class WarmsUp(Protocol):
    @classmethod
    def warm_up_kernel(cls, device: torch.device) -> str | None: ...


def kernels_to_warm(model: nn.Module, device: torch.device) -> list[str]:
    """The fused kernels the model's layers build on their first call on `device`, sorted."""
    names = {type(m).warm_up_kernel(device) for m in model.modules() if isinstance(m, WarmsUp)}
    return sorted(n for n in names if n is not None)


# -- conversion -----------------------------------------------------------------------------------
@runtime_checkable
class TakesOperator(Protocol):
    def take_operator(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None: ...


def copy_operator(target: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The default copy rule: `.weight` and, when the original has one, `.bias`; an original bias
    the target has no room for is refused, never dropped."""
    if isinstance(target, TakesOperator):
        target.take_operator(weight, bias)
        return
    if bias is not None and getattr(target, "bias", None) is None:
        raise UserError(f"convert: the unit's {type(target).__name__} has no bias to take the original "
                        "operator's; give the layer a `take_operator(weight, bias)` copy rule")
    with torch.no_grad():
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)
