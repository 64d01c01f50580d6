"""Batched augmentations on tensors: whole batches at once, on the batch's device.

An augmentation is `fn(x, generator) -> x` on a float batch (B, C, H, W); its random numbers
come from a CPU generator seeded per (run seed, epoch), so a resumed run sees the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from biasbench.registry import Registry

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTS: Registry[Augment] = Registry("augmentation")


@AUGMENTS.register("none")
def no_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


def random_crop(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad` and crop back at a random offset per image, as one gather."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@AUGMENTS.register("crop_flip")
def crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The CIFAR standard: pad 4, random crop, random horizontal flip."""
    return random_flip(random_crop(x, g, pad=4), g)
