"""MLP: blocks of `Linear -> BN -> activation`, rectangular or pyramidal (the DAC SGEMM models).

Written as units: the first Linear reads raw input; every later Linear is the second half of an
"activation followed by dense" unit, so a variant can pre-activate it. The variant's
`dense_width_factor` narrows hidden widths (the DAC twin has about 1/sqrt(2) of the units).
"""

from __future__ import annotations

import math

from torch import nn

from biasbench.models import register_model
from biasbench.models.variants import Variant


def hidden_widths(depth: int, width: int, shape: str, factor: float = 1.0) -> list[int]:
    if depth < 1 or width < 1:
        raise ValueError("depth and width must be at least 1")
    if shape == "rectangular":
        widths = [width] * depth
    elif shape == "pyramidal":  # linear decrease from `width` to width/depth
        widths = [width * (depth - i) / depth for i in range(depth)]
    else:
        raise ValueError(f"shape must be rectangular or pyramidal, got {shape!r}")
    return [max(1, round(w * factor)) for w in widths]


@register_model("mlp", summary="Linear -> BN -> activation blocks, rectangular or pyramidal (SGEMM)",
                inputs="features", offers=("activations", "act_linear"),
                tiny_options={"depth": 2, "width": 8}, tiny_input=(6,))
def mlp(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
        depth: int = 3, width: int = 128, shape: str = "rectangular", bn: bool = True) -> nn.Module:
    in_features = math.prod(input_shape)
    widths = hidden_widths(depth, width, shape, variant.dense_width_factor)
    # Without BN, a hidden Linear feeds its activation directly and carries the shift itself (the
    # variant drops it when it moves the shift downstream); with BN, the norm's shift does.
    direct = not bn
    layers: list[nn.Module] = [nn.Flatten(), variant.linear(in_features, widths[0], bias=direct,
                                                            feeds_activation=direct)]
    if bn:
        layers.append(variant.norm(widths[0], dims=1))
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers.append(variant.act_linear(w_in, w_out, bias=direct, feeds_activation=direct))
        if bn:
            layers.append(variant.norm(w_out, dims=1))
    layers.append(variant.act_linear(widths[-1], num_classes, bias=True))
    return nn.Sequential(*layers)
