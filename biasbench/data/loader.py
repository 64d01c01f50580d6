"""Batching in-memory tensors: a seeded permutation per epoch and index slicing, no workers.

The order of epoch e depends only on (seed, e), so a run resumed at epoch e sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from biasbench.data import DataBundle, Split
from biasbench.data.augment import AUGMENTS, Augment, no_augment


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch, purpose).
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.y)
        full, rest = divmod(n, self.batch_size)
        # A training batch of one sample breaks BatchNorm: fold such a remainder away.
        return full + (1 if rest > 1 or (rest == 1 and not self.shuffle) else 0)

    def _prepare(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if g is not None:
            x = self.augment(x, g)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)).to(self.device)
            g = epoch_generator(self.seed, self.epoch, stream=1)
        else:
            order, g = None, None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            yield self._prepare(self.x[idx], g), self.y[idx]


def make_train_loader(bundle: DataBundle, cfg, batch_size: int, device: torch.device, seed: int):
    """The training batches for a recipe's `data` section: in-memory tensors, batched augmentation.

    Anything returned here must offer `set_epoch(e)`, `__len__`, `__iter__` yielding (x, y) on
    `device`, and attributes `device` and `y` (the training targets, for counting samples).
    """
    return TensorLoader(bundle, bundle.train, batch_size, device, shuffle=True,
                        augment=AUGMENTS.get(cfg.augment), seed=seed)
