"""Data sets as in-memory tensors, looked up by name.

A data set builder is a function `(cfg: DataConfig, replicate: int = 0) -> DataBundle`,
registered with `@register_dataset(name, info=DatasetInfo(...))` (see docs/data.md for every
set); the info is what `biasbench list datasets` and `count` read without loading anything. Sets live in memory
as tensors (uint8 images or float features) and are batched by `TensorLoader` without
per-sample Python work, or by `ImageLoader` when `data.augment` names a per-image pipeline.
Sets too large for memory (ImageNet) stay on disk as `FileSplit`s, decoded per image in
DataLoader workers (`ImageLoader` for training, `FileEvalLoader` for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
class FileSplit:
    """Images left on disk (sets too large for memory, e.g. ImageNet): each is decoded when a
    batch needs it, in DataLoader workers, through the recipe's per-image pipeline."""

    files: list[str]
    y: torch.Tensor  # int64 class labels

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    train: Split | FileSplit
    val: Split | FileSplit | None
    test: Split | FileSplit | None  # None: dropped (data.test_split: false)
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
            "test_size": len(self.test) if self.test is not None else 0, "task": self.task,
            "num_outputs": self.num_outputs,
            "input_shape": list(self.input_shape), **self.info,
        }


DatasetBuilder = Callable[..., DataBundle]
DATASETS: Registry[DatasetBuilder] = Registry("data set")
Shape = tuple[tuple[int, ...], int]


def _from_the_data(options: dict[str, Any]) -> Shape | None:
    return None


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, declared with its registration (read without loading it)."""

    summary: str
    bundled: bool  # ships with an installed package or is generated: no data.root needed
    task: str = "classification"
    # (input shape, outputs) under these data.options; None: only the data can tell
    shape: Callable[[dict[str, Any]], Shape | None] = _from_the_data
    reads_root: bool = True  # (when not bundled) read from files under data.root; False: built from other sets


_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, info: DatasetInfo | None = None) -> Callable[[DatasetBuilder], DatasetBuilder]:
    _INFO[name] = info or DatasetInfo("", bundled=False)
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    DATASETS.get(name)  # an unknown name fails here, with suggestions
    return _INFO[name]


def check_data(cfg: Any) -> None:
    """What `build_data` refuses first, without reading any data: an unknown data set or
    augmentation, an augmentation option, a data set read from disk whose `data.root` does not
    exist (unless `data.download: true`). `train` and a sweep check it before any run starts;
    the loader then checks the files."""
    from biasbench.data.augment import augment_options, get_augment
    from biasbench.data.common import _download_hint, data_root

    info = dataset_info(cfg.name)
    get_augment(cfg.augment)
    augment_options(cfg.augment, cfg.augment_options)
    if info.bundled or not info.reads_root or cfg.download:
        return
    root = data_root(cfg, cfg.name, "its files (docs/data.md)")
    if not root.is_dir():
        fetch = ", or set data.download: true to fetch it" if _download_hint(cfg, cfg.name) else ""
        raise UserError(f"data set `{cfg.name}`: data.root `{root}` does not exist; download the data set and "
                        f"point data.root at it (docs/data.md){fetch}")


def build_data(cfg: Any, replicate: int = 0) -> DataBundle:
    """Build the data set a recipe's `data` section names; `replicate` picks the K-fold fold."""
    from biasbench.data.augment import PerImageAugment, augment_options, check_image_batch, get_augment

    builder = DATASETS.get(cfg.name)
    aug = get_augment(cfg.augment)  # an unknown augmentation or option fails before any loading
    options = augment_options(cfg.augment, cfg.augment_options)
    bundle = builder(cfg, replicate=replicate)
    if not getattr(cfg, "test_split", True):  # dropped before anything reads it (tuning trials)
        bundle = replace(bundle, test=None)
    refuse_non_finite(bundle, cfg.name)
    if len(bundle.train) == 0:
        raise UserError(f"data set `{cfg.name}` has an empty training split")
    if isinstance(bundle.train, FileSplit):
        if not isinstance(aug, PerImageAugment) or aug.eval is None:
            raise UserError(f"data set `{cfg.name}` reads images from disk as it trains, which needs a per-image "
                            f"pipeline with an evaluation transform: set data.augment: timm (or vit), "
                            f"not {cfg.augment}")
        return bundle  # its evaluation images are transformed per image, as they are read
    if isinstance(aug, PerImageAugment) and aug.eval is not None:
        check_image_batch(cfg.augment, bundle.train.x)
        bundle = apply_eval_transform(bundle, aug.eval(bundle.train.x.shape[-1], options), cfg.augment)
    return bundle


def refuse_non_finite(bundle: DataBundle, name: str) -> None:
    """NaN or infinity in a data set's numbers would train (and be judged a diverged run, or
    skew every statistic), so every loader's output is refused in one line that names the split,
    the first bad example and what to do. Images stored as integers cannot hold either."""
    from biasbench.data.graph import GraphSplit

    for part, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
        if isinstance(split, GraphSplit):
            tensors = {"node features": split.graph.x}
        elif isinstance(split, Split):
            tensors = {"inputs": split.x, "targets": split.y}
        else:
            continue
        for what, t in tensors.items():
            if not t.is_floating_point():
                continue
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
            if bad.any():
                row = int(bad.nonzero()[0])
                raise UserError(f"data set `{name}`: {int(bad.sum())} example(s) of the {part} split have "
                                f"non-finite {what} (NaN or infinity), the first at row {row} of that split; "
                                f"fix or remove them in the data files")


def apply_eval_transform(bundle: DataBundle, transform: Callable[[Any], torch.Tensor], name: str) -> DataBundle:
    """Transform the validation and test images once (e.g. resize 36 + centre-crop 32)."""
    from biasbench.data.augment import apply_eval_images

    def apply(split: Split | None) -> Split | None:
        return None if split is None else Split(apply_eval_images(transform, split.x), split.y)

    val, test = apply(bundle.val), apply(bundle.test)
    shown = test if test is not None else val
    if shown is not None and tuple(shown.x.shape[1:]) != tuple(bundle.train.x.shape[1:]):
        raise UserError(f"augmentation `{name}` changes the evaluation image shape to "
                        f"{tuple(shown.x.shape[1:])}; training images are {tuple(bundle.train.x.shape[1:])}")
    return replace(bundle, val=val, test=test, info={**bundle.info, "eval_transform": name})


# Every module in this package registers its data sets when imported: adding a file is enough.
import sys as _sys  # noqa: E402

from biasbench.plugins import import_submodules as _import_submodules  # noqa: E402

_import_submodules(_sys.modules[__name__])
