"""Training and evaluation batches.

`TensorLoader`: in-memory tensors, a seeded permutation per epoch and index slicing, batched
augmentation on the batch's device, no workers. `ImageLoader`: the same interface backed by a
torch DataLoader for per-image pipelines (`PerImageAugment`: `vit`, `timm`) run in worker
processes, on in-memory images or on image files (`FileSplit`, decoded in the workers).
`FileEvalLoader`: evaluation batches of image files, decoded and resized in workers.

The order of epoch e, and every random number of its augmentation, depend only on (seed, e), so a
run resumed at epoch e sees exactly the batches an uninterrupted run would have seen. For
`ImageLoader` this holds whatever the number of workers: each image's transform runs with torch's,
Python's and NumPy's generators seeded from (seed, epoch, position in the epoch). Within an
epoch, `position()` says where the last batch handed out left the epoch (the batch index and,
for `TensorLoader`'s batched augmentation, its generator's state), and `set_epoch(e, position)`
starts there: a run resumed from a mid-epoch checkpoint sees the rest of the same epoch.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from biasbench.data import BatchLoader, DataBundle, FileSplit, KindSplit, Split
from biasbench.data.augment import (
    Augment,
    Image,
    PerImageAugment,
    augment_options,
    check_image_batch,
    get_augment,
    no_augment,
)
from biasbench.errors import UserError


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch, purpose).
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def num_batches(n: int, batch_size: int, shuffle: bool) -> int:
    full, rest = divmod(n, batch_size)
    # A training batch of one sample breaks BatchNorm: fold such a remainder away.
    return full + (1 if rest > 1 or (rest == 1 and not shuffle) else 0)


class TensorLoader:
    """Batches of (x, y) on `device`: uint8 images scaled to [0,1], augmented, normalised."""

    def __init__(self, bundle: DataBundle, split: Split, batch_size: int, device: torch.device,
                 shuffle: bool = False, augment: Augment = no_augment, seed: int = 0):
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        shape = (1, -1) + (1,) * (self.x.dim() - 2)
        self.mean = torch.tensor(bundle.mean, device=device).view(shape) if bundle.mean else None
        self.std = torch.tensor(bundle.std, device=device).view(shape) if bundle.std else None
        self._start: dict[str, Any] | None = None
        self._at, self._g = 0, None  # batches of this pass handed out; its augmentation generator

    def set_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> None:
        self.epoch, self._start = epoch, position

    def position(self) -> dict[str, Any]:
        """Where the last batch handed out left the epoch; read before the next is asked for (the
        generator is lazy: it has drawn nothing for a batch not yet asked for)."""
        return {"batch": self._at, "augment_rng": self._g.get_state() if self._g is not None else None}

    def __len__(self) -> int:
        return num_batches(len(self.y), self.batch_size, self.shuffle)

    def _prepare(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        # Pixel-moving augmentations (crop, flip) give the same result on uint8: run them there,
        # on a quarter of the bytes; then scale and normalise in place on the fresh float copy.
        early = g is not None and getattr(self.augment, "moves_pixels_only", False)
        if early:
            x = self.augment(x, g)
        fresh = x.dtype == torch.uint8
        x = x.float().div_(255.0) if fresh else x
        if g is not None and not early:
            x = self.augment(x, g)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std) if fresh else (x - self.mean) / self.std
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)).to(self.device)
            g = epoch_generator(self.seed, self.epoch, stream=1)
        else:
            order, g = None, None
        start, self._start = self._start or {}, None  # a position applies to one pass
        first = int(start.get("batch", 0))
        if first and g is not None:  # the augmentation's generator as it was after batch `first`
            g.set_state(start["augment_rng"])
        self._g = g
        for b in range(first, len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            self._at = b + 1
            if order is not None:
                idx = order[lo:hi]
                yield self._prepare(self.x.index_select(0, idx), g), self.y.index_select(0, idx)
            else:
                yield self._prepare(self.x[lo:hi], g), self.y[lo:hi]


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """torch's, Python's and NumPy's global generators seeded from `seed` (timm's ops draw from all
    three), and put back afterwards, so that the caller's streams (workers=0) are untouched."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed costs 100x more
        random.seed(seed)
        np.random.seed(seed & 0xFFFF_FFFF)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class TensorImages:
    """Images of an in-memory uint8 tensor (N, C, H, W), one at a time."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]


class FileImages:
    """Images of files, decoded to RGB PIL images as they are read (in DataLoader workers)."""

    def __init__(self, files: list[str]):
        self.files = files

    def __getitem__(self, index: int) -> Image:
        from PIL import Image as PIL

        path = self.files[index]
        try:
            with PIL.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, PIL.DecompressionBombError) as e:
            raise UserError(f"cannot decode image `{path}` ({type(e).__name__}: {e}); remove or replace the "
                            "file") from None


def images_of(split: Split | FileSplit) -> TensorImages | FileImages:
    return FileImages(split.files) if isinstance(split, FileSplit) else TensorImages(split.x)


class _SeededImages(Dataset):
    """Indexed by (index, seed): the image's transform runs under its own seed, in any process."""

    def __init__(self, images: TensorImages | FileImages, y: torch.Tensor, transform: Callable[[Image], torch.Tensor]):
        self.images, self.y, self.transform = images, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        with seeded_rngs(seed):
            return self.transform(self.images[index]), self.y[index]


class _TransformedImages(Dataset):
    """Indexed by position: the evaluation transform of each image, in order."""

    def __init__(self, images: FileImages, y: torch.Tensor, transform: Callable[[Image], torch.Tensor]):
        self.images, self.y, self.transform = images, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.y[index]


def _worker_errors(batches: Iterator) -> Iterator:
    """A UserError raised in a worker (an undecodable file) reaches the user as its one line."""
    try:
        yield from batches
    except UserError as e:
        last = str(e).strip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


class _EpochBatches(Sampler):
    """Batches of (index, per-image seed) in the order of epoch `epoch`, as `TensorLoader` shuffles."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch, self.first = n, batch_size, seed, 0, 0

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, shuffle=True)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist()
        g = epoch_generator(self.seed, self.epoch, stream=2)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        first, self.first = self.first, 0  # a mid-epoch start applies to one pass
        for b in range(first, len(self)):
            lo, hi = b * self.batch_size, min(self.n, (b + 1) * self.batch_size)
            yield list(zip(order[lo:hi], seeds[lo:hi], strict=True))


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1)))


class ImageLoader:
    """Training batches through a per-image pipeline in DataLoader workers; (x, y) on `device`."""

    def __init__(self, bundle: DataBundle, split: Split | FileSplit, batch_size: int, device: torch.device,
                 pipeline: PerImageAugment, seed: int = 0, workers: int | None = None,
                 options: dict[str, Any] | None = None):
        if isinstance(split, Split):
            check_image_batch("per-image", split.x)
        shape = tuple(split.x.shape[1:]) if isinstance(split, Split) else tuple(bundle.input_shape)
        self.y = split.y
        self.device = device
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        transform = pipeline.train(shape, bundle.mean, bundle.std, dict(pipeline.options, **(options or {})))
        self._batches = _EpochBatches(len(split.y), batch_size, seed)
        self._at = 0  # batches of the current epoch handed out
        self._loader = DataLoader(_SeededImages(images_of(split), split.y, transform), batch_sampler=self._batches,
                                  num_workers=self.workers, pin_memory=device.type == "cuda",
                                  persistent_workers=self.workers > 0,
                                  generator=torch.Generator().manual_seed(seed))  # not the global RNG

    def set_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> None:
        self._batches.epoch = epoch  # sampling runs in the main process: workers need not know
        self._batches.first = int((position or {}).get("batch", 0))  # per-image seeds need no state

    def position(self) -> dict[str, Any]:
        return {"batch": self._at}

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pinned = self.device.type == "cuda"
        self._at = self._batches.first
        for x, y in _worker_errors(iter(self._loader)):
            self._at += 1
            yield x.to(self.device, non_blocking=pinned), y.to(self.device, non_blocking=pinned)


class FileEvalLoader:
    """Evaluation batches of image files: decoded and resized (the pipeline's evaluation transform)
    in DataLoader workers, scaled and normalised on `device` like `TensorLoader`'s batches."""

    def __init__(self, bundle: DataBundle, split: FileSplit, batch_size: int, device: torch.device,
                 transform: Callable[[Image], torch.Tensor], workers: int | None = None):
        self.y = split.y
        self.device = device
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        self._loader = DataLoader(_TransformedImages(FileImages(split.files), split.y, transform),
                                  batch_size=batch_size, shuffle=False, num_workers=self.workers,
                                  pin_memory=device.type == "cuda", persistent_workers=self.workers > 0)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pinned = self.device.type == "cuda"
        for x, y in _worker_errors(iter(self._loader)):
            x = x.to(self.device, non_blocking=pinned).float().div_(255.0)
            yield x.sub_(self.mean).div_(self.std), y.to(self.device, non_blocking=pinned)


def make_train_loader(bundle: DataBundle, cfg, batch_size: int, device: torch.device, seed: int,
                      workers: int | None = None) -> TensorLoader | ImageLoader | BatchLoader:
    """The training batches for a recipe's `data` section.

    Batched augmentations (`none`, `crop_flip`) give a `TensorLoader`; per-image pipelines
    (`vit`, `timm`) an `ImageLoader` with `workers` processes (default: `cfg.workers`, else up to
    8, one per core). Either offers `set_epoch(e)`, `__len__`, `__iter__` yielding (x, y) on
    `device`, and attributes `device` and `y` (the training targets). A split of another input
    kind (`KindSplit`: a graph's nodes) brings its own loader.
    """
    if not isinstance(bundle.train, (Split, FileSplit)):
        return bundle.train.loader(cfg, batch_size, device, shuffle=True, seed=seed)
    aug = get_augment(cfg.augment)
    if isinstance(aug, PerImageAugment):
        workers = workers if workers is not None else cfg.workers
        return ImageLoader(bundle, bundle.train, batch_size, device, aug, seed=seed, workers=workers,
                           options=augment_options(cfg.augment, cfg.augment_options))
    if aug is not no_augment:
        check_image_batch(cfg.augment, bundle.train.x)
    return TensorLoader(bundle, bundle.train, batch_size, device, shuffle=True, augment=aug, seed=seed)


def make_eval_loader(bundle: DataBundle, split: Split | FileSplit | KindSplit, cfg, batch_size: int,
                     device: torch.device) -> TensorLoader | FileEvalLoader | BatchLoader:
    """Evaluation batches of a split, in order: in-memory splits are already transformed (see
    `build_data`); image files get the pipeline's evaluation transform as they are read; a split
    of another kind brings its own loader."""
    if isinstance(split, Split):
        return TensorLoader(bundle, split, batch_size, device)
    if not isinstance(split, FileSplit):
        return split.loader(cfg, batch_size, device)
    aug = get_augment(cfg.augment)
    transform = aug.eval(bundle.input_shape[-1], augment_options(cfg.augment, cfg.augment_options))
    return FileEvalLoader(bundle, split, batch_size, device, transform, workers=cfg.workers)
