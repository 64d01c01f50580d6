"""PVT-Tiny (Pyramid Vision Transformer v1), as the DNRT authors' framework builds it.

horrible-dong/QTClassification `qtcls/models/pvt.py` (from whai362/PVT `classification/pvt.py`),
`pvt_tiny`: four stages, dims 64-128-320-512, depths 2-2-2-2, heads 1-2-5-8, MLP ratios
8-8-4-4, spatial-reduction ratios 8-4-2-1, qkv bias, LayerNorm eps 1e-6 in the blocks (the
patch embeddings' and the reduction's LayerNorms keep eps 1e-5, as theirs). Each stage: a
non-overlapping patch embedding (a conv of kernel = stride = 4 for the first stage, 2 after it,
then LayerNorm), learned position embeddings, blocks whose attention reduces its keys and values
with a strided conv of kernel = stride = the reduction ratio (+ LayerNorm). The last stage
prepends a class token, which the head reads after the final LayerNorm. timm has no PVT v1
(its `pvt_v2_*` are PVT v2: overlapping embeddings, a depthwise conv in the MLP, no position
embeddings).

The position embeddings are learned at a grid: `pos_embed_side` (default: the input side) says
which image side they are built for. Their `pvt_tiny` fixes it at 224 and, on 32-px images,
interpolates them bilinearly to the grid it meets (12,721,418 parameters at 10 classes, against
12,340,490 built at 32 px); `pos_embed_side: 224` builds that form.

The MLP activation is the variant's (`variant.act(hidden, dims=1)`, GELU by default), so `raa`
and `dnrt` put RAA in every MLP. ARR reads the mean over each block's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps
from biasbench.models.variants import Variant

_BLOCK_EPS = 1e-6  # their pvt_tiny's norm_layer (blocks and the final norm)


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from the map reduced `sr_ratio` times."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:  # the patch tokens as a map (the last stage, with a class token, has ratio 1)
            x = self.norm(self.sr(x.permute(0, 2, 1).reshape(b, c, *hw)).reshape(b, c, -1).permute(0, 2, 1))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act, nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, sr_ratio: int, drop_path: float, act: nn.Module):
        from timm.layers import DropPath

        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = Mlp(dim, hidden, act)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Patch embedding (conv + LayerNorm), position embeddings at `grid`, blocks."""

    param_roles = {"pos_embed": "other", "cls_token": "other"}  # embeddings: no decay, not biases

    def __init__(self, in_ch: int, dim: int, patch: int, grid: int, blocks: list[Block], class_token: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)
        self.embed_norm = nn.LayerNorm(dim)
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + class_token, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.blocks = nn.ModuleList(blocks)

    def position(self, hw: tuple[int, int]) -> torch.Tensor:
        """The position embeddings at grid `hw`: bilinear from the built grid, as their code does."""
        first = int(self.cls_token is not None)
        pos = self.pos_embed[:, first:]
        if hw != (self.grid, self.grid):
            pos = F.interpolate(pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2), size=hw,
                                mode="bilinear").reshape(1, -1, hw[0] * hw[1]).permute(0, 2, 1)
        return torch.cat((self.pos_embed[:, :first], pos), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.position(hw)
        for block in self.blocks:
            x = block(x, hw)
        return x if self.cls_token is not None else x.transpose(1, 2).reshape(x.shape[0], -1, *hw)


class PVTv1(nn.Module):
    def __init__(self, stages: list[Stage], num_classes: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        dim = stages[-1].pos_embed.shape[-1]
        self.norm = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x)[:, 0])


def _init(net: PVTv1) -> None:
    """Their init: truncated normal (std 0.02) for Linear weights, position embeddings and the
    class token; zero biases; LayerNorm 1 / 0; convs keep PyTorch's default."""
    for stage in net.stages:
        nn.init.trunc_normal_(stage.pos_embed, std=0.02)
        if stage.cls_token is not None:
            nn.init.trunc_normal_(stage.cls_token, std=0.02)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


def mean_token(output: torch.Tensor) -> torch.Tensor:
    """A block's (N, T, d) tokens -> (N, d): their mean."""
    return output.mean(dim=1)


def _pvt_taps(net: nn.Module) -> Taps:
    blocks = [block for stage in net.stages for block in stage.blocks]
    return Taps(blocks, [b.norm1.normalized_shape[0] for b in blocks], mean_token)


def _grids(side: int, stages: int, patch: int) -> list[int]:
    """Each stage's token grid for images of `side`: patch, then halved by every later stage (their
    PatchEmbed's side // 2**(i+1) // 2 for patch 4)."""
    return [side // patch // 2 ** i for i in range(stages)]


def _check(side: int, pos_side: int, sr_ratios: Sequence[int], patch: int) -> None:
    n = len(sr_ratios)
    if sr_ratios[-1] != 1:
        raise ValueError(f"the last stage carries the class token, so its sr_ratio must be 1, got {sr_ratios[-1]}")
    if side % (patch * 2 ** (n - 1)):
        raise ValueError(f"image side {side} must be divisible by {patch * 2 ** (n - 1)} (patch {patch}, "
                         f"then {n - 1} halvings)")
    for i, (grid, ratio) in enumerate(zip(_grids(side, n, patch), sr_ratios)):
        if grid < ratio:
            raise ValueError(f"stage {i + 1} has {grid}x{grid} tokens, fewer than its reduction ratio {ratio}: "
                             f"give larger images or smaller sr_ratios")
    if min(_grids(pos_side, n, patch)) < 1:
        raise ValueError(f"pos_embed_side {pos_side} leaves a stage without tokens")


@register_model("pvt_tiny", summary="PVT-Tiny (PVT v1, as the DNRT authors' framework builds it)",
                taps=_pvt_taps, inputs="images", offers=("activations", "response_taps"), activation="gelu",
                tiny_options={"dims": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "heads": [1, 1, 1, 1],
                              "sr_ratios": [1, 1, 1, 1], "patch": 1, "drop_path": 0.0})
def pvt_tiny(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
             dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (2, 2, 2, 2),
             heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8.0, 8.0, 4.0, 4.0),
             sr_ratios: Sequence[int] = (8, 4, 2, 1), patch: int = 4, drop_path: float = 0.1,
             pos_embed_side: int | None = None) -> nn.Module:
    """Defaults: PVT-Tiny's (one entry per stage). `pos_embed_side`: the image side the position
    embeddings are built for (default the input's; 224 as the authors' `pvt_tiny`)."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"pvt_tiny reads square images (C, S, S), got input shape {input_shape}")
    if len({len(dims), len(depths), len(heads), len(mlp_ratios), len(sr_ratios)}) != 1:
        raise ValueError("dims, depths, heads, mlp_ratios and sr_ratios need one entry per stage each")
    side = input_shape[-1]
    pos_side = pos_embed_side or side
    _check(side, pos_side, sr_ratios, patch)
    rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()  # their stochastic depth rule
    stages, first, n = [], 0, len(dims)
    for i, grid in enumerate(_grids(pos_side, n, patch)):
        hidden = int(dims[i] * mlp_ratios[i])
        blocks = [Block(dims[i], heads[i], hidden, sr_ratios[i], rates[first + j], variant.act(hidden, dims=1))
                  for j in range(depths[i])]
        first += depths[i]
        stages.append(Stage(in_channels if i == 0 else dims[i - 1], dims[i], patch if i == 0 else 2, grid, blocks,
                            class_token=i == n - 1))
    net = PVTv1(stages, num_classes)
    _init(net)
    return net
