"""DNRT's transformer families at 32 px, built by timm: DeiT-Tiny, CaiT-XXS, TNT-Small.

The DNRT authors' repository defines only its ViT (`qtcls/models/vit_example.py`,
`vit_tiny_patch4_32`: patch 4 on 32 px, 64 patches + the class token); the other families come
from the framework its README names, horrible-dong/QTClassification (`qtcls/models/`), which we
follow where it defines them (docs/architectures.md):

- `deit_tiny_patch4`: timm's `deit_tiny_patch16_224` (dim 192, depth 12, 3 heads) at patch 4;
  architecturally ViT-Tiny. `distilled: true` builds timm's `deit_tiny_distilled_patch16_224`
  instead (a distillation token and head, averaged with the class head): the only DeiT class
  the authors' framework defines (`qtcls/models/deit.py`, VisionTransformerDistilled; 5,365,076
  parameters at 10 classes), so the DNRT recipes set it.
- `cait_xxs_patch4`: timm's `cait_xxs24_224` (dim 192, 24 self-attention blocks, 4 heads,
  LayerScale 1e-5, 2 class-attention blocks) at patch 4.
- `tnt_small_patch4`: timm's legacy TNT, `tnt_s_legacy_patch16_224` (outer dim 384, inner dim
  24, depth 12: the block's `norm1_proj` over the 24 inner values, `proj` with a bias, no
  `norm2_proj`), which is the authors' `qtcls/models/tnt.py`: their `tnt_s_patch4_32` (in the
  framework until February 2024, when DNRT was written) loads into it strictly and gives the
  same outputs. Patch 4 with their `first_stride` 4: the 7x7 stem conv strides 4, so each 4x4
  patch holds one inner "pixel" of 24 values (`pixel_stride: 1` gives 16 inner pixels).
- `pvt_tiny` (PVT v1) is written out in `pvt_v1.py`: timm has none.

The MLP activation is the variant's (`variant.act(hidden, dims=1)`, GELU by default): passed as
timm's own `act_layer` (a zero-argument factory, which timm's `Mlp` calls) where every MLP of
the model has one width (DeiT, CaiT); swapped into each MLP after creation, its width read from
the MLP's `fc2`, where widths differ (TNT's inner and outer MLPs). So `raa` puts RAA in every
MLP and `model.variant_options.activation` selects any activation of the table. timm writes
`act -> fc2` itself, so these models offer no `act_linear` (dac, preact and mba are refused).

ARR (`arr`, `dnrt`) reads the class token at the output of every block that carries one, as the
DNRT code does for its ViT: DeiT's 12 blocks, CaiT's 2 class-attention blocks (its 24
self-attention blocks see no class token), TNT's 12 blocks (the outer tokens' class token).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps, class_token
from biasbench.models.variants import Variant

_DNRT = dict(inputs="images", offers=("activations", "response_taps"), activation="gelu")


def _create(name: str, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    import timm

    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"{name} reads square images (C, S, S), got input shape {input_shape}")
    return timm.create_model(name, pretrained=False, **kwargs)


def _mlp_activation(variant: Variant, hidden: int) -> Callable[[], nn.Module]:
    """timm's `act_layer`: called once per MLP, with no arguments."""
    return lambda: variant.act(hidden, dims=1)


def _swap_mlp_activations(net: nn.Module, variant: Variant) -> None:
    from timm.layers import Mlp

    for mlp in net.modules():
        if isinstance(mlp, Mlp):
            mlp.act = variant.act(mlp.fc2.in_features, dims=1)


def _check_patch(side: int, patch: int) -> None:
    if patch < 1 or side % patch:
        raise ValueError(f"image side {side} is not divisible by patch {patch}")


# -- DeiT-Tiny --------------------------------------------------------------------------------
def _deit_taps(net: nn.Module) -> Taps:
    return Taps(list(net.blocks), [net.embed_dim] * len(net.blocks), class_token)


@register_model("deit_tiny_patch4", summary="DeiT-Tiny at 32 px (timm; patch 4, dim 192, depth 12, 3 heads)",
                taps=_deit_taps, tiny_options={"dim": 8, "depth": 1, "heads": 2, "drop_path": 0.0}, **_DNRT)
def deit_tiny_patch4(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                     patch: int = 4, dim: int = 192, depth: int = 12, heads: int = 3, drop_path: float = 0.1,
                     distilled: bool = False) -> nn.Module:
    _check_patch(input_shape[-1], patch)
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return _create(name, input_shape, num_classes=num_classes, in_chans=in_channels, img_size=input_shape[-1],
                   patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, drop_path_rate=drop_path,
                   act_layer=_mlp_activation(variant, 4 * dim))


# -- CaiT-XXS ---------------------------------------------------------------------------------
def _cait_taps(net: nn.Module) -> Taps:
    blocks = list(net.blocks_token_only)  # class attention: each returns the class token (N, 1, d)
    return Taps(blocks, [net.embed_dim] * len(blocks), class_token)


@register_model("cait_xxs_patch4", summary="CaiT-XXS-24 at 32 px (timm; patch 4, dim 192, 24 + 2 blocks)",
                taps=_cait_taps, tiny_options={"dim": 8, "depth": 1, "heads": 2, "class_depth": 1, "drop_path": 0.0,
                                              "layer_scale": 1.0},
                **_DNRT)
def cait_xxs_patch4(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                    patch: int = 4, dim: int = 192, depth: int = 24, heads: int = 4, class_depth: int = 2,
                    layer_scale: float = 1e-5, drop_path: float = 0.1) -> nn.Module:
    """`layer_scale`: LayerScale's initial value (1e-5 for CaiT-XXS-24)."""
    _check_patch(input_shape[-1], patch)
    return _create("cait_xxs24_224", input_shape, num_classes=num_classes, in_chans=in_channels,
                   img_size=input_shape[-1], patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                   init_values=layer_scale, depth_token_only=class_depth, drop_path_rate=drop_path,
                   act_layer=_mlp_activation(variant, 4 * dim))


# -- TNT-Small --------------------------------------------------------------------------------
def tnt_class_token(output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A TNT block returns (inner pixel tokens, outer patch tokens): the outer class token."""
    return output[1][:, 0]


def _tnt_taps(net: nn.Module) -> Taps:
    return Taps(list(net.blocks), [net.embed_dim] * len(net.blocks), tnt_class_token)


@register_model("tnt_small_patch4", summary="TNT-Small at 32 px (timm's legacy TNT; patch 4, stride 4, dim 384/24)",
                taps=_tnt_taps, tiny_options={"dim": 8, "inner_dim": 4, "depth": 1, "heads": 2, "inner_heads": 1,
                                              "drop_path": 0.0}, **_DNRT)
def tnt_small_patch4(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                     patch: int = 4, pixel_stride: int = 4, dim: int = 384, inner_dim: int = 24, depth: int = 12,
                     heads: int = 6, inner_heads: int = 4, drop_path: float = 0.1) -> nn.Module:
    """`pixel_stride`: the stem conv's stride (their `first_stride`); each patch holds
    ceil(patch / pixel_stride)**2 inner pixels."""
    side = input_shape[-1]
    _check_patch(side, patch)
    if patch % pixel_stride and pixel_stride % patch:
        raise ValueError(f"pixel_stride {pixel_stride} and patch {patch}: one must divide the other, so each "
                         f"patch holds whole inner pixels")
    if (side - 1) // pixel_stride + 1 != side // patch * -(-patch // pixel_stride):
        raise ValueError(f"pixel_stride {pixel_stride} does not tile {side}-px images into {side // patch} patches "
                         f"per side; use a pixel_stride of at most patch {patch}")
    net = _create("tnt_s_legacy_patch16_224", input_shape, num_classes=num_classes, in_chans=in_channels,
                  img_size=input_shape[-1], patch_size=patch, first_stride=pixel_stride, embed_dim=dim,
                  inner_dim=inner_dim, depth=depth, num_heads_outer=heads, num_heads_inner=inner_heads,
                  drop_path_rate=drop_path)
    _swap_mlp_activations(net, variant)
    return net
