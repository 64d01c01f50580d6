"""Every activation the papers compare, in one registry used by every variant.

DNRT's Tables 1-2 compare Softplus, ELU, SELU, SiLU, ReLU, GELU and GDN with RAA; the DAC paper
uses ReLU and keeps phi pluggable; ReLU6 and LeakyReLU complete the usual set. A variant asks
the registry for a module (`make_activation`) or, where its formula applies phi element-wise
inside a layer (DAC, shared-bias pre-activation), for the element-wise function. GDN divides by
a sum over channels, so it has no element-wise form.

An activation is found by name, by its module class or by a module (`activation(nn.GELU())`,
as timm's `create_act` takes either); a module with other settings than the registered one
(`nn.LeakyReLU(0.2)`) is refused, never read as the registered form. `register_activation`
adds one (with `aliases` for old names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.gdn import GDN
from biasbench.registry import Registry


@dataclass(frozen=True)
class Activation:
    name: str
    formula: str  # its summary, as `biasbench list activations` shows it
    module_type: type[nn.Module]  # the class of its module: found by class or by instance
    elementwise: Callable[[torch.Tensor], torch.Tensor] | None  # None: not element-wise
    # (num_features, feature_dim) -> module; feature_dim 1 for (N, C, ...) maps, -1 for (..., d).
    # None: module_type(), an activation with no per-feature state.
    build: Callable[[int, int], nn.Module] | None = None

    def module(self, num_features: int, feature_dim: int) -> nn.Module:
        return self.build(num_features, feature_dim) if self.build is not None else self.module_type()


ACTIVATIONS: Registry[Activation] = Registry("activation")
_BY_TYPE: dict[type[nn.Module], str] = {}


def register_activation(entry: Activation, aliases: tuple[str, ...] = ()) -> Activation:
    if entry.module_type in _BY_TYPE:
        raise ValueError(f"{entry.module_type.__name__} is activation `{_BY_TYPE[entry.module_type]}` already")
    ACTIVATIONS.register(entry.name, aliases)(entry)
    _BY_TYPE[entry.module_type] = entry.name
    return entry


for _entry in (
    # torch.relu itself: the fused DAC kernels recognise it (layers/dac_activation.is_relu)
    Activation("relu", "max(0, x)", nn.ReLU, torch.relu),
    Activation("gelu", "x * Phi(x), exact (erf)", nn.GELU, F.gelu),
    Activation("silu", "x * sigmoid(x)", nn.SiLU, F.silu),
    Activation("elu", "x if x > 0 else exp(x) - 1", nn.ELU, F.elu),
    Activation("selu", "1.0507 * elu(x, 1.6733)", nn.SELU, F.selu),
    Activation("softplus", "log(1 + exp(x))", nn.Softplus, F.softplus),
    Activation("relu6", "min(max(0, x), 6)", nn.ReLU6, F.relu6),
    Activation("leaky_relu", "x if x > 0 else 0.01 x", nn.LeakyReLU, F.leaky_relu),
    Activation("gdn", "x_i / sqrt(b_i + sum_j g_ij x_j^2)", GDN, None, build=GDN),
):
    register_activation(_entry)

ELEMENTWISE: tuple[str, ...] = tuple(name for name, a in ACTIVATIONS.items() if a.elementwise is not None)


def _settings(module: nn.Module) -> list[str]:
    """A module's settings as its repr shows them, less `inplace` (which changes no value)."""
    return [part.strip() for part in module.extra_repr().split(",") if part.strip() and "inplace" not in part]


def activation(key: str | type[nn.Module] | nn.Module) -> Activation:
    """The activation called `key`, or whose module class `key` is, or whose module `key` is."""
    if isinstance(key, str):
        return ACTIVATIONS.get(key)
    cls = key if isinstance(key, type) else type(key)
    if cls not in _BY_TYPE:
        known = ", ".join(t.__name__ for t in _BY_TYPE)
        raise UserError(f"{cls.__name__} is no registered activation; known classes: {known}")
    entry = ACTIVATIONS.get(_BY_TYPE[cls])
    if isinstance(key, nn.Module) and not list(key.parameters()):
        ours = _settings(entry.module(1, 1))
        if _settings(key) != ours:
            raise UserError(f"{cls.__name__}({', '.join(_settings(key))}) is not activation `{entry.name}`, "
                            f"which is {cls.__name__}({', '.join(ours)})")
    return entry


def make_activation(name: str, num_features: int, dims: int = 2) -> nn.Module:
    """The activation module for `num_features` channels (dims=2: maps) or features (dims=1: last dim)."""
    return activation(name).module(num_features, 1 if dims == 2 else -1)
