"""Model registry and Python API.

    from biasbench.models import build_model, list_models, list_variants
    net = build_model("cnn", variant="baseline", num_classes=10, in_channels=1, width=16)

A model builder is a function `(variant, num_classes, in_channels, input_shape, **options)`
registered with `@register_model(name)`; it builds its layers through the variant's units
(see `variants.py`), so every registered variant applies to every model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.models.variants import VARIANTS, Variant, build_variant
from biasbench.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
_FIXED = ("variant", "num_classes", "in_channels", "input_shape")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    return MODELS.register(name)


def model_options(name: str) -> dict[str, Any]:
    """The options a model takes, with their defaults."""
    sig = inspect.signature(MODELS.get(name))
    return {k: p.default for k, p in sig.parameters.items() if k not in _FIXED}


def build_model(name: str, variant: str | Variant = "baseline", num_classes: int = 10, in_channels: int = 3,
                input_shape: tuple[int, ...] | None = None, variant_options: dict[str, Any] | None = None,
                **options: Any) -> nn.Module:
    builder = MODELS.get(name)
    known = model_options(name)
    for key in options:
        if key not in known:
            raise UserError(f"model `{name}` has no option `{key}`{did_you_mean(key, known)}; "
                            f"options: {', '.join(known) or 'none'}")
    v = variant if isinstance(variant, Variant) else build_variant(variant, **(variant_options or {}))
    if input_shape is None:
        input_shape = (in_channels,)
    try:
        return builder(variant=v, num_classes=num_classes, in_channels=in_channels, input_shape=tuple(input_shape),
                       **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"model `{name}` cannot be built with these options: {e}") from None


def list_models() -> list[str]:
    return MODELS.names()


def list_variants() -> list[str]:
    return VARIANTS.names()


# Every module in this package registers its models and variants when imported: adding a file is
# enough to add a model or a variant.
import sys as _sys  # noqa: E402

from biasbench.plugins import import_submodules as _import_submodules  # noqa: E402

_import_submodules(_sys.modules[__name__])
