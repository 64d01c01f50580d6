"""Augmentations named by `data.augment`: batched ones on tensors, and per-image pipelines.

A batched augmentation is `fn(x, generator) -> x` on a float batch (B, C, H, W) on the batch's
device; one that only moves pixels (crops, flips) sets `fn.moves_pixels_only = True` and then
gets the uint8 batch, before scaling. Its random numbers come from a CPU generator seeded per
(run seed, epoch), so a resumed run sees the same ones. `crop_flip` is one gather per batch.

A `PerImageAugment` (e.g. `vit`) is a torchvision.transforms.v2 pipeline run image by image in
DataLoader workers (see `biasbench.data.loader.ImageLoader`), plus an optional fixed transform
of the evaluation images that `build_data` applies once to the validation and test splits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from biasbench.errors import UserError
from biasbench.registry import Registry

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# (image shape (C, H, W), mean, std) -> transform of one uint8 image (C, H, W) to a float image.
TrainTransformFactory = Callable[[tuple[int, ...], tuple | None, tuple | None],
                                 Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class PerImageAugment:
    """A per-image training pipeline (normalises itself) and the matching evaluation transform."""

    train: TrainTransformFactory
    eval: Callable[[torch.Tensor], torch.Tensor] | None  # uint8 (N, C, H, W) -> uint8 (N, C, H', W')
    describe: str


AUGMENTS: Registry[Augment | PerImageAugment] = Registry("augmentation")


@AUGMENTS.register("none")
def no_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


no_augment.moves_pixels_only = True


def _crop_flip_index(b: int, h: int, w: int, pad: int, g: torch.Generator, device: torch.device,
                     flip_too: bool) -> torch.Tensor:
    """Flat indices (B, 1, H*W) into each padded image (Hp*Wp) for a random crop (and flip)."""
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(device)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip_too:
        flip = (torch.rand(b, generator=g) < 0.5).to(device)
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = dx[:, None] + cols  # (B, W)
    return (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w)


def random_crop(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad` and crop back at a random offset per image, as one gather."""
    return _gather_crop(x, g, pad, flip_too=False)


def _gather_crop(x: torch.Tensor, g: torch.Generator, pad: int, flip_too: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)
    index = _crop_flip_index(b, h, w, pad, g, x.device, flip_too)
    return padded.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@AUGMENTS.register("crop_flip")
def crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The CIFAR standard: pad 4, random crop, random horizontal flip, fused into one gather.

    Draws the same random numbers, in the same order, as `random_flip(random_crop(x, g), g)`.
    """
    return _gather_crop(x, g, pad=4, flip_too=True)


crop_flip.moves_pixels_only = True  # exact on uint8 too: the loader runs it before scaling


# ---------------------------------------------------------------------------------------------
# Per-image pipelines (torchvision.transforms.v2), run in DataLoader workers.
# ---------------------------------------------------------------------------------------------


def resize_center_crop(x: torch.Tensor, resize: int, crop: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) so the short side is `resize`, then centre-crop `crop`."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for lo in range(0, len(x), chunk):
        part = TF.resize(x[lo:lo + chunk], [resize], antialias=True)
        out.append(TF.center_crop(part, [crop, crop]))
    if not out:
        return x.new_zeros((0, x.shape[1], crop, crop))
    return torch.cat(out)


def _vit_train(shape: tuple[int, ...], mean: tuple | None, std: tuple | None) -> Callable:
    from torchvision.transforms import v2

    _, h, w = shape
    steps = [
        v2.RandomResizedCrop((h, w), scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=9),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    steps.append(v2.RandomErasing(p=0.25))  # erases to 0, the mean after normalisation
    return v2.Compose(steps)


def _vit_eval(x: torch.Tensor) -> torch.Tensor:
    """Evaluation images: resize to 9/8 of the size (36 for 32 px), centre-crop back."""
    h = x.shape[-1]
    return resize_center_crop(x, resize=round(h * 36 / 32), crop=h)


AUGMENTS.register("vit")(PerImageAugment(
    train=_vit_train, eval=_vit_eval,
    describe="RandomResizedCrop(scale 0.08-1) + flip + RandAugment(2, m9) + normalise + RandomErasing(0.25); "
             "eval: resize 36, centre-crop 32",
))


def get_augment(name: str) -> Augment | PerImageAugment:
    return AUGMENTS.get(name)


def eval_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    aug = get_augment(name)
    return aug.eval if isinstance(aug, PerImageAugment) else None


def check_image_batch(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise UserError(f"augmentation `{name}` needs images (N, C, H, W); this data set has inputs of shape "
                        f"{tuple(x.shape[1:])}; set data.augment: none")
