"""Variants: how a bias mechanism turns a model's "activation followed by linear operator" units.

Models are written once, in terms of the units below; a variant decides what each unit is. The
baseline is the ordinary post-activated network. A mechanism plugs in by subclassing `Variant`,
declaring what it needs from a model (`requires`, `activations`), overriding the units it
changes, and registering itself, never by editing models.

The conversion rule (spec section 1): every activation whose output feeds a linear operator is
a unit `act_linear` / `act_conv2d` / `act_pool_linear`; a variant may remove the activation and
give the linear operator pre-activations of its own. A norm (or linear bias) that fed such an
activation then loses its shift when `removes_activation_shift` is set (BN -> BN'), and an
activation on a path with no linear operator to take it over (the ResNet v1 identity path) is
removed without replacement (`backbone_act`). The rule lives here, once: models never test which
variant they are built with. A model says only what each unit's output feeds: `norm` assumes it
feeds an activation (`feeds_activation=False` where it does not), the linear units assume it
does not (`feeds_activation=True` where a linear operator's bias feeds an activation directly,
with no norm between); the variant drops the shift (`keeps_bias`).

`norm(num_features, dims, feeds_activation, **options)` returns a module that maps (N, C, H, W)
(dims=2) or (N, C) (dims=1) to the same shape, takes BatchNorm's keyword options (eps, momentum,
affine, track_running_stats, device, dtype), and, when `feeds_activation` and the variant removes
the activation's shift, has no shift parameter. That is the whole contract: models read nothing
else from a norm (no `num_features`, no `weight`); `convert` asks it only for a BN' when the
variant removes shifts.

Every unit takes `**kwargs` for the layer it wraps (dilation, device, dtype, ...) and the conv
units take `groups`; `role` names a position ("block_conv2", "shortcut", "mlp_fc2") and `stage`
the stage whose features the unit's activation reads (1-based), for variants that change only
some units.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.layers.activations import activation as lookup_activation
from biasbench.layers.activations import make_activation
from biasbench.layers.norm import BatchNorm1dNoShift, BatchNorm2dNoShift
from biasbench.models.spec import ModelSpec, Taps
from biasbench.registry import Registry


class Variant:
    """The baseline: post-activation with shared biases. Subclasses override units."""

    name: ClassVar[str] = "baseline"
    summary: ClassVar[str] = "the ordinary post-activated network"
    # Capabilities (models/spec.CAPABILITIES) a model must offer for this variant.
    requires: ClassVar[frozenset[str]] = frozenset()
    # The activations the mechanism's formula allows (None: every one in the table), and why.
    activations: ClassVar[tuple[str, ...] | None] = None
    activation_rule: ClassVar[str] = ""
    # Layer types whose presence shows the mechanism was built (empty: nothing to find).
    mechanism: ClassVar[tuple[type[nn.Module], ...]] = ()
    # Old option names, refused with the new name.
    renamed_options: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # True when the variant moves the activation's shift into the next linear operator, so a
    # norm (or linear bias) feeding a removed activation drops its shift (BN -> BN').
    removes_activation_shift: ClassVar[bool] = False
    # Factor applied to hidden widths of dense models so that parameter counts match the
    # baseline (the DAC paper narrows DAC MLPs by about sqrt(2)). 1 for most variants.
    dense_width_factor: ClassVar[float] = 1.0

    def __init__(self, activation: str | None = None):
        """`activation`: one of biasbench.layers.activations.ACTIVATIONS; None: the model's own."""
        if activation is not None:
            lookup_activation(activation)  # an unknown name fails here, in one line
            if self.activations is not None and activation not in self.activations:
                raise UserError(f"variant `{self.name}` {self.activation_rule}; got activation `{activation}`")
        self.activation: str | None = activation
        self.activation_given = activation is not None

    # -- the contract ---------------------------------------------------------------------------
    def needs(self) -> frozenset[str]:
        """What a model must offer for this variant with these options."""
        return self.requires

    def bind(self, spec: ModelSpec) -> Variant:
        """A copy for one build of `spec`: the model's activation filled in, build state fresh."""
        v = copy.copy(self)
        if v.activation is None:
            v.activation = spec.activation
        v.start_build()
        return v

    def start_build(self) -> None:
        """Reset per-build state (a variant that counts units overrides this)."""

    def activation_refusal(self, spec: ModelSpec) -> str | None:
        if self.activation != spec.activation and "activations" not in spec.offers:
            return (f"model `{spec.name}` builds no activation through units; activation `{self.activation}` "
                    "does not apply")
        if self.activations is not None and self.activation not in self.activations:
            return (f"variant `{self.name}` {self.activation_rule}; model `{spec.name}` uses `{self.activation}` "
                    f"by default: set model.variant_options.activation to {' or '.join(self.activations)}")
        return None

    def check_built(self, model: nn.Module, model_name: str) -> None:
        """Refuse a build in which the mechanism does not appear (never a silent baseline)."""
        if self.mechanism and not any(isinstance(m, self.mechanism) for m in model.modules()):
            kinds = ", ".join(t.__name__ for t in self.mechanism)
            raise UserError(f"variant `{self.name}` built no {kinds} in model `{model_name}`")

    def loss_terms(self, taps: Taps | None, num_classes: int) -> dict[str, nn.Module]:
        """Training-loss terms the variant adds, reading the model's taps (ARR does)."""
        return {}

    # -- activations that do not feed a linear operator, or that a variant keeps -------------
    def act(self, num_features: int, dims: int = 2) -> nn.Module:
        return make_activation(self.activation or "relu", num_features, dims)

    def backbone_act(self, num_features: int, dims: int = 2) -> nn.Module:
        """An activation on a path that reaches no linear operator directly (ResNet v1's identity
        shortcut, whose consumers pre-activate their own inputs through the units below). The
        baseline keeps it; a variant that moves activations into the linear operators
        (`removes_activation_shift`) drops it, which makes the v1 backbone linear."""
        if self.removes_activation_shift:
            return nn.Identity()
        return self.act(num_features, dims)

    # -- shifts --------------------------------------------------------------------------------
    def keeps_bias(self, bias: bool, feeds_activation: bool) -> bool:
        """Whether a linear operator asked for with `bias` gets one: not when its output feeds an
        activation this variant moves into the next linear operator (that operator's biases take
        the shift over; spec section 1)."""
        return bias and not (feeds_activation and self.removes_activation_shift)

    # -- norms (contract: module docstring) -------------------------------------------------------
    def norm(self, num_features: int, dims: int = 2, feeds_activation: bool = True, **kwargs: Any) -> nn.Module:
        """BatchNorm; without its shift when the activation it feeds is moved downstream."""
        if feeds_activation and self.removes_activation_shift:
            no_shift = BatchNorm2dNoShift if dims == 2 else BatchNorm1dNoShift
            return no_shift(num_features, **kwargs)
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(num_features, **kwargs)

    # -- "activation followed by linear operator" units ------------------------------------------
    def act_linear(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return nn.Sequential(self.act(in_features, dims=1),
                             nn.Linear(in_features, out_features, bias=self.keeps_bias(bias, feeds_activation),
                                       **kwargs))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return nn.Sequential(
            self.act(in_channels, dims=2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                      bias=self.keeps_bias(bias, feeds_activation), **kwargs),
        )

    def act_pool_linear(self, in_channels: int, out_features: int, *, stage: int | None = None,
                        **kwargs: Any) -> nn.Module:
        """The classifier head: activation -> global average pool -> dense."""
        return nn.Sequential(self.act(in_channels, dims=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(in_channels, out_features, **kwargs))

    # -- plain operators reading un-activated input (stems) --------------------------------------
    def conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
               feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         bias=self.keeps_bias(bias, feeds_activation), **kwargs)

    def linear(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
               feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=self.keeps_bias(bias, feeds_activation), **kwargs)


def factory_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The layer options every mechanism layer takes (device, dtype), out of a unit's **kwargs."""
    return {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}


VARIANTS: Registry[type[Variant]] = Registry("variant")
VARIANTS.register("baseline")(Variant)


def variant_options(cls: type[Variant]) -> dict[str, Any]:
    """The options a variant takes, with their defaults (read from its constructor)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def build_variant(name: str, **options: Any) -> Variant:
    cls = VARIANTS.get(name)
    known = variant_options(cls)
    for key in options:
        if key in cls.renamed_options:
            new = cls.renamed_options[key]
            raise UserError(f"variant `{name}`: option `{key}` is now `{new}`; write "
                            f"model.variant_options: {{{new}: {options[key]!r}}}")
        if key not in known:
            raise UserError(f"variant `{name}` takes no option `{key}`{did_you_mean(key, known)}; "
                            f"its options: {', '.join(known)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:  # impossible values
        raise UserError(f"variant `{name}`: bad model.variant_options ({e})") from None
