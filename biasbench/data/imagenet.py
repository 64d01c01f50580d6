"""`imagenet`: ImageNet-1K, or a class subset such as ImageNet-100, read from the standard
ImageFolder layout and streamed from disk.

    data.root/train/<wnid>/*.JPEG     (the training images, one folder per class)
    data.root/val/<wnid>/*.JPEG       (the validation images sorted into class folders, e.g. by
                                       pytorch/examples' imagenet/extract_ILSVRC.sh)

1.28 million images do not fit in memory as tensors, so the splits are `FileSplit`s: the files
are listed once (os.scandir, no stat per file) and each image is decoded when a batch needs it,
in DataLoader workers (`data.workers`), by the recipe's per-image pipeline (`data.augment: timm`,
224 px, as DeiT and the DNRT authors). Decoding uses PIL on the CPU, because timm's augmentation
works on PIL images; torchvision's GPU JPEG decoder is not used (the results' `data.decode` says
so). The official `val/` set is the test set, as in the DNRT authors' code; validation, when
`data.val_fraction` > 0, comes out of train/.

Options: `image_size` (224), `classes` (a text file of WordNet ids, one per line, `#` comments:
train on those classes only, labelled in sorted order; relative paths are read from the current
folder, like data.root) and `normalization` (`imagenet` constants, or `dnrt`, the same values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from biasbench.data import DataBundle, DatasetInfo, Download, FileSplit, Sizes, register_dataset
from biasbench.data.common import check_options, data_root, normalization
from biasbench.data.image_folder import IMAGE_SUFFIXES
from biasbench.data.splits import validation_split
from biasbench.errors import UserError

OPTIONS = {"image_size": 224, "classes": None, "normalization": "imagenet"}
DECODE = "PIL (CPU) in DataLoader workers: timm's augmentation works on PIL images, so no GPU decoding"


def read_class_list(path: Path) -> list[str]:
    """WordNet ids from a class-list file: one per line, blank lines and `#` comments ignored."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"data.options.classes: class list `{path}` does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"data.options.classes: cannot read `{path}` ({type(e).__name__})") from None
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = [i for i in ids if i]
    if not ids:
        raise UserError(f"data.options.classes: `{path}` names no classes; write one WordNet id per line")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UserError(f"data.options.classes: `{path}` names {twice[0]} more than once")
    return sorted(ids)


def _class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def scan(folder: Path, classes: list[str]) -> tuple[list[str], torch.Tensor]:
    """(image files, labels) of `folder/<class>/*` for the given classes, in class then name order."""
    files, labels = [], []
    for label, name in enumerate(classes):
        with os.scandir(folder / name) as entries:
            mine = sorted(e.path for e in entries if e.is_file() and _is_image(e.name))
        if not mine:
            raise UserError(f"data set `imagenet`: `{folder / name}` holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += mine
        labels += [label] * len(mine)
    return files, torch.tensor(labels, dtype=torch.int64)


def _classes(root: Path, class_list: str | None) -> list[str]:
    train, val = _class_folders(root / "train"), set(_class_folders(root / "val"))
    classes = read_class_list(Path(class_list).expanduser()) if class_list else train
    if not classes:
        raise UserError(f"data set `imagenet`: `{root / 'train'}` has no class folders; expected train/<wnid>/*.JPEG")
    for split, found in (("train", set(train)), ("val", val)):
        missing = [c for c in classes if c not in found]
        if missing:
            raise UserError(f"data set `imagenet`: {len(missing)} of {len(classes)} classes have no folder under "
                            f"`{root / split}` (first: {', '.join(missing[:3])}); is data.root the ImageNet folder "
                            "with train/ and val/ sorted into class folders?")
    return classes


def _imagenet_sizes(cfg: Any) -> Sizes | None:
    """ImageNet-1K's 1,281,167 training and 50,000 validation images; a class subset
    (`data.options.classes`): only its folders tell."""
    return Sizes(1_281_167, 50_000) if cfg.options.get("classes") is None else None


def _imagenet_shape(options: dict[str, Any]) -> tuple[tuple[int, ...], int] | None:
    """(3, S, S) for image_size S, 1,000 classes; a class subset: only its list tells how many."""
    side = int(options.get("image_size", OPTIONS["image_size"]))
    return ((3, side, side), 1000) if options.get("classes") is None else None


@register_dataset("imagenet", DatasetInfo("ImageNet-1K (or a class subset), JPEG folders streamed from disk",
                                          bundled=False, kind="images",
                                          shape=_imagenet_shape, sizes=_imagenet_sizes,
                                          download=Download("image-net.org (after registering), val/ sorted into "
                                                            "class folders")))
def imagenet(cfg: Any, replicate: int = 0) -> DataBundle:
    opts = check_options("imagenet", cfg.options, OPTIONS)
    side = opts["image_size"]
    if not isinstance(side, int) or side < 1:
        raise UserError(f"data.options.image_size for `imagenet` must be a positive integer, got {side!r}")
    root = data_root(cfg, "imagenet", "the folders train/<wnid>/ and val/<wnid>/ of ImageNet's JPEG images")
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        where = f"`{root}`" + ("" if root.is_dir() else " (which does not exist)")
        raise UserError(f"data set `imagenet`: data.root {where} lacks the folders train/ and val/ with one "
                        "folder of images per class (wnid)")
    mean, std, how = normalization("imagenet", opts["normalization"], None)
    classes = _classes(root, opts["classes"])
    train_files, train_y = scan(root / "train", classes)
    test_files, test_y = scan(root / "val", classes)
    tr, va, split_info = validation_split(train_y, cfg, replicate)
    val = FileSplit([train_files[i] for i in va.tolist()], train_y[va]) if len(va) else None
    train = FileSplit([train_files[i] for i in tr.tolist()], train_y[tr])
    info = {"source": str(root), "test_split": "official val/ folder", "classes": len(classes),
            "class_list": opts["classes"], "image_size": side, "decode": DECODE, **split_info,
            "mean": list(mean), "std": list(std), "normalization": how}
    return DataBundle(train, val, FileSplit(test_files, test_y), "classification", len(classes), (3, side, side),
                      mean=mean, std=std, info=info)
