"""Which parameters are weights, which are biases: decided in one place.

The optimiser (L2 / weight decay on weights only), `count` (weights / biases / other) and
bias-only training all ask this module. A layer can state its own roles with a class attribute
`param_roles = {"unshared_bias": "bias", ...}`; otherwise the rules below apply.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Role = Literal["weight", "bias", "other"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _role(module: nn.Module, attr: str) -> Role:
    declared = getattr(module, "param_roles", None)
    if declared and attr in declared:
        return declared[attr]
    if attr == "bias" or attr.endswith("_bias") or attr.startswith("bias"):
        return "bias"
    if isinstance(module, _NORMS):
        return "other"  # a norm's scale multiplies activations; it is not a connection weight
    if attr == "weight" or attr.endswith("_weight"):
        return "weight"
    return "other"  # embeddings, class tokens, gates declared otherwise


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """{qualified parameter name: role} for every parameter of the model."""
    roles: dict[str, Role] = {}
    for mod_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            roles[f"{mod_name}.{attr}" if mod_name else attr] = _role(module, attr)
    return roles


def count_by_role(model: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    roles = parameter_roles(model)
    counts = {"weight": 0, "bias": 0, "other": 0}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts[roles[name]] += p.numel()
    return {"weights": counts["weight"], "biases": counts["bias"], "other": counts["other"],
            "total": sum(counts.values())}
