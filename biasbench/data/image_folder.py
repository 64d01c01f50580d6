"""Image-folder data sets: Imagenette, Imagewoof, ISIC 2019 and `image_folder` for your own data.

Images are decoded once (in threads), converted to RGB, resized to `data.options.image_size`
square (`resize: squash`, the default, like Keras' image_dataset_from_directory; or `crop`:
short side to the size, then the centre) and cached as one uint8 tensor file (see
`biasbench.data.cache`), so later runs start in seconds. An image already at the target size
is kept pixel for pixel.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.data import DataBundle, DatasetInfo, Download, Sizes, register_dataset
from biasbench.data import cache as cache_mod
from biasbench.data.common import HOLDOUT_SEED, check_options, data_root, image_bundle, require_files
from biasbench.data.splits import fraction_split
from biasbench.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
RESIZE_MODES = ("squash", "crop")
FOLDER_OPTIONS = {"image_size": 80, "resize": "squash", "cache": True, "cache_dir": None}


def decode_image(path: Path, size: int, resize: str) -> np.ndarray:
    """One image file as uint8 (size, size, 3); a clear error line for an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size != (size, size):
                im.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (size, size):
                if resize == "crop":
                    s = size / min(w, h)
                    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                    im = im.crop((left, top, left + size, top + size))
                else:
                    im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image `{path}` ({type(e).__name__}: {e}); "
                        "remove or replace the file") from None


def _decode_all(paths: list[Path], size: int, resize: str) -> torch.Tensor:
    if not paths:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, resize)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(paths))))  # PIL releases the GIL while decoding and resizing
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_options(name: str, cfg: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    opts = check_options(name, cfg.options, {**FOLDER_OPTIONS, **(extra or {})})
    if not isinstance(opts["image_size"], int) or opts["image_size"] < 1:
        raise UserError(f"data.options.image_size for `{name}` must be a positive integer, "
                        f"got {opts['image_size']!r}")
    if opts["resize"] not in RESIZE_MODES:
        raise UserError(f"data.options.resize for `{name}` must be one of {', '.join(RESIZE_MODES)}, "
                        f"got {opts['resize']!r}")
    return opts


def load_splits(name: str, base: Path, splits: dict[str, tuple[list[Path], list[int]]],
                opts: dict[str, Any]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """Decode every split's files (or read the cache); returns {split: (x, y)} and cache info."""
    size, resize = opts["image_size"], opts["resize"]
    files = [f for paths, _ in splits.values() for f in paths]
    settings = {"name": name, "image_size": size, "resize": resize,
                "splits": {k: [len(v[0]), *v[1]] for k, v in splits.items()}}
    path = None
    if opts["cache"]:
        key = cache_mod.fingerprint(files, base, settings)
        folder = cache_mod.cache_folder(base, opts["cache_dir"])
        path = cache_mod.cache_path(folder, f"{name}-{size}px-{resize}", key)
        cached = cache_mod.load(path)
        if cached is not None and set(cached["splits"]) == set(splits):
            return cached["splits"], {"cache": str(path), "cache_hit": True}
    out = {k: (_decode_all(paths, size, resize), torch.tensor(labels, dtype=torch.int64))
           for k, (paths, labels) in splits.items()}
    written = cache_mod.save(path, {"splits": out}) if path is not None else None
    return out, {"cache": str(written) if written else None, "cache_hit": False}


# ---------------------------------------------------------------------------------------------
# Class-folder layouts.
# ---------------------------------------------------------------------------------------------


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def scan_class_folders(name: str, folder: Path, classes: list[str] | None = None
                       ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of `folder/<class>/<image>`; classes default to the sorted sub-folders."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise UserError(f"data set `{name}`: `{folder}` has no class sub-folders; expected "
                            f"`{folder}/<class>/<image files>`")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(f"data set `{name}`: `{folder}` has class folders {unknown[:5]} that the "
                            "training folder lacks; every class needs training images")
    files, labels = [], []
    for i, c in enumerate(classes):
        d = folder / c
        mine = sorted(p for p in d.iterdir() if p.is_file() and _is_image(p)) if d.is_dir() else []
        files += mine
        labels += [i] * len(mine)
    if not files:
        raise UserError(f"data set `{name}`: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                        f"under `{folder}`")
    return files, labels, classes


def _release_base(name: str, root: Path, release: str, needed: tuple[str, ...]) -> Path:
    """`root` itself when it holds the folders, else `root/<release>` (the extracted archive)."""
    for base in (root, root / release):
        if all((base / n).is_dir() for n in needed):
            return base
    where = f"`{root}`" + ("" if root.is_dir() else " (which does not exist)")
    folders = ", ".join(f"{n}/" for n in needed)
    raise UserError(f"data set `{name}`: data.root {where} lacks the folders {folders} (or "
                    f"{release}/{needed[0]}/ ...) with class sub-folders of images; extract the "
                    f"{release} archive there")


def _holdout(y: torch.Tensor, fraction: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < fraction < 1:
        raise UserError(f"data.options.test_fraction for `{name}` must be in (0, 1), got {fraction!r}")
    return fraction_split(y, fraction, HOLDOUT_SEED)


def _folder_set(cfg: Any, replicate: int, name: str, release: str) -> DataBundle:
    opts = _image_options(name, cfg)
    root = data_root(cfg, name, f"the `train/` and `val/` folders of {release}")
    base = _release_base(name, root, release, ("train", "val"))
    train_files, train_labels, classes = scan_class_folders(name, base / "train")
    test_files, test_labels, _ = scan_class_folders(name, base / "val", classes)
    data, cache_info = load_splits(name, base, {"train": (train_files, train_labels),
                                                "test": (test_files, test_labels)}, opts)
    info = {"source": str(base), "test_split": "official val/ folder", "image_size": opts["image_size"],
            "resize": opts["resize"], **cache_info}
    return image_bundle(cfg, replicate, *data["train"], *data["test"], len(classes), info)


def _folder_shape(classes: int):
    """(3, S, S) for the image_size option S (default 80), and a known number of classes."""
    def shape(options: dict) -> tuple[tuple[int, ...], int]:
        side = int(options.get("image_size", FOLDER_OPTIONS["image_size"]))
        return (3, side, side), classes

    return shape


_FASTAI = Download("github.com/fastai/imagenette (the 160 px release, extracted)")


@register_dataset("imagenette", DatasetInfo("Imagenette (160 px release)", bundled=False, kind="images",
                                            shape=_folder_shape(10), sizes=lambda cfg: Sizes(9_469, 3_925),
                                            download=_FASTAI))
def imagenette(cfg: Any, replicate: int = 0) -> DataBundle:
    return _folder_set(cfg, replicate, "imagenette", "imagenette2-160")


@register_dataset("imagewoof", DatasetInfo("Imagewoof (160 px release)", bundled=False, kind="images",
                                           shape=_folder_shape(10), sizes=lambda cfg: Sizes(9_025, 3_929),
                                           download=_FASTAI))
def imagewoof(cfg: Any, replicate: int = 0) -> DataBundle:
    return _folder_set(cfg, replicate, "imagewoof", "imagewoof2-160")


@register_dataset("image_folder", DatasetInfo("your own train/<class>/ test/<class>/ folders", bundled=False,
                                              kind="images", sizes=lambda cfg: None,  # only its folders tell
                                              download=Download("your own images")))
def image_folder(cfg: Any, replicate: int = 0) -> DataBundle:
    """root/train/<class>/...; test/ is the test set (else val/, else a fixed 20% of train/)."""
    opts = _image_options("image_folder", cfg, {"test_fraction": 0.2})
    root = data_root(cfg, "image_folder", "`train/<class>/<images>` and optionally `val/` and `test/`")
    base = root
    if not (root / "train").is_dir():
        where = f"`{root}`" + ("" if root.is_dir() else " (which does not exist)")
        raise UserError(f"data set `image_folder`: data.root {where} lacks the folder train/ with class "
                        "sub-folders of images (optionally val/ and test/ beside it)")
    train_files, train_labels, classes = scan_class_folders("image_folder", base / "train")
    splits = {"train": (train_files, train_labels)}
    for part in ("val", "test"):
        if (base / part).is_dir():
            files, labels, _ = scan_class_folders("image_folder", base / part, classes)
            splits[part] = (files, labels)
    data, cache_info = load_splits("image_folder", base, splits, opts)
    info = {"source": str(base), "image_size": opts["image_size"], "resize": opts["resize"], **cache_info}
    (train_x, train_y), val = data["train"], None
    if "test" in data:
        test_x, test_y = data["test"]
        info["test_split"] = "test/ folder"
        val = data.get("val")
    elif "val" in data:
        test_x, test_y = data["val"]
        info["test_split"] = "val/ folder (no test/ folder)"
    else:
        rest, test = _holdout(train_y, float(opts["test_fraction"]), "image_folder")
        train_x, train_y, test_x, test_y = train_x[rest], train_y[rest], train_x[test], train_y[test]
        info["test_split"] = f"{opts['test_fraction']} of train/, stratified, seed {HOLDOUT_SEED}"
    return image_bundle(cfg, replicate, train_x, train_y, test_x, test_y, len(classes), info, val=val)


# ---------------------------------------------------------------------------------------------
# ISIC 2019: the training images and their ground-truth CSV.
# ---------------------------------------------------------------------------------------------

ISIC_CSV = "ISIC_2019_Training_GroundTruth.csv"
ISIC_IMAGES = "ISIC_2019_Training_Input"
ISIC_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]  # UNK: no training images


def read_isic_csv(path: Path) -> tuple[list[str], list[int]]:
    """(image ids, class indices) from the one-hot ground truth; one line for any defect."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read `{path}` ({type(e).__name__}: {e})") from None
    if not rows:
        raise UserError(f"`{path}` is empty; expected the ISIC 2019 ground-truth CSV")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ["image", *ISIC_CLASSES] if c not in header]
    if missing:
        raise UserError(f"`{path}` lacks the column(s) {', '.join(missing)}; expected image, "
                        f"{', '.join(ISIC_CLASSES)}, UNK")
    col = {c: header.index(c) for c in ["image", *ISIC_CLASSES, *(["UNK"] if "UNK" in header else [])]}
    images, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            image = row[col["image"]].strip()
            hot = [float(row[col[c]]) for c in ISIC_CLASSES]
            unk = float(row[col["UNK"]]) if "UNK" in col and row[col["UNK"]].strip() else 0.0
        except (IndexError, ValueError):
            raise UserError(f"`{path}` line {line}: expected an image id and one-hot numbers, "
                            f"got {row[:10]}") from None
        if unk != 0 or sorted(hot) != [0.0] * (len(hot) - 1) + [1.0]:
            raise UserError(f"`{path}` line {line} ({image}): not exactly one of "
                            f"{', '.join(ISIC_CLASSES)} is 1 (UNK is not a training class)")
        images.append(image)
        labels.append(hot.index(1.0))
    if not images:
        raise UserError(f"`{path}` has no rows")
    return images, labels


def _isic_sizes(cfg: Any) -> Sizes:
    """25,331 labelled training images, less the test part `data.options.test_fraction` holds out
    (ISIC 2019 has no labelled official test set)."""
    train = round(25_331 * (1 - float(cfg.options.get("test_fraction", 0.2))))
    return Sizes(train, 25_331 - train)


@register_dataset("isic2019", DatasetInfo("ISIC 2019 skin lesions, 8 classes", bundled=False, kind="images",
                                          shape=_folder_shape(8), sizes=_isic_sizes,
                                          download=Download("challenge.isic-archive.com/data (2019: training "
                                                            "images and ground truth)")))
def isic2019(cfg: Any, replicate: int = 0) -> DataBundle:
    """8 classes; no labelled official test set: a fixed stratified test_fraction of the training images."""
    opts = _image_options("isic2019", cfg, {"test_fraction": 0.2})
    root = data_root(cfg, "isic2019", f"`{ISIC_CSV}` and the folder `{ISIC_IMAGES}/`")
    require_files(cfg, "isic2019", root, [ISIC_CSV])
    images_dir = root / ISIC_IMAGES if (root / ISIC_IMAGES).is_dir() else root
    if (images_dir / ISIC_IMAGES).is_dir():  # the zip extracts to a folder of the same name
        images_dir = images_dir / ISIC_IMAGES
    ids, labels = read_isic_csv(root / ISIC_CSV)
    files = [images_dir / f"{i}.jpg" for i in ids]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"data set `isic2019`: {len(missing)} image(s) named in {ISIC_CSV} are missing from "
                        f"`{images_dir}` (first: {', '.join(missing[:3])}); extract {ISIC_IMAGES}.zip "
                        "into data.root")
    data, cache_info = load_splits("isic2019", root, {"all": (files, labels)}, opts)
    x, y = data["all"]
    rest, test = _holdout(y, float(opts["test_fraction"]), "isic2019")
    info = {"source": str(root), "image_size": opts["image_size"], "resize": opts["resize"],
            "classes": ISIC_CLASSES,
            "test_split": f"{opts['test_fraction']} of the training images, stratified, seed {HOLDOUT_SEED} "
                          "(ISIC 2019 has no labelled official test set)", **cache_info}
    return image_bundle(cfg, replicate, x[rest], y[rest], x[test], y[test], len(ISIC_CLASSES), info)
