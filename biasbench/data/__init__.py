"""Data sets as in-memory tensors, looked up by name.

A data set builder is a function `(cfg: DataConfig) -> DataBundle`, registered with
`@register_dataset(name)`. Small and medium sets live in memory as tensors (uint8 images or
float features) and are batched by `TensorLoader` without per-sample Python work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from biasbench.errors import UserError
from biasbench.registry import Registry


@dataclass
class Split:
    x: torch.Tensor  # uint8 images (N, C, H, W) scaled by 1/255 at batch time, or float features
    y: torch.Tensor  # int64 class labels, or float targets (N,) / (N, k) for regression

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    train: Split
    val: Split | None
    test: Split
    task: Literal["classification", "regression"]
    num_outputs: int  # classes, or regression targets
    input_shape: tuple[int, ...]
    # Per-channel normalisation applied to every batch after augmentation (None: none).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # recorded in results: sizes, split, source

    def describe(self) -> dict[str, Any]:
        return {
            "train_size": len(self.train), "val_size": len(self.val) if self.val is not None else 0,
            "test_size": len(self.test), "task": self.task, "num_outputs": self.num_outputs,
            "input_shape": list(self.input_shape), **self.info,
        }


DatasetBuilder = Callable[..., DataBundle]
DATASETS: Registry[DatasetBuilder] = Registry("data set")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def build_data(cfg: Any, replicate: int = 0) -> DataBundle:
    """Build the data set a recipe's `data` section names; `replicate` picks the K-fold fold."""
    builder = DATASETS.get(cfg.name)
    bundle = builder(cfg, replicate=replicate)
    if len(bundle.train) == 0:
        raise UserError(f"data set `{cfg.name}` has an empty training split")
    return bundle


# Every module in this package registers its data sets when imported: adding a file is enough.
import sys as _sys  # noqa: E402

from biasbench.plugins import import_submodules as _import_submodules  # noqa: E402

_import_submodules(_sys.modules[__name__])
