"""Data sets as in-memory tensors, looked up by name.

A data set builder is a function `(cfg: DataConfig, replicate: int = 0) -> DataBundle`,
registered with `@register_dataset(name, info=DatasetInfo(...))` (see docs/data.md for every
set); the info is what `list datasets`, `count`, `sweep --dry-run` and the missing-data messages
read without loading anything: input kind, shape, sizes, where the files come from. Sets live in memory
as tensors (uint8 images or float features) and are batched by `TensorLoader` without
per-sample Python work, or by `ImageLoader` when `data.augment` names a per-image pipeline.
Sets too large for memory (ImageNet) stay on disk as `FileSplit`s, decoded per image in
DataLoader workers (`ImageLoader` for training, `FileEvalLoader` for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from biasbench.data.augment import (
    PerImageAugment,
    apply_eval_images,
    augment_options,
    check_image_batch,
    get_augment,
)
from biasbench.errors import UserError
from biasbench.registry import Registry


@dataclass
class Split:
    x: torch.Tensor  # uint8 images (N, C, H, W) scaled by 1/255 at batch time, or float features
    y: torch.Tensor  # int64 class labels, or float targets (N,) / (N, k) for regression

    def __len__(self) -> int:
        return len(self.y)

    def numbers(self) -> dict[str, torch.Tensor]:
        """The tensors `refuse_non_finite` checks, by what a message calls them."""
        return {"inputs": self.x, "targets": self.y}


@dataclass
class FileSplit:
    """Images left on disk (sets too large for memory, e.g. ImageNet): each is decoded when a
    batch needs it, in DataLoader workers, through the recipe's per-image pipeline."""

    files: list[str]
    y: torch.Tensor  # int64 class labels

    def __len__(self) -> int:
        return len(self.y)

    def numbers(self) -> dict[str, torch.Tensor]:
        return {}  # images as files: decoded to integers, which cannot be NaN


class BatchLoader(Protocol):
    """What the trainer reads from any loader: batches (inputs, targets) on `device`, where the
    inputs are whatever the model's forward takes (a tensor, or a kind's own batch object that
    `__len__` counts and `[part]` slices along its examples, for data-parallel ranks)."""

    device: torch.device
    y: torch.Tensor  # the split's targets

    def set_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> None: ...
    def position(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


class KindSplit(Protocol):
    """A split of another input kind than tensors or image files (a graph's labelled nodes): it
    brings its own loader, and says which of its tensors must be finite. `data/loader.py` batches
    `Split` and `FileSplit` itself and hands any other split this way, knowing no kind by name."""

    y: torch.Tensor

    def __len__(self) -> int: ...
    def numbers(self) -> dict[str, torch.Tensor]: ...
    def loader(self, cfg: Any, batch_size: int, device: torch.device, shuffle: bool = False,
               seed: int = 0) -> BatchLoader: ...


@dataclass
class DataBundle:
    train: Split | FileSplit | KindSplit
    val: Split | FileSplit | KindSplit | None
    test: Split | FileSplit | KindSplit | None  # None: dropped (data.test_split: false)
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
class Sizes:
    """How many examples a data set's splits hold, as its declaration knows them."""

    train: int  # the training split, before `data.val_fraction` / `data.val_folds` take a part (see below)
    test: int
    # True: validation is carved from `train` by the recipe's data.val_fraction / val_folds;
    # False: `train` is already what the model trains on (the set has its own validation part).
    carves_validation: bool = True
    exact: bool = False  # read from the files on this machine; False: the official release's sizes


@dataclass(frozen=True)
class Download:
    """Where a data set read from files comes from, and whether `data.download: true` can fetch it."""

    source: str  # the page or address its files come from
    fetch: bool = False  # `data.download: true` fetches the files (through torchvision)
    also: str = ""  # another way to get them, said in every missing-data message


@dataclass(frozen=True)
class InputKind:
    """What one example of a data set is, and what generic code needs to handle it without
    knowing the kind: `example` builds the one-example batch `count` runs through a model (a
    batch of shape (1, *input_shape) of zeros unless the kind says otherwise)."""

    name: str
    example: Callable[[tuple[int, ...], torch.device | str, torch.dtype], Any]


def zeros_example(input_shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros((1, *input_shape), device=device, dtype=dtype)


INPUT_KINDS: Registry[InputKind] = Registry("input kind")
for _kind in ("images", "features", "sequences", "task_rows"):
    INPUT_KINDS.register(_kind)(InputKind(_kind, zeros_example))


def _sizes_by_building(cfg: Any) -> Sizes | None:
    return None


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, declared with its registration (read without loading it): what
    `list datasets`, `count`, the cost estimate of `sweep --dry-run` and every missing-data
    message read."""

    summary: str
    bundled: bool  # ships with an installed package or is generated: no data.root needed
    kind: str  # what one example is: a name in INPUT_KINDS (images, features, sequences, task_rows, graphs)
    task: str = "classification"
    # (input shape, outputs) under these data.options; None: only the data can tell
    shape: Callable[[dict[str, Any]], Shape | None] = _from_the_data
    # Split sizes under a recipe's `data` section (options, root): from the files' headers where
    # they are on this machine, else the official release's; None: only loading the data tells.
    # A bundled set is built to count it (milliseconds) and may leave this out.
    sizes: Callable[[Any], Sizes | None] = _sizes_by_building
    download: Download | None = None  # where the files come from (every set read from data.root declares it)
    reads_root: bool = True  # (when not bundled) read from files under data.root; False: built from other sets

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS.names():
            raise ValueError(f"input kind {self.kind!r} is not one of {', '.join(INPUT_KINDS.names())}")
        if self.bundled or not self.reads_root:
            return
        if self.download is None:
            raise ValueError(f"data set `{self.summary}` reads data.root: declare its `download` (where the files "
                             "come from)")
        if self.sizes is _sizes_by_building:
            raise ValueError(f"data set `{self.summary}` reads data.root: declare its `sizes` (a function that may "
                             "return None when only the data can tell)")


_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, info: DatasetInfo) -> Callable[[DatasetBuilder], DatasetBuilder]:
    _INFO[name] = info
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    DATASETS.get(name)  # an unknown name fails here, with suggestions
    return _INFO[name]


def fetch_hint(cfg: Any, name: str, words: str = " (or data.download: true to fetch it)") -> str:
    """`words` when data set `name` declares that `data.download: true` fetches it and the
    recipe has not set it; else nothing."""
    download = dataset_info(name).download
    return words if download is not None and download.fetch and not cfg.download else ""


def where_from(name: str) -> str:
    """Where a missing data set's files come from, as its declaration says."""
    download = dataset_info(name).download
    if download is None:
        return ""
    return f" (from {download.source}" + (f"; {download.also}" if download.also else "") + ")"


def data_root(cfg: Any, name: str, expected: str) -> Path:
    """`data.root` as a path; a clear line when it is not set."""
    if not cfg.root:
        raise UserError(f"data set `{name}` needs data.root, the folder holding {expected}; "
                        f"set it with --set data.root=PATH{fetch_hint(cfg, name)}")
    return Path(cfg.root).expanduser()


def check_data(cfg: Any) -> None:
    """What `build_data` refuses first, without reading any data: an unknown data set or
    augmentation, an augmentation option, a data set read from disk whose `data.root` does not
    exist (unless `data.download: true`). `train` and a sweep check it before any run starts;
    the loader then checks the files."""
    info = dataset_info(cfg.name)
    get_augment(cfg.augment)
    augment_options(cfg.augment, cfg.augment_options)
    refuse_unfetchable(cfg)
    if info.bundled or not info.reads_root or cfg.download:
        return
    root = data_root(cfg, cfg.name, "its files (docs/data.md)")
    if not root.is_dir():
        raise UserError(f"data set `{cfg.name}`: data.root `{root}` does not exist; download the data set"
                        f"{where_from(cfg.name)} and point data.root at it (docs/data.md)"
                        f"{fetch_hint(cfg, cfg.name, ', or set data.download: true to fetch it')}")


def refuse_unfetchable(cfg: Any) -> None:
    """`data.download: true` for a set read from files that its declaration says cannot be fetched:
    one line saying where they come from (it would otherwise be ignored, or fail inside
    torchvision). Sets without files of their own take it as it is (`multitask` hands it to its
    tasks)."""
    download = dataset_info(cfg.name).download
    if cfg.download and download is not None and not download.fetch:
        raise UserError(f"data set `{cfg.name}` cannot be downloaded by biasbench (data.download: true): get its "
                        f"files{where_from(cfg.name)}, point data.root at them and set data.download: false")


def build_data(cfg: Any, replicate: int = 0) -> DataBundle:
    """Build the data set a recipe's `data` section names; `replicate` picks the K-fold fold."""
    builder = DATASETS.get(cfg.name)
    refuse_unfetchable(cfg)
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
    for part, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
        if split is None:
            continue
        for what, t in split.numbers().items():
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
