"""Which parameters are weights, which are biases, and which want their own optimiser settings.

The optimiser (L2 / weight decay on weights only), `count` (weights / biases / other) and
bias-only training all ask this module. What a layer may declare, and how:

- `DeclaresRoles`: a class attribute `param_roles = {"unshared_bias": "bias", ...}` naming the
  role of EVERY parameter the module owns directly (biasbench's own layers all declare one; a
  test holds them to it). A parameter a declaring module leaves out is an error, never guessed:
  a `bias_scale` is not a bias because of its name. Only modules that declare nothing (torch's,
  timm's) have their roles read from parameter names (`guessed_role`);
- `ParamSettings`: a method `param_settings()` returning {attribute: ParamSettings(lr_mult,
  decay)} for parameters that train differently from their role's group (MBA's biases in the
  authors' caffe form: twice the learning rate, no decay).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

from torch import nn

Role = Literal["weight", "bias", "other"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@runtime_checkable
class DeclaresRoles(Protocol):
    param_roles: ClassVar[Mapping[str, Role]]


@dataclass(frozen=True)
class ParamSettings:
    lr_mult: float = 1.0  # times the recipe's learning rate (and its schedule)
    decay: bool = True  # False: no weight decay and no L2, whatever the recipe says for the role


@runtime_checkable
class DeclaresSettings(Protocol):
    def param_settings(self) -> Mapping[str, ParamSettings]: ...


def _role(module: nn.Module, attr: str) -> Role:
    if isinstance(module, DeclaresRoles):
        if attr not in module.param_roles:
            raise ValueError(f"{type(module).__name__} declares param_roles without its parameter `{attr}`: "
                             "name its role (weight, bias or other) there")
        return module.param_roles[attr]
    return guessed_role(module, attr)


def guessed_role(module: nn.Module, attr: str) -> Role:
    """The role of a parameter of a module that declares none (torch's, timm's), from its name."""
    if attr == "bias" or attr.endswith("_bias") or attr.startswith("bias"):
        return "bias"
    if isinstance(module, _NORMS):
        return "other"  # a norm's scale multiplies activations; it is not a connection weight
    if attr == "weight" or attr.endswith("_weight"):
        return "weight"
    return "other"  # embeddings, class tokens, gates declared otherwise


def _qualified(mod_name: str, attr: str) -> str:
    return f"{mod_name}.{attr}" if mod_name else attr


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """{qualified parameter name: role} for every parameter of the model."""
    roles: dict[str, Role] = {}
    for mod_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            roles[_qualified(mod_name, attr)] = _role(module, attr)
    return roles


def parameter_settings(model: nn.Module) -> dict[str, ParamSettings]:
    """{qualified name: settings} for the parameters whose layer asks for non-default settings."""
    out: dict[str, ParamSettings] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, DeclaresSettings):
            for attr, settings in module.param_settings().items():
                if settings != ParamSettings():
                    out[_qualified(mod_name, attr)] = settings
    return out


def count_by_role(model: nn.Module, trainable_only: bool = False) -> dict[str, int]:
    roles = parameter_roles(model)
    counts = {"weight": 0, "bias": 0, "other": 0}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts[roles[name]] += p.numel()
    return {"weights": counts["weight"], "biases": counts["bias"], "other": counts["other"],
            "total": sum(counts.values())}
