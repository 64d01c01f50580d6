"""The contract between models and variants, declared in one place.

A model *offers* capabilities (the units it is written in, residual blocks, response taps,
stages); a variant *needs* some of them and allows some activations. `check_applies` compares
the two before anything is built and refuses in one line that says why; after the build,
`Variant.check_built` makes sure the mechanism is really there. Nothing here reads an
attribute by name at run time: what a built model offers the trainer (loss terms, per-group
metrics, its readout) is a `ModelHooks` record attached by `build_model`, read with
`model_hooks(model)`.

    ModelSpec      (models/spec.py) what `@register_model(...)` records: inputs, default
                   activation, offers, taps / readout / metric-group functions, small options
    Taps           (models/spec.py) the response layers ARR reads, with widths and a reduction
    ModelHooks     what the trainer, evaluation and bias-only training may ask a built model
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from biasbench.errors import UserError
from biasbench.models.spec import (
    CAPABILITIES,
    INPUT_SHAPES,
    InputKind,
    MetricGroups,
    ModelSpec,
    Taps,
    class_token,
    pooled,
)
from biasbench.models.variants import Variant

# The model's side of the contract lives in models/spec.py; these names stay importable from here.
__all__ = ["CAPABILITIES", "INPUT_SHAPES", "InputKind", "MetricGroups", "ModelHooks", "ModelSpec", "Taps",
           "attach_hooks", "check_applies", "class_token", "model_hooks", "pooled", "refusal"]

@dataclass(frozen=True)
class ModelHooks:
    """What a built model offers beyond forward(); attached by `build_model`."""

    spec: ModelSpec
    variant: Variant
    loss_terms: Mapping[str, nn.Module] = field(default_factory=dict)  # training-only, stateful (ARR)
    metric_groups: MetricGroups | None = None  # accuracy per group (multi-task: per task)
    readout: nn.Module | None = None  # the bias-only `readout` group; None: the last weighted module


_HOOKS_ATTRIBUTE = "biasbench_hooks"  # like timm's `model.pretrained_cfg`: set once when built


def attach_hooks(model: nn.Module, hooks: ModelHooks) -> None:
    object.__setattr__(model, _HOOKS_ATTRIBUTE, hooks)  # a plain attribute: not a submodule


def model_hooks(model: nn.Module) -> ModelHooks | None:
    """The hooks `build_model` attached, or None for a module built some other way."""
    hooks = model.__dict__.get(_HOOKS_ATTRIBUTE)
    return hooks if isinstance(hooks, ModelHooks) else None


# -- does a variant apply? ----------------------------------------------------------------------
def refusal(spec: ModelSpec, variant: Variant) -> str | None:
    """Why `variant` (with its activation resolved) cannot be built on `spec`, or None."""
    missing = sorted(variant.needs() - spec.offers)
    if missing:
        return f"variant `{variant.name}` {CAPABILITIES[missing[0]]}; model `{spec.name}` has none"
    if spec.activation is None:
        if variant.activation_given:
            return (f"model `{spec.name}` has a fixed nonlinearity; model.variant_options.activation "
                    "does not apply to it")
        return None
    return variant.activation_refusal(spec)


def check_applies(spec: ModelSpec, variant: Variant) -> None:
    reason = refusal(spec, variant)
    if reason:
        raise UserError(reason)
