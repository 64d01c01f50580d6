"""`timm`: timm's own transform factory (`timm.data.create_transform`), as the DNRT authors use it.

The options (`data.augment_options`) are `create_transform`'s, with the DNRT authors' values as
defaults (their `build_timm_aug_kwargs`, horrible-dong/DNRT `qtcls/datasets/__init__.py`):
RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) with a random choice of bilinear or bicubic
interpolation, horizontal flip 0.5, RandAugment `rand-m9-mstd0.5-inc1` (2 ops, each applied with
probability 0.5, magnitude 9 with noise 0.5, timm's "increasing" op set), normalisation, random
erasing 0.25 in `pixel` mode (Gaussian noise). Evaluation: resize to floor(side / crop_pct)
(36 for 32 px, 256 for 224 px, bilinear), centre-crop `side`.

One difference from the authors' call, which changes nothing: they pass `color_jitter=0.4`,
which timm ignores whenever RandAugment is on; the default here is 0, which says what happens,
and a colour jitter that timm would ignore is refused.

Posterize as the authors' environment ran it: timm's "increasing" posterize keeps
`4 - int(magnitude / 10 * 4)` bits, 0 when the noisy magnitude is clipped at 10 (about 1 image in
500 here). Pillow up to 12 returned an all-black image for 0 bits (its mask `~(2**8 - 1)` clears
every bit); Pillow 13 raises "bits must be between or equal to 1 and 8", which would stop a
training in its first epoch. The posterize ops of the built RandAugment are therefore given
`posterize_old_pillow`, the old Pillow lookup table written out, so the pipeline gives the same
images whatever Pillow is installed.

The pipeline works on PIL images (timm's ops are PIL ops): in-memory uint8 images are converted
per image; images read from files arrive as PIL images. Its random numbers come from Python's
`random`, NumPy and torch, which the loader seeds per image (see `biasbench.data.loader`).
"""

from __future__ import annotations

from typing import Any

import torch

from biasbench.data.augment import AUGMENTS, Image, PerImageAugment
from biasbench.errors import UserError

# The DNRT authors' training and evaluation settings (color_jitter: see the module docstring).
DNRT_OPTIONS: dict[str, Any] = {
    "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3], "hflip": 0.5, "vflip": 0.0, "color_jitter": 0.0,
    "auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "random", "re_prob": 0.25, "re_mode": "pixel",
    "re_count": 1, "crop_pct": 0.875, "eval_interpolation": "bilinear",
}
_TRAIN_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "interpolation", "re_prob",
               "re_mode", "re_count")


_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize_old_pillow(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's `posterize` with Pillow <= 12's `ImageOps.posterize`: keeps the top `bits_to_keep`
    bits of every channel; 0 bits gives a black image (Pillow 13 refuses 0)."""
    if bits_to_keep >= 8:
        return img
    mask = ~(2 ** (8 - bits_to_keep) - 1)
    lut = [i & mask for i in range(256)]
    return img.point(lut * len(img.getbands()))


def use_old_pillow_posterize(transform: Any) -> int:
    """Gives every posterize op of timm's auto-augment transforms inside `transform` (a Compose)
    `posterize_old_pillow`; returns how many ops it replaced."""
    from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment

    ops = []
    for t in transform.transforms:
        if isinstance(t, (RandAugment, AugMixAugment)):
            ops += t.ops
        elif isinstance(t, AutoAugment):
            ops += [op for sub_policy in t.policy for op in sub_policy]
    replaced = [op for op in ops if op.name in _POSTERIZE_OPS]
    for op in replaced:
        op.aug_fn = posterize_old_pillow
    return len(replaced)


class PilFirst:
    """Applies a PIL pipeline to a PIL image or a uint8 tensor (C, H, W), converted first."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, image: Image) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            from PIL import Image as PIL

            image = PIL.fromarray(image.permute(1, 2, 0).numpy())
        return self.transform(image)

    def __repr__(self) -> str:
        return f"PilFirst({self.transform!r})"


def train_kwargs(options: dict[str, Any], side: int, mean: tuple, std: tuple) -> dict[str, Any]:
    """`create_transform` arguments for training, in the DNRT authors' form."""
    kwargs = {k: options[k] for k in _TRAIN_KEYS}
    kwargs.update(scale=tuple(options["scale"]), ratio=tuple(options["ratio"]),
                  auto_augment=options["auto_augment"] or None)
    return dict(input_size=side, is_training=True, use_prefetcher=False, no_aug=False, mean=tuple(mean),
                std=tuple(std), re_num_splits=0, separate=False, **kwargs)


def _train(shape: tuple[int, ...], mean: tuple | None, std: tuple | None, options: dict[str, Any]) -> PilFirst:
    from timm.data import create_transform

    c, h, w = shape
    if c != 3 or h != w or mean is None or std is None:
        raise UserError(f"augmentation `timm` needs normalised square RGB images; this data set has images of "
                        f"shape {shape}; use data.augment: vit or crop_flip")
    transform = create_transform(**train_kwargs(options, h, mean, std))
    use_old_pillow_posterize(transform)
    return PilFirst(transform)


def _eval(side: int, options: dict[str, Any]) -> PilFirst:
    from timm.data import create_transform

    # normalize=False: uint8 out, scaled and normalised on the training device like every batch
    return PilFirst(create_transform(input_size=side, is_training=False, use_prefetcher=False,
                                     crop_pct=options["crop_pct"], interpolation=options["eval_interpolation"],
                                     normalize=False))


def _check(options: dict[str, Any]) -> None:
    aa = options["auto_augment"]
    if options["color_jitter"] and aa and "3a" not in aa:
        raise UserError(f"data.augment_options.color_jitter is {options['color_jitter']}, but timm ignores colour "
                        f"jitter when auto_augment ({aa}) is on; set color_jitter: 0 or auto_augment: null")
    if options["re_mode"] not in ("const", "rand", "pixel"):
        raise UserError(f"data.augment_options.re_mode must be const, rand or pixel, got {options['re_mode']!r}")
    for key in ("hflip", "vflip", "re_prob"):
        if not 0 <= options[key] <= 1:
            raise UserError(f"data.augment_options.{key} is a probability in [0, 1], got {options[key]!r}")
    try:  # the factory itself checks the rest (the RandAugment string, interpolation names)
        _train((3, 32, 32), (0.5,) * 3, (0.25,) * 3, options)
        _eval(32, options)
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        raise UserError(f"data.augment_options are not valid for timm's create_transform: {e}") from None


AUGMENTS.register("timm")(PerImageAugment(
    train=_train, eval=_eval, options=DNRT_OPTIONS, check_options=_check,
    describe="timm.data.create_transform (defaults: the DNRT authors' RandomResizedCrop 0.08-1 random "
             "bilinear/bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25 pixel); "
             "eval: resize side/0.875, centre-crop",
))
