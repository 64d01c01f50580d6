"""Variants: how a bias mechanism turns a model's "activation followed by linear operator" units.

Models are written once, in terms of the units below; a variant decides what each unit is. The
baseline is the ordinary post-activated network. A mechanism plugs in by subclassing `Variant`,
overriding the units it changes, and registering itself, never by editing models.

The conversion rule (spec section 1): every activation whose output feeds a linear operator is
a unit `act_linear` / `act_conv2d` / `act_pool_linear`; a variant may remove the activation and
give the linear operator pre-activations of its own. A norm (or linear bias) that fed such an
activation then loses its shift when `removes_activation_shift` is set (BN -> BN'), and an
activation on a path with no linear operator to take it over (the ResNet v1 identity path) is
removed without replacement (`backbone_act`). The rule lives here, once: models never test which
variant they are built with.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.layers.norm import BatchNorm1dNoShift, BatchNorm2dNoShift
from biasbench.registry import Registry

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "identity": nn.Identity}


def make_activation(kind: str) -> nn.Module:
    if kind not in _ACTIVATIONS:
        raise UserError(f"unknown activation `{kind}`{did_you_mean(kind, _ACTIVATIONS)}; "
                        f"known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[kind]()


class Variant:
    """The baseline: post-activation with shared biases. Subclasses override units."""

    name = "baseline"
    # True when the variant moves the activation's shift into the next linear operator, so a
    # norm (or linear bias) feeding a removed activation drops its shift (BN -> BN').
    removes_activation_shift = False
    # Factor applied to hidden widths of dense models so that parameter counts match the
    # baseline (the DAC paper narrows DAC MLPs by about sqrt(2)). 1 for most variants.
    dense_width_factor = 1.0

    def __init__(self, activation: str = "relu", **options: Any):
        if options:
            raise UserError(f"variant `{self.name}` takes no options {sorted(options)}")
        make_activation(activation)  # validate early
        self.activation = activation

    # -- activations that do not feed a linear operator, or that a variant keeps -------------
    def act(self, num_features: int, dims: int = 2) -> nn.Module:
        return make_activation(self.activation)

    def backbone_act(self, num_features: int, dims: int = 2) -> nn.Module:
        """An activation on a path that reaches no linear operator directly (ResNet v1's identity
        shortcut, whose consumers pre-activate their own inputs through the units below). The
        baseline keeps it; a variant that moves activations into the linear operators
        (`removes_activation_shift`) drops it, which makes the v1 backbone linear."""
        if self.removes_activation_shift:
            return nn.Identity()
        return self.act(num_features, dims)

    # -- norms ---------------------------------------------------------------------------------
    def norm(self, num_features: int, dims: int = 2, feeds_activation: bool = True) -> nn.Module:
        """BatchNorm; without its shift when the activation it feeds is moved downstream."""
        if feeds_activation and self.removes_activation_shift:
            return BatchNorm2dNoShift(num_features) if dims == 2 else BatchNorm1dNoShift(num_features)
        return nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)

    # -- "activation followed by linear operator" units ------------------------------------------
    def act_linear(self, in_features: int, out_features: int, bias: bool = True, role: str | None = None) -> nn.Module:
        return nn.Sequential(self.act(in_features, dims=1), nn.Linear(in_features, out_features, bias=bias))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, role: str | None = None) -> nn.Module:
        return nn.Sequential(
            self.act(in_channels, dims=2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias),
        )

    def act_pool_linear(self, in_channels: int, out_features: int) -> nn.Module:
        """The classifier head: activation -> global average pool -> dense."""
        return nn.Sequential(self.act(in_channels, dims=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(in_channels, out_features))

    # -- plain operators reading un-activated input (stems) --------------------------------------
    def conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0, bias: bool = False, role: str | None = None) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def linear(self, in_features: int, out_features: int, bias: bool = True, role: str | None = None) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias)


VARIANTS: Registry[type[Variant]] = Registry("variant")
VARIANTS.register("baseline")(Variant)


def build_variant(name: str, **options: Any) -> Variant:
    cls = VARIANTS.get(name)
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:  # unknown option names, impossible values
        raise UserError(f"variant `{name}`: bad model.variant_options ({e})") from None
