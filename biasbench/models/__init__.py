"""Model registry and Python API.

    from biasbench.models import build_model, list_models, list_variants
    net = build_model("cnn", variant="baseline", num_classes=10, in_channels=1, width=16)

A model builder is a function `(variant, num_classes, in_channels, input_shape, **options)`
registered with `@register_model(name, summary=..., inputs=..., offers=...)`; the registration
carries the model's metadata (`contract.ModelSpec`), which `biasbench list`, `count` and the
checks read without building. It builds its layers through the variant's units (see
`variants.py`); `build_model` builds a variant only where the model offers what the variant
needs (`contract.check_applies`) and refuses in one line otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.models.contract import (
    InputKind,
    MetricGroups,
    ModelHooks,
    ModelSpec,
    Taps,
    attach_hooks,
    check_applies,
    model_hooks,
    refusal,
)
from biasbench.models.library import build_library_model, is_library_name, library_spec
from biasbench.models.variants import VARIANTS, Variant, build_variant
from biasbench.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelSpec] = Registry("model")
_FIXED = ("variant", "num_classes", "in_channels", "input_shape")

__all__ = ["MODELS", "ModelSpec", "Taps", "build_model", "check_model", "convert", "list_models", "list_variants",
           "model_hooks", "model_options", "model_spec", "register_model", "applicable_variants", "applicability"]


def register_model(name: str, *, summary: str, inputs: InputKind, offers: Iterable[str] = (),
                   activation: str | None = "relu", taps: Callable[[nn.Module], Taps] | None = None,
                   readout: Callable[[nn.Module], nn.Module] | None = None,
                   metric_groups: Callable[[nn.Module], MetricGroups] | None = None,
                   tiny_options: Mapping[str, Any] | None = None,
                   tiny_input: tuple[int, ...] = (3, 8, 8)) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder with its metadata (see `contract.ModelSpec` for each field)."""
    def add(builder: ModelBuilder) -> ModelBuilder:
        spec = ModelSpec(name, builder, summary, inputs, frozenset(offers), activation, taps, readout,
                         metric_groups, dict(tiny_options or {}), tiny_input)
        MODELS.register(name)(spec)
        return builder

    return add


def model_spec(name: str) -> ModelSpec:
    if is_library_name(name):  # timm:NAME, torchvision:NAME (models/library.py)
        return library_spec(name)
    return MODELS.get(name)


def model_options(name: str) -> dict[str, Any]:
    """The options a model takes, with their defaults."""
    sig = inspect.signature(MODELS.get(name).builder)
    return {k: p.default for k, p in sig.parameters.items() if k not in _FIXED}


def build_model(name: str, variant: str | Variant = "baseline", num_classes: int = 10, in_channels: int = 3,
                input_shape: tuple[int, ...] | None = None, variant_options: dict[str, Any] | None = None,
                **options: Any) -> nn.Module:
    if is_library_name(name):  # built by timm / torchvision, the variant applied by convert
        return build_library_model(name, variant, num_classes, in_channels, tuple(input_shape or (in_channels,)),
                                   variant_options, **options)
    spec, v = _checked(name, variant, variant_options, options)
    if input_shape is None:
        input_shape = (in_channels,)
    try:
        net = spec.builder(variant=v, num_classes=num_classes, in_channels=in_channels,
                           input_shape=tuple(input_shape), **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"model `{name}` cannot be built with these options: {e}") from None
    v.check_built(net, name)
    attach_hooks(net, ModelHooks(
        spec, v,
        loss_terms=v.loss_terms(spec.taps(net) if spec.taps else None, num_classes),
        metric_groups=spec.metric_groups(net) if spec.metric_groups else None,
        readout=spec.readout(net) if spec.readout else None,
    ))
    return net


def check_model(name: str, variant: str = "baseline", variant_options: dict[str, Any] | None = None,
                **options: Any) -> None:
    """What `build_model` refuses, found without building anything (so `train --dry-run` and the
    lines `train` prints first never describe a run that cannot exist): an unknown model, option
    or variant, a variant option it does not take, a pair that does not apply. Models built by
    timm or torchvision are checked when built."""
    if not is_library_name(name):
        _checked(name, variant, variant_options, options)


def _checked(name: str, variant: str | Variant, variant_options: dict[str, Any] | None,
             options: dict[str, Any]) -> tuple[Any, Variant]:
    spec = MODELS.get(name)
    known = model_options(name)
    for key in options:
        if key not in known:
            hint = " (the activation is a variant option: model.variant_options.activation)" \
                if key == "activation" else did_you_mean(key, known)
            raise UserError(f"model `{name}` has no option `{key}`{hint}; options: {', '.join(known) or 'none'}")
    if isinstance(variant, Variant):
        if variant_options:
            raise UserError("give variant options to build_variant, not with a Variant instance")
        v = variant.bind(spec)
    else:
        v = build_variant(variant, **(variant_options or {})).bind(spec)
    check_applies(spec, v)
    return spec, v


def list_models() -> list[str]:
    return MODELS.names()


def list_variants() -> list[str]:
    return VARIANTS.names()


def applicable_variants(name: str) -> dict[str, str | None]:
    """{variant: None if it applies to model `name` with default options, else why not}."""
    spec = MODELS.get(name)
    return {v: refusal(spec, VARIANTS.get(v)().bind(spec)) for v in list_variants()}


def applicability(name: str) -> dict[str, str]:
    """{variant: "yes" (applies as the model is), an activation it needs instead of the model's
    own (e.g. "relu" for mba on a GELU model), or "-" (does not apply)}."""
    spec = MODELS.get(name)
    out = {}
    for v, reason in applicable_variants(name).items():
        cls = VARIANTS.get(v)
        fits = [a for a in cls.activations or () if refusal(spec, cls(activation=a).bind(spec)) is None]
        out[v] = "yes" if reason is None else (fits[0] if fits else "-")
    return out


# Every module in this package registers its models and variants when imported: adding a file is
# enough to add a model or a variant.
import sys as _sys  # noqa: E402

from biasbench.plugins import import_submodules as _import_submodules  # noqa: E402

_import_submodules(_sys.modules[__name__])

# `biasbench.models.convert` is the function (a variant applied to any traceable module, by the
# DAC paper's rule), not its module of the same name, which importing the modules above bound.
from biasbench.models.convert import convert  # noqa: E402
