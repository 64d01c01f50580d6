"""CIFAR-10/100 and SVHN from their official files under `data.root` (MNIST-like sets: `idx.py`).

The folder layout and file names are torchvision's, so a root that torchvision uses works here
and `data.download: true` fetches the files with torchvision (off by default). They are read here, in exactly the format
torchvision reads (the python pickles; the .mat files via scipy), because torchvision's
classes refuse any file whose md5 differs from the official archive's: that check would make
files written by tests unreadable, and it costs a full hash of the data on every run. The
official md5s are still checked when `data.options.verify: true`.

Test sets are the official test splits; validation comes from the training set through
`validation_split`. Normalisation statistics are fitted on the training split.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.data import DataBundle, DatasetInfo, Download, Sizes, register_dataset
from biasbench.data.common import check_options, data_root, image_bundle, require_files
from biasbench.data.imbalance import check_imbalance, exponential_profile, long_tailed_subset
from biasbench.errors import UserError


def download_with(name: str, tv_class: str, root: str, **split: Any) -> None:
    """Fetch data set `name` with torchvision's class `tv_class` into `root` (`data.download:
    true`); a failure is one line."""
    from torchvision import datasets

    try:
        getattr(datasets, tv_class)(root, download=True, **split)
    except Exception as e:  # network, disk or checksum failure: one line, not a traceback
        raise UserError(f"could not download data set `{name}` ({type(e).__name__}: {e}); check the "
                        "network, or fetch the files by hand and set data.download: false") from None


def _verify(name: str, root: Path, files_md5: list[tuple[str, str]]) -> None:
    from torchvision.datasets.utils import check_integrity

    bad = [f for f, md5 in files_md5 if not check_integrity(str(root / f), md5)]
    if bad:
        raise UserError(f"data set `{name}`: {', '.join(bad)} under `{root}` differ from the official "
                        "files (md5); download them again, or set data.options.verify: false to use them")


# ---------------------------------------------------------------------------------------------
# CIFAR: python pickles, as torchvision.datasets.CIFAR10 reads them.
# ---------------------------------------------------------------------------------------------


# What the official CIFAR python batches name: dicts, lists, strings and numbers need no name; a
# numpy array is rebuilt through these (Python 2's and 3's pickles, numpy 1's and 2's module
# paths, protocol 2's bytes and protocol 5's buffers). Anything else (`os.system`, `eval`, a
# class with `__reduce__`) is what a crafted file names to run code, so it is refused.
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only the types the official CIFAR files hold, so a data file cannot run code
    (checkpoints are read the same way: `torch.load(weights_only=True)`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        raise UserError(f"refused to read `{path}`: it asks to call `{e}`, which no CIFAR python batch holds (a "
                        "crafted file could run code this way); download the data set again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, OSError) as e:
        raise UserError(f"cannot read `{path}`: not a CIFAR python batch ({type(e).__name__}); "
                        "download the data set again") from None
    if not isinstance(entry, dict):
        raise UserError(f"cannot read `{path}`: not a CIFAR python batch (no dictionary inside)")
    return entry


def _cifar_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        entry = _unpickle(path)
        if "data" not in entry or label_key not in entry:
            raise UserError(f"cannot read `{path}`: a CIFAR batch needs keys `data` and `{label_key}`, "
                            f"found {sorted(entry)}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise UserError(f"cannot read `{path}`: expected {len(labels)} rows of 3072 bytes, "
                            f"found data of shape {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar(cfg: Any, replicate: int, name: str, tv_class: str, label_key: str, names_key: str) -> DataBundle:
    from torchvision import datasets

    opts = check_options(name, cfg.options, {"verify": False, "normalization": "fit", "imbalance": None})
    beta = check_imbalance(name, opts["imbalance"])
    cls = getattr(datasets, tv_class)
    root = data_root(cfg, name, f"`{cls.base_folder}/`")
    if cfg.download:
        download_with(name, tv_class, str(root), train=True)
    folder = root / cls.base_folder
    train_files = [f for f, _ in cls.train_list]
    test_files = [f for f, _ in cls.test_list]
    meta_file = cls.meta["filename"]
    require_files(cfg, name, root, [f"{cls.base_folder}/{f}" for f in [*train_files, *test_files, meta_file]])
    if opts["verify"]:
        _verify(name, folder, [*cls.train_list, *cls.test_list, (meta_file, cls.meta["md5"])])
    classes = _unpickle(folder / meta_file).get(names_key)
    if not classes:
        raise UserError(f"cannot read `{folder / meta_file}`: no `{names_key}` list of class names")
    train_x, train_y = _cifar_batches([folder / f for f in train_files], label_key)
    test_x, test_y = _cifar_batches([folder / f for f in test_files], label_key)
    _check_labels(name, len(classes), train_y, test_y)
    info = {"source": f"{folder} (official {tv_class} python batches)", "test_split": "official"}
    if beta is None:
        return image_bundle(cfg, replicate, train_x, train_y, test_x, test_y, len(classes), info,
                            norm=opts["normalization"])
    kept, info["imbalance"] = long_tailed_subset(name, train_y, len(classes), beta)
    bundle = image_bundle(cfg, replicate, train_x[kept], train_y[kept], test_x, test_y, len(classes), info,
                          norm=opts["normalization"])
    bundle.info["class_counts"] = {split: torch.bincount(part.y, minlength=len(classes)).tolist()
                                   for split, part in (("train", bundle.train), ("val", bundle.val),
                                                       ("test", bundle.test)) if part is not None}
    return bundle


def _check_labels(name: str, num_classes: int, *labels: torch.Tensor) -> None:
    for y in labels:
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise UserError(f"data set `{name}`: labels outside 0..{num_classes - 1} in the files; "
                            "download the data set again")


def _cifar_sizes(name: str, classes: int) -> Callable[[Any], Sizes]:
    """The official 50,000 training images (as many per class), or the long-tailed subset
    `data.options.imbalance` keeps; 10,000 test images."""
    def sizes(cfg: Any) -> Sizes:
        beta = check_imbalance(name, cfg.options.get("imbalance"))
        per_class = 50_000 // classes
        train = sum(exponential_profile(per_class, classes, float(beta))) if beta is not None else 50_000
        return Sizes(train, 10_000)

    return sizes


_CIFAR_PAGE = Download("www.cs.toronto.edu/~kriz/cifar.html", fetch=True)


@register_dataset("cifar10", DatasetInfo("CIFAR-10", bundled=False, kind="images", shape=lambda o: ((3, 32, 32), 10),
                                         sizes=_cifar_sizes("cifar10", 10), download=_CIFAR_PAGE))
def cifar10(cfg: Any, replicate: int = 0) -> DataBundle:
    return _cifar(cfg, replicate, "cifar10", "CIFAR10", "labels", "label_names")


@register_dataset("cifar100", DatasetInfo("CIFAR-100 (fine labels)", bundled=False, kind="images",
                                          shape=lambda o: ((3, 32, 32), 100), sizes=_cifar_sizes("cifar100", 100),
                                          download=_CIFAR_PAGE))
def cifar100(cfg: Any, replicate: int = 0) -> DataBundle:
    return _cifar(cfg, replicate, "cifar100", "CIFAR100", "fine_labels", "fine_label_names")


# ---------------------------------------------------------------------------------------------
# SVHN: the cropped-digits .mat files, as torchvision.datasets.SVHN reads them.
# ---------------------------------------------------------------------------------------------


def _svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import scipy.io as sio

    try:
        mat = sio.loadmat(str(path))
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    except (sio.matlab.MatReadError, ValueError, TypeError, KeyError, OSError, NotImplementedError) as e:
        raise UserError(f"cannot read `{path}`: not an SVHN .mat file ({type(e).__name__}: {e}); "
                        "download the data set again") from None
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y) or x.dtype != np.uint8:
        raise UserError(f"cannot read `{path}`: X should be uint8 (32, 32, 3, N) for N labels, "
                        f"found {x.dtype} {x.shape} for {len(y)} labels")
    y[y == 10] = 0  # SVHN writes digit 0 as label 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)


def _svhn_sizes(cfg: Any) -> Sizes:
    """73,257 training digits (+ 531,131 with `data.options.extra`), 26,032 test digits."""
    return Sizes(73_257 + (531_131 if cfg.options.get("extra") else 0), 26_032)


@register_dataset("svhn", DatasetInfo("SVHN cropped digits", bundled=False, kind="images",
                                      shape=lambda o: ((3, 32, 32), 10), sizes=_svhn_sizes,
                                      download=Download("ufldl.stanford.edu/housenumbers", fetch=True)))
def svhn(cfg: Any, replicate: int = 0) -> DataBundle:
    from torchvision.datasets import SVHN

    opts = check_options("svhn", cfg.options, {"extra": False, "verify": False})
    root = data_root(cfg, "svhn", "`train_32x32.mat` and `test_32x32.mat`")
    splits = ["train", "test"] + (["extra"] if opts["extra"] else [])
    if cfg.download:
        for split in splits:
            download_with("svhn", "SVHN", str(root), split=split)
    files = {split: SVHN.split_list[split][1] for split in splits}
    require_files(cfg, "svhn", root, files.values())
    if opts["verify"]:
        _verify("svhn", root, [(SVHN.split_list[s][1], SVHN.split_list[s][2]) for s in splits])
    train_x, train_y = _svhn_mat(root / files["train"])
    if opts["extra"]:
        extra_x, extra_y = _svhn_mat(root / files["extra"])
        train_x, train_y = torch.cat([train_x, extra_x]), torch.cat([train_y, extra_y])
    test_x, test_y = _svhn_mat(root / files["test"])
    _check_labels("svhn", 10, train_y, test_y)
    info = {"source": f"{root} (SVHN cropped digits{' + extra' if opts['extra'] else ''})",
            "test_split": "official"}
    return image_bundle(cfg, replicate, train_x, train_y, test_x, test_y, 10, info)
