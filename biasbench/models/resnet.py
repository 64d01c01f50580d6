"""CIFAR ResNets (He et al. 2016a, 2016b) in v1 (post-activation) and v2 (pre-activation) form.

`resnet{20,32,44,56}_{v1,v2}`: a 3x3 stem with 16*width channels, three stages of n = (depth-2)/6
basic blocks with 16/32/64 * width channels (strides 1, 2, 2), global average pooling and a
dense layer. Options: `width` (channel multiplier; `resnet20_v2` at width 4 is the DAC paper's
4.3M-parameter model) and `shortcut` ("A": identity, subsampled and zero-padded where the shape
changes, as in He et al.'s CIFAR networks and the default; "B": 1x1 projection).

Written in the variant's units so that every variant converts it (spec section 1):
- v1: the backbone carries the block's sum *before* its ReLU, and each consumer activates it:
  the next block's first conv through `act_conv2d`, the identity path through `backbone_act`,
  the head through `act_pool_linear`. In the baseline this is exactly
  `conv -> BN -> ReLU -> conv -> BN -> +input -> ReLU`; under DAC it becomes
  `DAC -> BN' -> DAC -> BN' -> +input` with a linear backbone.
- v2: `BN -> act_conv2d -> BN -> act_conv2d -> +input`; stem conv only; head `BN -> act -> GAP -> dense`.
Block convs pass `role="block_conv1"` / `"block_conv2"` and projections `role="shortcut"`, so a
variant can change only some of them; every unit passes the stage (1-3) of the features its
activation reads (the stem's are stage 1). ARR taps the output of each stage (its last block's
sum), globally pooled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps, pooled
from biasbench.models.variants import Variant

DEPTHS = (20, 32, 44, 56)


class SubsampleZeroPad(nn.Module):
    """Option-A shortcut: keep every `stride`-th position and pad the new channels with zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlockV1(nn.Module):
    def __init__(self, v: Variant, c_in: int, c_out: int, stride: int, shortcut: str, stages: tuple[int, int] = (1, 1)):
        super().__init__()
        s_in, s = stages  # the stage of the block's input, its own
        self.conv1 = v.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, role="block_conv1", stage=s_in)
        self.bn1 = v.norm(c_out)
        self.conv2 = v.act_conv2d(c_out, c_out, 3, padding=1, role="block_conv2", stage=s)
        self.bn2 = v.norm(c_out)  # feeds the block's trailing ReLU (through the sum)
        if stride == 1 and c_in == c_out:
            self.shortcut = v.backbone_act(c_in)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(v.act_conv2d(c_in, c_out, 1, stride=stride, role="shortcut", stage=s_in),
                                          v.norm(c_out))
        else:
            self.shortcut = nn.Sequential(v.backbone_act(c_in), SubsampleZeroPad(c_in, c_out, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x)))) + self.shortcut(x)


class BasicBlockV2(nn.Module):
    def __init__(self, v: Variant, c_in: int, c_out: int, stride: int, shortcut: str, stages: tuple[int, int] = (1, 1)):
        super().__init__()
        s_in, s = stages
        self.bn1 = v.norm(c_in)
        self.conv1 = v.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, role="block_conv1", stage=s_in)
        self.bn2 = v.norm(c_out)
        self.conv2 = v.act_conv2d(c_out, c_out, 3, padding=1, role="block_conv2", stage=s)
        # He et al.'s pre-activation projection reads the activated input, like conv1.
        self.projects = (stride != 1 or c_in != c_out) and shortcut == "B"
        if self.projects:
            self.shortcut = v.act_conv2d(c_in, c_out, 1, stride=stride, role="shortcut", stage=s_in)
        elif stride != 1 or c_in != c_out:
            self.shortcut = SubsampleZeroPad(c_in, c_out, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(x)
        return self.conv2(self.bn2(self.conv1(h))) + self.shortcut(h if self.projects else x)


class CifarResNet(nn.Sequential):
    """The layers in order (stem, blocks, head), and where each stage ends (for ARR's taps)."""

    def __init__(self, *layers: nn.Module, stage_ends: tuple[int, ...] = (), widths: tuple[int, ...] = ()):
        super().__init__(*layers)  # (a slice, model[a:b], is a CifarResNet without stages)
        self.stage_ends, self.widths = list(stage_ends), list(widths)

    def response_taps(self) -> Taps:
        return Taps([self[i] for i in self.stage_ends], list(self.widths), pooled)


def cifar_resnet(v: Variant, depth: int, version: str, num_classes: int, in_channels: int,
                 width: int = 1, shortcut: str = "A") -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer multiplier, got {width!r}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' (identity + zero padding) or 'B' (1x1 projection), got {shortcut!r}")
    n = (depth - 2) // 6
    block = BasicBlockV1 if version == "v1" else BasicBlockV2
    c = 16 * width
    layers: list[nn.Module] = [v.conv2d(in_channels, c, 3, padding=1, role="stem")]
    if version == "v1":
        layers.append(v.norm(c))  # feeds the stem's ReLU, applied by the first block's consumers
    c_in, ends = c, []
    for stage, c_out in enumerate((c, 2 * c, 4 * c), start=1):
        for i in range(n):
            stride = 2 if stage > 1 and i == 0 else 1
            s_in = max(stage - 1, 1) if i == 0 else stage
            layers.append(block(v, c_in, c_out, stride, shortcut, (s_in, stage)))
            c_in = c_out
        ends.append(len(layers) - 1)
    if version == "v2":
        layers.append(v.norm(c_in))
    layers.append(v.act_pool_linear(c_in, num_classes, stage=3))
    return CifarResNet(*layers, stage_ends=tuple(ends), widths=(c, 2 * c, 4 * c))


def _register(depth: int, version: str) -> None:
    @register_model(f"resnet{depth}_{version}", inputs="images",
                    summary=f"CIFAR ResNet-{depth} {version}: 3 stages of {(depth - 2) // 6} basic blocks "
                            "(16/32/64 x width)",
                    offers=("activations", "act_linear", "residual_blocks", "stages", "response_taps"),
                    taps=CifarResNet.response_taps)
    def build(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
              width: int = 1, shortcut: str = "A") -> nn.Module:
        return cifar_resnet(variant, depth, version, num_classes, in_channels, width, shortcut)


for _depth in DEPTHS:
    for _version in ("v1", "v2"):
        _register(_depth, _version)
