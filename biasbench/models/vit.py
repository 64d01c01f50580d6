"""ViT-Tiny for 32 px inputs (DNRT's `vit_tiny_patch4_32`, timm's layout).

Patch embedding (conv, patch 4) -> class token + learned position embedding (65 tokens for
32 px) -> `depth` pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with qkv bias,
MLP with ratio 4, stochastic depth rising linearly to `drop_path`) -> LayerNorm -> the class
token -> Linear. timm's init: truncated normal (std .02) for Linear weights and the position
embedding, zero biases.

The MLP's activation feeds fc2, so it is an `act_linear` unit: the `raa` variant makes it RAA
(one shift per token), 769 parameters per block for dim 192; fc1's bias feeds that activation,
so a variant that moves the shift into fc2 (`dac`, `preact`) drops it. ARR reads the class token
at the output of every block (the authors' code: before the final norm). The activation is
GELU unless `model.variant_options.activation` says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps, class_token
from biasbench.models.variants import Variant


class DropPath(nn.Module):
    """Stochastic depth per sample, scaled by 1/keep in training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_head)) v, fused
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(
        self, variant: Variant, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = variant.linear(dim, hidden, bias=True, role="mlp_fc1", feeds_activation=True)
        self.act_fc2 = variant.act_linear(hidden, dim, bias=True, role="mlp_fc2")
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.act_fc2(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    param_roles = {"cls_token": "other", "pos_embed": "other"}  # embeddings: no decay, not biases

    # The sizes have no defaults here: the registered builder's signature holds them, once.
    def __init__(self, variant: Variant, image_size: tuple[int, int], in_channels: int, num_classes: int, *,
                 patch: int, dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        h, w = image_size
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not divisible by patch {patch}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch) + 1, dim))
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # numbers, also when built on meta
        self.blocks = nn.ModuleList([Block(variant, dim, heads, mlp_ratio, qkv_bias, r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.dim, self.depth = dim, depth
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def response_taps(self) -> Taps:
        return Taps(list(self.blocks), [self.dim] * self.depth, class_token)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


@register_model("vit_tiny_patch4", summary="ViT-Tiny for 32 px (patch 4, dim 192, depth 12, 3 heads), DNRT's",
                inputs="images", offers=("activations", "act_linear", "response_taps"), activation="gelu",
                taps=VisionTransformer.response_taps,
                tiny_options={"patch": 2, "dim": 8, "depth": 2, "heads": 2, "drop_path": 0.0})
def vit_tiny_patch4(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    patch: int = 4,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path: float = 0.1,
) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"vit_tiny_patch4 needs images (C, H, W), got input shape {input_shape}")
    return VisionTransformer(variant, (input_shape[1], input_shape[2]), in_channels, num_classes, patch=patch, dim=dim,
                             depth=depth, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path)
