"""DNRT variants (spec section 4): `raa`, `arr` and `dnrt` (RAA + ARR).

- `raa`: every activation the model builds through its units becomes RAA of the same form
  (the model's `activation` option: gelu or relu): `RAA` over the last dimension for dense
  units (per token in a ViT), `RAA2d` per pixel over channels for conv units.
- `arr`: baseline units, plus the ARR loss term on the model's response layers (a model that
  subclasses `ResponseModel`: vit_tiny_patch4, resnet18, resnet_s). Options `lam`, `momentum`,
  `target` (pre: the paper, post: the authors' code).
- `dnrt`: both.
"""

from __future__ import annotations

from torch import nn

from biasbench.layers.raa import RAA, RAA2d
from biasbench.models.response import ARRConfig
from biasbench.models.variants import VARIANTS, Variant


class _RAAUnits(Variant):
    def act(self, num_features: int, dims: int = 2) -> nn.Module:
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"RAA has a gelu and a relu form, not `{self.activation}`")
        return RAA2d(num_features, self.activation) if dims == 2 else RAA(num_features, self.activation)


class _ARRVariant(Variant):
    # A variant that adds a loss term: the trainer refuses a model that offers none.
    adds_loss_terms = True

    def __init__(
        self, activation: str = "relu", lam: float = 10.0, momentum: float = 0.1, target: str = "pre"
    ):
        super().__init__(activation)
        if lam < 0 or not 0 < momentum <= 1 or target not in ("pre", "post"):
            raise ValueError(
                "ARR needs lam >= 0, momentum in (0, 1] and target pre or post; "
                f"got lam={lam}, momentum={momentum}, target={target!r}"
            )
        self.arr = ARRConfig(float(lam), float(momentum), target)  # type: ignore[arg-type]


@VARIANTS.register("raa")
class RAAVariant(_RAAUnits):
    name = "raa"


@VARIANTS.register("arr")
class ARRVariant(_ARRVariant):
    name = "arr"


@VARIANTS.register("dnrt")
class DNRTVariant(_ARRVariant, _RAAUnits):
    name = "dnrt"
