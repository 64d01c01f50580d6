"""Models that can feed DNRT's aggregated response regularisation (ARR).

A model that subclasses `ResponseModel` names its response layers (a ViT's blocks, a CNN's
stages) and how a layer's output becomes one vector per sample. When the variant asks for ARR
(`variant.arr` set, see `models/dnrt.py`), the builder calls `enable_arr`, and the trainer gets the
loss term from `model.loss_terms()` (see `trainer.build_criterion`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from biasbench.layers.arr import AggregatedResponseLoss, ResponseTap, Target
from biasbench.models.variants import Variant


@dataclass(frozen=True)
class ARRConfig:
    lam: float = 10.0  # 10 for CIFAR-10, 20 for CIFAR-100 (the paper)
    momentum: float = 0.1
    target: Target = "pre"  # pre: the paper; post: the authors' code


class ResponseModel(nn.Module):
    """Base for models with named response layers; `loss_terms()` is empty until ARR is enabled."""

    def __init__(self) -> None:
        super().__init__()
        self._arr: tuple[ARRConfig, ResponseTap, int] | None = None

    # -- what a subclass says ------------------------------------------------------------------
    def response_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def response_dims(self) -> list[int]:
        raise NotImplementedError

    @staticmethod
    def reduce_response(output: torch.Tensor) -> torch.Tensor:
        """A layer's output -> (B, d). Default: global average pool of (B, C, H, W) maps."""
        return output.mean(dim=(2, 3))

    # -- ARR --------------------------------------------------------------------------------------
    def enable_arr(self, cfg: ARRConfig, num_classes: int) -> None:
        tap = ResponseTap(self.response_layers(), self.reduce_response)
        self._arr = (cfg, tap, num_classes)

    def loss_terms(self) -> dict[str, nn.Module]:
        if self._arr is None:
            return {}
        cfg, tap, k = self._arr
        return {
            "arr": AggregatedResponseLoss(
                tap, self.response_dims(), k, momentum=cfg.momentum, lam=cfg.lam, target=cfg.target
            )
        }


def finish_variant_model(model: ResponseModel, variant: Variant, num_classes: int) -> ResponseModel:
    """Wire the variant's model-level requests (ARR) into a freshly built model."""
    arr = getattr(variant, "arr", None)
    if arr is not None:
        model.enable_arr(arr, num_classes)
    return model


def with_activation(variant: Variant, activation: str | None) -> Variant:
    """The variant with its activation set by the model's `activation` option (a copy)."""
    if activation is None or activation == variant.activation:
        return variant
    v = copy.copy(variant)
    v.activation = activation
    return v
