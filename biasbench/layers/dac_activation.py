"""Activation functions the pre-activated layers accept, by name or as a callable.

phi is ReLU in every experiment of the DAC paper; the spec asks to keep it pluggable. The fast
kernels (C++ / Triton) only implement ReLU, so callers check `is_relu` before dispatching to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ActivationFn = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, ActivationFn] = {
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def resolve_activation(activation: str | ActivationFn) -> tuple[str, ActivationFn]:
    """(name, function) for a name in ACTIVATIONS or a callable (named by its __name__)."""
    if callable(activation):
        return getattr(activation, "__name__", "custom"), activation
    try:
        return activation, ACTIVATIONS[activation]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {activation!r}; known: {known}") from None


def is_relu(activation: str | ActivationFn) -> bool:
    return activation == "relu" or activation is torch.relu or activation is F.relu
