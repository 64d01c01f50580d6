"""`synthetic_images`: small generated images at a chosen size, for the smoke forms of models
that need CIFAR-sized inputs (AlexNet and VGG-11 pool 32 px down to 1; the bundled digits are
8 px). Each class is a smooth random template (low-frequency noise, upsampled); a sample is its
class's template plus pixel noise, stored as uint8 like every image set. Test images are a fixed
20%; validation comes from the rest as `data.val_fraction` says.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from biasbench.data import DataBundle, DatasetInfo, Split, register_dataset
from biasbench.data.common import channel_stats, check_options
from biasbench.data.splits import fraction_split, validation_split
from biasbench.errors import UserError

_OPTIONS = {"image_size": 32, "channels": 3, "classes": 4, "num_samples": 512, "noise": 0.3, "seed": 0}


def _shape(o: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    o = {**_OPTIONS, **o}
    return (int(o["channels"]), int(o["image_size"]), int(o["image_size"])), int(o["classes"])


def templates(classes: int, channels: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(classes, channels, size, size) in [0, 1]: 4x4 random values per channel, upsampled."""
    coarse = torch.rand(classes, channels, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@register_dataset("synthetic_images", DatasetInfo("generated class-template images (image_size, default 32 px)",
                                                    bundled=True, kind="images", shape=_shape))
def synthetic_images(cfg: Any, replicate: int = 0) -> DataBundle:
    o = check_options("synthetic_images", cfg.options, _OPTIONS)
    size, channels, classes, n = (int(o[k]) for k in ("image_size", "channels", "classes", "num_samples"))
    if min(size, channels, n) < 1 or classes < 2 or n < 5 * classes:
        raise UserError("data.options for synthetic_images: image_size, channels >= 1, classes >= 2, "
                        "num_samples >= 5 * classes")
    g = torch.Generator().manual_seed(int(o["seed"]))
    y = torch.arange(n) % classes
    pixels = templates(classes, channels, size, g)[y] + float(o["noise"]) * torch.randn(n, channels, size, size,
                                                                                         generator=g)
    x = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    rest, test = fraction_split(y, 0.2, 0)
    tr, va, split_info = validation_split(y[rest], cfg, replicate)
    train = Split(x[rest][tr], y[rest][tr])
    mean, std = channel_stats(train.x)
    return DataBundle(train, Split(x[rest][va], y[rest][va]) if len(va) else None, Split(x[test], y[test]),
                      "classification", classes, (channels, size, size), mean=mean, std=std,
                      info={"source": "synthetic_images", **o, **split_info})
