"""DNRT's transformer families at 32 px, built by timm: DeiT-Tiny, CaiT-XXS, PVT-Tiny, TNT-Small.

The DNRT authors' repository defines only its ViT (`qtcls/models/vit_example.py`,
`vit_tiny_patch4_32`: patch 4 on 32 px, 64 patches + the class token); for the other families
we keep timm's ImageNet configurations and pick patch sizes that suit 32 px the same way
(docs/architectures.md):

- `deit_tiny_patch4`: timm's `deit_tiny_patch16_224` (dim 192, depth 12, 3 heads) at patch 4;
  architecturally ViT-Tiny. `distilled: true` builds timm's `deit_tiny_distilled_patch16_224`
  instead (a distillation token and head, averaged with the class head), the DeiT the authors'
  framework (horrible-dong/QTClassification, `qtcls/models/deit.py`) defines.
- `cait_xxs_patch4`: timm's `cait_xxs24_224` (dim 192, 24 self-attention blocks, 4 heads,
  LayerScale 1e-5, 2 class-attention blocks) at patch 4.
- `tnt_small_patch4`: timm's `tnt_s_patch16_224` (outer dim 384, inner dim 24, depth 12) at
  patch 4 with pixel stride 1: 64 patches of 4x4 = 16 inner pixels, the 16 of TNT-S at 224 px.
- `pvt_tiny`: timm has no PVT v1. PVT-Tiny's configuration (depths 2-2-2-2, dims
  64-128-320-512, heads 1-2-5-8, MLP ratios 8-8-4-4, reduction ratios 8-4-2-1) in timm's PVT v2
  blocks, which is timm's `pvt_v2_b1` (overlapping patch embedding, a depthwise conv in the
  MLP, no position embedding, no class token). Its stride-4 stem gives 8x8 tokens at 32 px, as
  PVT's patch 4 does; the reduction ratios then shrink every stage's keys to one token.

The MLP activation is the variant's (`variant.act(hidden, dims=1)`, GELU by default): passed as
timm's own `act_layer` (a zero-argument factory, which timm's `Mlp` calls) where every MLP of
the model has one width (DeiT, CaiT); swapped into each MLP after creation, its width read from
the MLP's `fc2`, where widths differ (TNT's inner and outer MLPs, PVT's stages) or the
constructor takes no `act_layer` (TNT, PVT). So `raa` puts RAA in every MLP and
`model.variant_options.activation` selects any activation of the table. timm writes
`act -> fc2` itself, so these models offer no `act_linear` (dac, preact and mba are refused).

ARR (`arr`, `dnrt`) reads the class token at the output of every block that carries one, as the
DNRT code does for its ViT: DeiT's 12 blocks, CaiT's 2 class-attention blocks (its 24
self-attention blocks see no class token), TNT's 12 blocks (the outer tokens' class token);
PVT has no class token: the mean over each block's tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    from timm.models.pvt_v2 import MlpWithDepthwiseConv

    for mlp in net.modules():
        if isinstance(mlp, (Mlp, MlpWithDepthwiseConv)):
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


@register_model("tnt_small_patch4", summary="TNT-Small at 32 px (timm; patch 4, pixel stride 1, dim 384/24)",
                taps=_tnt_taps, tiny_options={"dim": 8, "inner_dim": 4, "depth": 1, "heads": 2, "inner_heads": 1,
                                              "drop_path": 0.0}, **_DNRT)
def tnt_small_patch4(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                     patch: int = 4, pixel_stride: int = 1, dim: int = 384, inner_dim: int = 24, depth: int = 12,
                     heads: int = 6, inner_heads: int = 4, drop_path: float = 0.1) -> nn.Module:
    _check_patch(input_shape[-1], patch)
    net = _create("tnt_s_patch16_224", input_shape, num_classes=num_classes, in_chans=in_channels,
                  img_size=input_shape[-1], patch_size=patch, first_stride=pixel_stride, embed_dim=dim,
                  inner_dim=inner_dim, depth=depth, num_heads_outer=heads, num_heads_inner=inner_heads,
                  drop_path_rate=drop_path)
    _swap_mlp_activations(net, variant)
    return net


# -- PVT-Tiny ---------------------------------------------------------------------------------
def mean_token(output: torch.Tensor) -> torch.Tensor:
    """A block's (N, T, d) tokens -> (N, d): their mean (PVT has no class token)."""
    return output.mean(dim=1)


def _pvt_taps(net: nn.Module) -> Taps:
    # timm's feature_info: each stage's width
    blocks = [(block, info["num_chs"]) for stage, info in zip(net.stages, net.feature_info, strict=True)
              for block in stage.blocks]
    return Taps([b for b, _ in blocks], [d for _, d in blocks], mean_token)


def _pvt_grid(side: int, sr_ratios: list[int]) -> None:
    """Each stage's token grid must hold the keys' reduction window (a conv of that size)."""
    grid = (side - 1) // 4 + 1  # the 7x7 / stride 4 overlapping stem
    for i, ratio in enumerate(sr_ratios):
        if i:
            grid = (grid - 1) // 2 + 1  # 3x3 / stride 2 between stages
        if grid < ratio:
            raise ValueError(f"stage {i + 1} has {grid}x{grid} tokens, fewer than its reduction ratio {ratio}: "
                             f"give larger images or smaller sr_ratios")


@register_model("pvt_tiny", summary="PVT-Tiny's configuration in timm's PVT v2 blocks (pvt_v2_b1) at 32 px",
                taps=_pvt_taps, tiny_options={"dims": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "heads": [1, 1, 1, 1],
                                              "sr_ratios": [1, 1, 1, 1], "drop_path": 0.0}, **_DNRT)
def pvt_tiny(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (2, 2, 2, 2),
             heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8.0, 8.0, 4.0, 4.0),
             sr_ratios: Sequence[int] = (8, 4, 2, 1), drop_path: float = 0.1) -> nn.Module:
    """Defaults: PVT-Tiny's (one entry per stage)."""
    _pvt_grid(input_shape[-1], list(sr_ratios))
    net = _create("pvt_v2_b1", input_shape, num_classes=num_classes, in_chans=in_channels, embed_dims=tuple(dims),
                  depths=tuple(depths), num_heads=tuple(heads), mlp_ratios=tuple(float(r) for r in mlp_ratios),
                  sr_ratios=tuple(sr_ratios), drop_path_rate=drop_path)
    _swap_mlp_activations(net, variant)
    return net
