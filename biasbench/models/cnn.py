"""A small CNN for the spine's bundled data: stem conv, four 3x3 conv units, GAP, dense."""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.variants import Variant


@register_model("cnn")
def cnn(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
        width: int = 32) -> nn.Module:
    w = width
    plan = [(w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2)]  # (in, out, stride)
    layers: list[nn.Module] = [variant.conv2d(in_channels, w, 3, padding=1), variant.norm(w)]
    for c_in, c_out, stride in plan:
        layers += [variant.act_conv2d(c_in, c_out, 3, stride=stride, padding=1), variant.norm(c_out)]
    layers.append(variant.act_pool_linear(4 * w, num_classes))
    return nn.Sequential(*layers)
