"""Pieces shared by the on-disk data sets: the root folder, missing files, statistics, bundles."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from biasbench.data import DataBundle, Split, data_root, fetch_hint, where_from
from biasbench.data.bundled import check_options  # one implementation, shared with the bundled sets
from biasbench.data.splits import validation_split
from biasbench.errors import UserError, did_you_mean

HOLDOUT_SEED = 0  # test splits carved from a training set never move, whatever data.split_seed says

__all__ = ["HOLDOUT_SEED", "NORMALIZATIONS", "check_options", "data_root", "require_files", "channel_stats",
           "normalization", "image_bundle"]


def require_files(cfg: Any, name: str, root: Path, files: Iterable[str]) -> None:
    """One line naming every expected file that is missing under `root`."""
    files = list(files)
    missing = [f for f in files if not (root / f).is_file()]
    if not missing:
        return
    where = f"data.root `{root}`" + ("" if root.is_dir() else " (which does not exist)")
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    hint = fetch_hint(cfg, name, " or set data.download: true to fetch them") or (
        f"; download the data set yourself{where_from(name)} and point data.root at it")
    raise UserError(f"data set `{name}`: {where} lacks {shown}; put the files there{hint}")


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1], exact, from histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        count = max(1.0, float(hist.sum()))
        mean = float((hist * values).sum()) / count
        var = float((hist * (values - mean) ** 2).sum()) / count
        means.append(round(mean, 6))
        stds.append(round(var**0.5, 6) if var > 1e-12 else 1.0)  # a constant channel: leave it as it is
    return tuple(means), tuple(stds)


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Per-channel (mean, std) constants a recipe can ask for (`data.options.normalization`) instead of
# statistics fitted on the training split (`fit`, the default). `dnrt`: the DNRT authors' constants
# (qtcls/datasets/__init__.py); their CIFAR-10 std (0.2023, ...) is not CIFAR-10's (about 0.247).
# `abn`: the ABN author's main.py (zorino96/Adaptive-Bias-Networks), the same CIFAR-10 constants.
_CIFAR10_COMMON = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
NORMALIZATIONS: dict[str, dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "dnrt": {"cifar10": _CIFAR10_COMMON,
             "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
             "imagenet": _IMAGENET},
    "imagenet": {"cifar10": _IMAGENET, "cifar100": _IMAGENET, "imagenet": _IMAGENET},
    "abn": {"cifar10": _CIFAR10_COMMON},
}


def normalization(name: str, choice: str, train_x: torch.Tensor | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, how) for `data.options.normalization`: `fit` on the training images, or constants."""
    if choice == "fit" and train_x is not None:
        return (*channel_stats(train_x), "fitted on the training split")
    table = NORMALIZATIONS.get(choice, {})
    if name not in table:
        choices = ["fit"] * (train_x is not None) + [c for c, sets in NORMALIZATIONS.items() if name in sets]
        raise UserError(f"data.options.normalization for `{name}` must be one of {', '.join(choices)}, "
                        f"got {choice!r}{did_you_mean(str(choice), choices)}")
    mean, std = table[name]
    return mean, std, f"{choice} constants"


def image_bundle(cfg: Any, replicate: int, train_x: torch.Tensor, train_y: torch.Tensor,
                 test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int, info: dict[str, Any],
                 val: tuple[torch.Tensor, torch.Tensor] | None = None, norm: str = "fit") -> DataBundle:
    """Validation from the training set (unless given); normalisation fitted on the training split,
    or the constants `norm` names."""
    if val is None:
        tr, va, split_info = validation_split(train_y, cfg, replicate)
        val_split = Split(train_x[va], train_y[va]) if len(va) else None
        train = Split(train_x[tr], train_y[tr])
    else:
        val_split, train, split_info = Split(*val), Split(train_x, train_y), {"val_split": "folder"}
    mean, std, how = normalization(cfg.name, norm, train.x)
    return DataBundle(train, val_split, Split(test_x, test_y), "classification", num_classes,
                      tuple(train_x.shape[1:]), mean=mean, std=std,
                      info={**info, **split_info, "mean": list(mean), "std": list(std), "normalization": how})
