"""What a model declares: its `ModelSpec` (inputs, offers, default activation, taps, ...), the
capabilities a model can offer a variant, and the `Taps` ARR reads.

Both sides of the model / variant contract read these types (a variant's `bind` reads a spec, its
`loss_terms` reads taps; `contract.py` pairs a spec with a variant), so they live apart from both:
`spec` <- `variants` <- `contract`, no loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.activations import ACTIVATIONS

# What a model can offer a variant, with the phrase a refusal uses ("variant `v` <does>; model
# `m` has none").
CAPABILITIES: Mapping[str, str] = MappingProxyType({
    "activations": "replaces the activations a model builds through its units",
    "act_linear": "changes the activations that feed linear operators (act_* units)",
    "residual_blocks": "modulates the second conv of residual blocks",
    "response_taps": "regularises the responses of tapped layers (blocks or stages)",
    "stages": "is placed by stage (option `stages`)",
})

InputKind = Literal["images", "features", "sequences", "task_rows", "graphs"]
INPUT_SHAPES: Mapping[str, str] = MappingProxyType({
    "images": "(C, H, W)", "features": "(F,)", "sequences": "(L, F)", "task_rows": "(F + 1,): features, task id",
    "graphs": "(F,) per node, with edges (data/graph.py)",
})
_INPUT_DIMS = {"images": 3, "features": 1, "sequences": 2, "task_rows": 1, "graphs": 1}


@dataclass(frozen=True)
class Taps:
    """The layers whose outputs ARR regularises, each reduced to one vector per sample."""

    modules: list[nn.Module]
    dims: list[int]
    reduce: Callable[[torch.Tensor], torch.Tensor]


def pooled(output: torch.Tensor) -> torch.Tensor:
    """A stage's (N, C, H, W) output -> (N, C): global average pool (spec section 4, our choice)."""
    return output.mean(dim=(2, 3))


def class_token(output: torch.Tensor) -> torch.Tensor:
    """A transformer block's (N, T, d) output -> (N, d): the class token (DNRT's code)."""
    return output[:, 0]


MetricGroups = Callable[[torch.Tensor], tuple[torch.Tensor, list[str]]]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and everything `list`, `count` and the checks read."""

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    inputs: InputKind
    offers: frozenset[str]
    # The activation its units build unless `model.variant_options.activation` says otherwise;
    # None: the model has a fixed nonlinearity a variant cannot choose (bias_rnn's tanh).
    activation: str | None = "relu"
    taps: Callable[[nn.Module], Taps] | None = None
    readout: Callable[[nn.Module], nn.Module] | None = None
    metric_groups: Callable[[nn.Module], MetricGroups] | None = None
    # A small instance for tests and examples: options and an input shape that build and run
    # in milliseconds.
    tiny_options: Mapping[str, Any] = field(default_factory=dict)
    tiny_input: tuple[int, ...] = (3, 8, 8)

    def __post_init__(self) -> None:
        unknown = set(self.offers) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"model `{self.name}` offers unknown capabilities {sorted(unknown)}")
        if (self.taps is not None) != ("response_taps" in self.offers):
            raise ValueError(f"model `{self.name}`: `response_taps` is offered exactly when `taps` is given")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"model `{self.name}`: unknown default activation {self.activation!r}")

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Refuse an input shape of the wrong kind before anything runs."""
        want = _INPUT_DIMS[self.inputs]
        if len(input_shape) != want or any(s < 1 for s in input_shape):
            shown = "x".join(map(str, input_shape)) or "()"
            raise UserError(f"model `{self.name}` reads {self.inputs} {INPUT_SHAPES[self.inputs]}, "
                            f"not an input of shape {shown}")
