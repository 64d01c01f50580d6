"""The authors' RandAugment (`timm` augmentation) under the installed Pillow: posterize as old Pillow did it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from biasbench.data.augment import AUGMENTS, augment_options
from biasbench.data.timm_augment import posterize_old_pillow


def _pipeline():
    return AUGMENTS.get("timm").train((3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), augment_options("timm", {}))


def _posterize_ops(pipeline):
    from timm.data.auto_augment import RandAugment

    rand_augment = [t for t in pipeline.transform.transforms if isinstance(t, RandAugment)]
    assert len(rand_augment) == 1
    return [op for op in rand_augment[0].ops if op.name.startswith("Posterize")]


def _old_pillow_reference(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Pillow <= 12's ImageOps.posterize: `i & ~(2**(8 - bits) - 1)` on every value."""
    return pixels & np.uint8(~(2 ** (8 - bits) - 1) & 0xFF)


@pytest.mark.parametrize("bits", range(0, 9))
def test_old_pillow_posterize_equals_the_bit_mask(bits):
    pixels = np.random.default_rng(bits).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    got = np.asarray(posterize_old_pillow(Image.fromarray(pixels), bits))
    assert np.array_equal(got, _old_pillow_reference(pixels, bits))
    if 1 <= bits < 8:  # where every Pillow accepts the call, it agrees with Pillow's own
        assert np.array_equal(got, np.asarray(ImageOps.posterize(Image.fromarray(pixels), bits)))
    if bits == 0:
        assert not got.any()  # the old result: an all-black image


def test_the_authors_randaugment_runs_20000_images_and_gives_black_for_zero_bits():
    """39 in 20,000 draws reached bits = 0 (and raised under Pillow 13) before the fix."""
    pipeline = _pipeline()
    ops = _posterize_ops(pipeline)
    assert [op.name for op in ops] == ["PosterizeIncreasing"] and ops[0].aug_fn is posterize_old_pillow
    calls: list[tuple[int, bool]] = []

    def recording(img, bits, **kw):
        out = posterize_old_pillow(img, bits, **kw)
        calls.append((bits, bool(np.asarray(out).any())))
        return out

    ops[0].aug_fn = recording
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no black pixel to start with
    for i in range(20_000):
        out = pipeline(images[i % 64])
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
    zero_bits = [nonblack for bits, nonblack in calls if bits == 0]
    assert 15 <= len(zero_bits) <= 80, len(zero_bits)  # P(magnitude >= 10) * P(posterize chosen)
    assert not any(zero_bits)
    assert {bits for bits, _ in calls} <= {0, 1, 2}  # magnitude 9 +- 0.5 -> 4 - int(m * 0.4)
