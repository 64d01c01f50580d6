"""DNRT variants (spec section 4): `raa`, `arr` and `dnrt` (RAA + ARR).

- `raa`: every activation the model builds through its units becomes RAA of the same form
  (the activation, `gelu` or `relu`: the two forms the paper defines): `RAA` over the last
  dimension for dense units (per token in a ViT), `RAA2d` per pixel over channels for conv
  units. Needs a model whose activations are built through units.
- `arr`: baseline units, plus the ARR loss term on the model's taps (the `response_taps`
  capability: a ViT's blocks, a ResNet's stages). Options `lam`, `momentum`, `target` (pre: the
  paper, post: the authors' code).
- `dnrt`: both.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from biasbench.layers.arr import AggregatedResponseLoss, ResponseTap, Target
from biasbench.layers.raa import RAA, RAA2d
from biasbench.models.contract import Taps
from biasbench.models.variants import VARIANTS, Variant


@dataclass(frozen=True)
class ARRConfig:
    lam: float = 10.0  # 10 for CIFAR-10, 20 for CIFAR-100 (the paper)
    momentum: float = 0.1
    target: Target = "pre"  # pre: the paper; post: the authors' code


class _RAAUnits(Variant):
    activations = ("gelu", "relu")
    activation_rule = "has a GELU and a ReLU form (the DNRT paper's)"
    mechanism = (RAA, RAA2d)

    def act(self, num_features: int, dims: int = 2) -> nn.Module:
        form = self.activation or "gelu"
        return RAA2d(num_features, form) if dims == 2 else RAA(num_features, form)


class _ARRVariant(Variant):
    def __init__(self, activation: str | None = None, lam: float = 10.0, momentum: float = 0.1, target: str = "pre"):
        super().__init__(activation)
        if lam < 0 or not 0 < momentum <= 1 or target not in ("pre", "post"):
            raise ValueError(
                "ARR needs lam >= 0, momentum in (0, 1] and target pre or post; "
                f"got lam={lam}, momentum={momentum}, target={target!r}"
            )
        self.arr = ARRConfig(float(lam), float(momentum), target)  # type: ignore[arg-type]

    def loss_terms(self, taps: Taps | None, num_classes: int) -> dict[str, nn.Module]:
        assert taps is not None, "requires response_taps: check_applies refuses models without"
        cfg = self.arr
        tap = ResponseTap(taps.modules, taps.reduce)
        return {"arr": AggregatedResponseLoss(tap, taps.dims, num_classes, momentum=cfg.momentum, lam=cfg.lam,
                                              target=cfg.target)}


@VARIANTS.register("raa")
class RAAVariant(_RAAUnits):
    name = "raa"
    summary = "response-adaptive activation: x * Phi(x + w.x + b) or max(0, x + w.x + b) (DNRT)"
    requires = frozenset({"activations"})


@VARIANTS.register("arr")
class ARRVariant(_ARRVariant):
    name = "arr"
    summary = "aggregated response regularisation: a loss pulling responses to class means (DNRT)"
    requires = frozenset({"response_taps"})


@VARIANTS.register("dnrt")
class DNRTVariant(_ARRVariant, _RAAUnits):
    name = "dnrt"
    summary = "RAA and ARR together (DNRT)"
    requires = frozenset({"activations", "response_taps"})
