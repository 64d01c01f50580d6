"""A small CNN for the spine's bundled data and the real-data studies: stem conv, four 3x3 conv
units, GAP, dense.

Stages by width (w, 2w, 4w): a unit's `stage` is the stage of the features its activation reads.
ARR taps the last normalised output of each stage (what the next unit's activation reads), as
the ResNets tap their stages' outputs.
"""

from __future__ import annotations

from torch import nn

from biasbench.models import register_model
from biasbench.models.contract import Taps, pooled
from biasbench.models.variants import Variant


class SmallCNN(nn.Sequential):
    """The layers in order (state-dict keys 0, 1, ...), and where each stage ends."""

    def __init__(self, layers: list[nn.Module], stage_ends: list[int], widths: list[int]):
        super().__init__(*layers)
        self.stage_ends, self.widths = stage_ends, widths

    def response_taps(self) -> Taps:
        return Taps([self[i] for i in self.stage_ends], self.widths, pooled)


@register_model("cnn", summary="small CNN: stem, four 3x3 conv units (w, 2w, 4w), GAP, dense", inputs="images",
                offers=("activations", "act_linear", "stages", "response_taps"), taps=SmallCNN.response_taps,
                tiny_options={"width": 4})
def cnn(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
        width: int = 32) -> nn.Module:
    w = width
    stage = {w: 1, 2 * w: 2, 4 * w: 3}
    plan = [(w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2)]  # (in, out, stride)
    layers: list[nn.Module] = [variant.conv2d(in_channels, w, 3, padding=1), variant.norm(w)]
    for c_in, c_out, stride in plan:
        layers += [variant.act_conv2d(c_in, c_out, 3, stride=stride, padding=1, stage=stage[c_in]),
                   variant.norm(c_out)]
    layers.append(variant.act_pool_linear(4 * w, num_classes, stage=3))
    # stage ends: the norms after the first unit (w), the third (2w) and the fourth (4w)
    return SmallCNN(layers, [3, 7, 9], [w, 2 * w, 4 * w])
