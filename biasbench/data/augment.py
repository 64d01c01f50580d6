"""Augmentations named by `data.augment`: batched ones on tensors, and per-image pipelines.

A batched augmentation is `fn(x, generator) -> x` on a float batch (B, C, H, W) on the batch's
device; one that only moves pixels (crops, flips) sets `fn.moves_pixels_only = True` and then
gets the uint8 batch, before scaling. Its random numbers come from a CPU generator seeded per
(run seed, epoch), so a resumed run sees the same ones. `crop_flip` is one gather per batch.

A `PerImageAugment` (`vit`, `timm`) runs image by image in DataLoader workers (see
`biasbench.data.loader.ImageLoader`), plus an evaluation transform (resize, centre-crop) that
`build_data` applies once to in-memory validation and test images, and the evaluation loader
applies per image to images streamed from disk. Its settings are `data.augment_options`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from biasbench.errors import UserError, did_you_mean
from biasbench.registry import Registry

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Image = Any  # one image: a uint8 tensor (C, H, W), or a PIL image decoded from a file
# (image shape (C, H, W), mean, std, options) -> transform of one image to a normalised float tensor.
TrainTransformFactory = Callable[[tuple[int, ...], tuple | None, tuple | None, dict[str, Any]],
                                 Callable[[Image], torch.Tensor]]
# (side in pixels, options) -> transform of one image to a uint8 tensor (C, side, side).
EvalTransformFactory = Callable[[int, dict[str, Any]], Callable[[Image], torch.Tensor]]


@dataclass(frozen=True)
class PerImageAugment:
    """A per-image training pipeline (it normalises) and the matching evaluation transform.

    `options` are its settings with their defaults; `data.augment_options` overrides them by name
    and `check_options` refuses what makes no sense, before any data is read."""

    train: TrainTransformFactory
    eval: EvalTransformFactory | None
    describe: str
    options: dict[str, Any] = field(default_factory=dict)
    check_options: Callable[[dict[str, Any]], None] = lambda opts: None


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


def as_tensor_image(image: Image) -> torch.Tensor:
    """A uint8 tensor (C, H, W) for a PIL image or such a tensor."""
    if isinstance(image, torch.Tensor):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(image)


def _vit_train(shape: tuple[int, ...], mean: tuple | None, std: tuple | None, options: dict) -> Callable:
    from torchvision.transforms import v2

    _, h, w = shape
    steps = [
        v2.Lambda(as_tensor_image),
        v2.RandomResizedCrop((h, w), scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=9),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    steps.append(v2.RandomErasing(p=0.25))  # erases to 0, the mean after normalisation
    return v2.Compose(steps)


def _resize_center_crop_image(image: Image, resize: int, crop: int) -> torch.Tensor:
    return resize_center_crop(as_tensor_image(image)[None], resize, crop)[0]


def _vit_eval(side: int, options: dict) -> Callable[[Image], torch.Tensor]:
    """Resize to 9/8 of the side (36 for 32 px), centre-crop back."""
    return functools.partial(_resize_center_crop_image, resize=round(side * 36 / 32), crop=side)


AUGMENTS.register("vit")(PerImageAugment(
    train=_vit_train, eval=_vit_eval,
    describe="RandomResizedCrop(scale 0.08-1) + flip + RandAugment(2, m9) + normalise + RandomErasing(0.25); "
             "eval: resize 36, centre-crop 32",
))


def get_augment(name: str) -> Augment | PerImageAugment:
    return AUGMENTS.get(name)


def augment_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The augmentation's settings: its defaults with `data.augment_options` applied and checked."""
    aug = get_augment(name)
    allowed = aug.options if isinstance(aug, PerImageAugment) else {}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        known = f"; its options: {', '.join(sorted(allowed))}" if allowed else "; it has no options"
        raise UserError(f"data.augment_options: augmentation `{name}` has no option `{unknown[0]}`"
                        f"{did_you_mean(unknown[0], allowed)}{known}")
    options = {**allowed, **given}
    if isinstance(aug, PerImageAugment):
        aug.check_options(options)
    return options


def eval_transform(name: str) -> EvalTransformFactory | None:
    aug = get_augment(name)
    return aug.eval if isinstance(aug, PerImageAugment) else None


def apply_eval_images(transform: Callable[[Image], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The evaluation transform of every image of a uint8 batch (N, C, H, W), as one tensor."""
    if len(x) == 0:
        return x
    return torch.stack([transform(image) for image in x])


def check_image_batch(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise UserError(f"augmentation `{name}` needs images (N, C, H, W); this data set has inputs of shape "
                        f"{tuple(x.shape[1:])}; set data.augment: none")
