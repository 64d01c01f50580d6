"""MNIST, Fashion-MNIST and KMNIST from their IDX files, as distributed.

Three layouts are read, the first one found wins: a flat folder with the official names
(LeCun's and Zalando's pages and Debian's `dataset-fashion-mnist` give the four files so),
torchvision's `ROOT/<Class>/raw/`, each file gzipped or not (told by its first bytes, not
its name). Every file is checked before use: its IDX header (magic number, dimensions), its size
against the header (a truncated or padded file is refused, naming it), labels in 0..9, as many
labels as images. Content is compared with the official release: the md5 of the gz file where
it is the original, else of the decompressed content (Debian repacked Fashion-MNIST's gz files:
other gz headers, the same bytes inside). A file of the official size whose content differs is
corrupt and refused; a file of another size (a subset, or a test's tiny file) is read and
reported as not the official release, unless `data.options.verify: true` asks for the release.
`data.options.train_size: N` trains on a fixed, class-balanced subset of N training images (the
short forms of the real-data studies); the test split stays the official one, whole.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.data import DataBundle, DatasetInfo, Download, Sizes, fetch_hint, register_dataset, where_from
from biasbench.data.common import HOLDOUT_SEED, check_options, data_root, image_bundle
from biasbench.data.splits import fraction_split
from biasbench.data.torchvision_sets import download_with
from biasbench.errors import UserError

STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
# Decompressed sizes of the official files: 16-byte header + 60,000 or 10,000 images of 28 x 28;
# 8-byte header + one byte per label.
OFFICIAL_SIZES = {"train_images": 47_040_016, "train_labels": 60_008, "test_images": 7_840_016,
                  "test_labels": 10_008}
_MAGIC = {"images": (0x0803, 3), "labels": (0x0801, 1)}  # IDX: unsigned bytes, 3 or 1 dimensions


@dataclass(frozen=True)
class Release:
    """An IDX data set's official files: md5 of each gz file (torchvision's list, as published)
    and of its decompressed content (measured on the official files; None where unknown)."""

    name: str
    folder: str  # torchvision's class name, the folder of its `raw/` layout
    gz_md5: dict[str, str]
    raw_md5: dict[str, str | None]


RELEASES = {r.name: r for r in (
    Release("mnist", "MNIST",
            {"train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
             "test_images": "9fb629c4189551a2d022fa330f9573f3", "test_labels": "ec29112dd5afa0611ce80d1b7f02629c"},
            {"train_images": "6bbc9ace898e44ae57da46a324031adb", "train_labels": "a25bea736e30d166cdddb491f175f624",
             "test_images": "2646ac647ad5339dbf082846283269ea", "test_labels": "27ae3e4e09519cfbb04c329615203637"}),
    Release("fashion_mnist", "FashionMNIST",
            {"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
             "test_images": "bef4ecab320f06d8554ea6380940ec79", "test_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
            {"train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a", "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
             "test_images": "8181f5470baa50b63fa0f6fddb340f0a", "test_labels": "15d484375f8d13e6eb1aabb0c3f46965"}),
    Release("kmnist", "KMNIST",
            {"train_images": "bdb82020997e1d708af4cf47b453dcf7", "train_labels": "e144d726b3acfaa3e44228e80efcd344",
             "test_images": "5c965bf0a639b31b8f53240b1b52f4d7", "test_labels": "7320c461ea6c1c855c0b718fb2a4b134"},
            dict.fromkeys(STEMS)),
)}


@dataclass
class IdxFile:
    """One file as found and checked: where, how stored, its array, and how it compares with the release."""

    role: str  # train_images, train_labels, test_images, test_labels
    path: Path
    layout: str  # "flat" or "torchvision"
    gzipped: bool
    array: np.ndarray
    checksum: str  # official-gz / official-content / unofficial / unknown
    md5: str


def candidates(root: Path, release: Release, role: str) -> list[tuple[Path, str]]:
    stem = STEMS[role]
    layouts = ((root, "flat"), (root / release.folder / "raw", "torchvision"))
    return [(folder / name, layout) for folder, layout in layouts for name in (stem + ".gz", stem)]


def locate(root: Path, release: Release, role: str) -> tuple[Path, str] | None:
    return next(((p, layout) for p, layout in candidates(root, release, role) if p.is_file()), None)


def require_release(cfg: Any, root: Path, release: Release) -> None:
    """One line naming every file that is in neither layout."""
    missing = [STEMS[role] for role in STEMS if locate(root, release, role) is None]
    if not missing:
        return
    where = f"data.root `{root}`" + ("" if root.is_dir() else " (which does not exist)")
    raise UserError(f"data set `{release.name}`: {where} lacks {', '.join(missing)} (.gz or not, flat or in "
                    f"`{release.folder}/raw/`); put the official files there{where_from(release.name)}"
                    f"{fetch_hint(cfg, release.name, ', or set data.download: true to fetch them')}")


def _decompress(path: Path, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:  # EOFError: the gz stream ends early (a truncated file)
        raise UserError(f"`{path}` is not a readable gzip file ({type(e).__name__}: {e}); it is truncated or "
                        "corrupt: replace it with the official file (`make real-data` lays them out)") from None


def parse_idx(path: Path, raw: bytes, kind: str) -> np.ndarray:
    """The array an IDX file holds, after checking its header and its size against the header."""
    magic, ndim = _MAGIC[kind]
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else f"only {len(raw)} bytes"
        raise UserError(f"`{path}` is not an IDX {kind} file (magic number {found}, expected {magic:08x}); "
                        "replace it with the official file")
    if len(raw) < header:
        raise UserError(f"`{path}` is truncated: {len(raw)} bytes, shorter than its {header}-byte header; "
                        "replace it with the official file")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise UserError(f"`{path}` is {what}: {len(raw):,} bytes where its header ({' x '.join(map(str, dims))}) "
                        f"needs {expected:,}; replace it with the official file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_file(root: Path, release: Release, role: str, verify: str | bool = "auto") -> IdxFile:
    """One file, checked; `verify` as `data.options.verify`: auto (content compared with the release
    where that can tell), True (the release required), False (structure only: no hash at all)."""
    found = locate(root, release, role)
    if found is None:
        raise UserError(f"data set `{release.name}`: no `{STEMS[role]}` (.gz or not) in data.root `{root}` nor in "
                        f"`{root / release.folder / 'raw'}`")
    path, layout = found
    data = path.read_bytes()
    gzipped = data[:2] == b"\x1f\x8b"
    raw = _decompress(path, data) if gzipped else data
    array = parse_idx(path, raw, role.split("_")[1])
    if verify is False:
        return IdxFile(role, path, layout, gzipped, array, "skipped", "")
    md5 = hashlib.md5(raw).hexdigest()
    if gzipped and hashlib.md5(data).hexdigest() == release.gz_md5[role]:
        checksum = "official-gz"
    elif release.raw_md5[role] is None:
        checksum = "unknown"  # no published md5 of this set's decompressed files
    elif md5 == release.raw_md5[role]:
        checksum = "official-content"
    elif len(raw) == OFFICIAL_SIZES[role]:
        raise UserError(f"`{path}` has the official file's size but not its content (md5 {md5}, official "
                        f"{release.raw_md5[role]}): it is corrupt; replace it with the official file")
    else:
        checksum = "unofficial"
    if verify is True and checksum not in ("official-gz", "official-content"):
        raise UserError(f"`{path}` is not the official {release.name} file ({CHECKSUM_WORDS[checksum]}); "
                        "data.options.verify: true asks for the official release")
    return IdxFile(role, path, layout, gzipped, array, checksum, md5)


CHECKSUM_WORDS = {"official-gz": "official (gz md5)",
                  "official-content": "official (content md5)",
                  "unofficial": "not official (other size)",
                  "unknown": "unchecked (no content md5)",
                  "skipped": "unchecked (verify: false)"}


# The last releases read, by their files' identity (path, size, mtime): a sweep worker that trains
# many runs on one data set decompresses and checks it once, not once per run (53 MB per set).
_READ: dict[tuple, dict[str, IdxFile]] = {}
_KEEP = 2


def read_release(root: Path, release: Release, verify: str | bool = "auto") -> dict[str, IdxFile]:
    """The four files, checked one by one and against each other (read once while unchanged)."""
    found = [locate(root, release, role) for role in STEMS]
    if None not in found:
        md5s = (tuple(release.gz_md5.items()), tuple(release.raw_md5.items()))
        key = (release.name, md5s, verify,
               *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in found))
        if key not in _READ:
            _READ[key] = _read_release(root, release, verify)
            while len(_READ) > _KEEP:
                _READ.pop(next(iter(_READ)))
        return _READ[key]
    return _read_release(root, release, verify)


def _read_release(root: Path, release: Release, verify: str | bool) -> dict[str, IdxFile]:
    files = {role: read_file(root, release, role, verify) for role in STEMS}
    for split in ("train", "test"):
        images, labels = files[f"{split}_images"], files[f"{split}_labels"]
        if images.array.shape[1:] != (28, 28):
            raise UserError(f"`{images.path}` holds images of {images.array.shape[1:]}, not 28 x 28")
        if len(images.array) != len(labels.array):
            raise UserError(f"`{labels.path}` has {len(labels.array):,} labels for the {len(images.array):,} images "
                            f"of `{images.path}`: the files do not belong together (mislabelled or mixed up)")
        if len(labels.array) and int(labels.array.max()) > 9:
            raise UserError(f"`{labels.path}` holds label {int(labels.array.max())}; {release.name} has classes 0..9")
    return files


def _idx_set(cfg: Any, replicate: int, name: str) -> DataBundle:
    release = RELEASES[name]
    opts = check_options(name, cfg.options, {"verify": "auto", "train_size": None})
    if opts["verify"] not in ("auto", True, False):
        raise UserError(f"data.options.verify for `{name}` is auto (check content where it is the official size), "
                        f"true (require the official release) or false (structure only), got {opts['verify']!r}")
    size = opts["train_size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 10):
        raise UserError(f"data.options.train_size for `{name}` must be a whole number of training images (at least "
                        f"10, one per class), got {size!r}")
    root = data_root(cfg, name, f"the four IDX files (flat, or in `{release.folder}/raw/`)")
    if cfg.download:
        download_with(name, release.folder, str(root), train=True)
    require_release(cfg, root, release)
    files = read_release(root, release, verify=opts["verify"])

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(files[f"{split}_images"].array.copy()).unsqueeze(1)
        return x, torch.from_numpy(files[f"{split}_labels"].array.astype(np.int64))

    (train_x, train_y), (test_x, test_y) = tensors("train"), tensors("test")
    first = files["train_images"]
    info = {"source": f"{first.path.parent} ({first.layout} layout, {'gzip' if first.gzipped else 'decompressed'})",
            "test_split": "official",
            "checksum": {role: f.checksum for role, f in files.items()}}
    if size is not None and size < len(train_y):
        # The same class-balanced images for every run and replicate (a fixed seed): short forms on real
        # data train on a subset and are still tested on the whole official test set.
        _, kept = fraction_split(train_y, size / len(train_y), HOLDOUT_SEED)
        info["train_subset"] = {"size": len(kept), "of": len(train_y), "seed": HOLDOUT_SEED}
        train_x, train_y = train_x[kept], train_y[kept]
    return image_bundle(cfg, replicate, train_x, train_y, test_x, test_y, 10, info)


def example_count(path: Path) -> int:
    """The number of examples an IDX file's header declares (its first dimension), read from its
    first 8 bytes (through gzip where it is gzipped): no content read, no check."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            head = f.read(8)
    except (EOFError, OSError, zlib.error):
        head = b""
    if len(head) < 8:
        raise UserError(f"`{path}` is too short for an IDX header; replace it with the official file")
    return int.from_bytes(head[4:8], "big")


def idx_sizes(name: str) -> Callable[[Any], Sizes]:
    """The set's sizes from its label files' headers where they are under data.root, else the
    official release's (60,000 and 10,000); `data.options.train_size` caps the training split."""
    release = RELEASES[name]

    def sizes(cfg: Any) -> Sizes:
        found = {role: locate(Path(cfg.root).expanduser(), release, role) if cfg.root else None
                 for role in ("train_labels", "test_labels")}
        exact = None not in found.values()
        train, test = ((example_count(found[r][0]) for r in ("train_labels", "test_labels")) if exact else
                       (OFFICIAL_SIZES[r] - 8 for r in ("train_labels", "test_labels")))
        subset = cfg.options.get("train_size")
        if isinstance(subset, int) and not isinstance(subset, bool):
            train = min(train, subset)
        return Sizes(train, test, exact=exact)

    return sizes


def register_idx_set(release: Release, summary: str, download: Download) -> None:
    """Register `release` as the data set of its name: 28 x 28 grey images, 10 classes, its files
    read as this module reads MNIST's (and checked against the release's md5s), `biasbench data
    check` included. An IDX set is this one call, in a module of its own."""
    RELEASES[release.name] = release
    info = DatasetInfo(summary, bundled=False, kind="images", shape=lambda o: ((1, 28, 28), 10),
                       sizes=idx_sizes(release.name), download=download)

    def build(cfg: Any, replicate: int = 0) -> DataBundle:
        return _idx_set(cfg, replicate, release.name)  # by name: a test may swap the release's md5s

    build.__name__ = build.__qualname__ = release.name
    register_dataset(release.name, info)(build)


_MAKE_REAL_DATA = "`make real-data` installs it"
register_idx_set(RELEASES["mnist"], "MNIST", Download("yann.lecun.com/exdb/mnist", fetch=True, also=_MAKE_REAL_DATA))
register_idx_set(RELEASES["fashion_mnist"], "Fashion-MNIST",
                 Download("github.com/zalandoresearch/fashion-mnist", fetch=True, also=_MAKE_REAL_DATA))
register_idx_set(RELEASES["kmnist"], "Kuzushiji-MNIST", Download("github.com/rois-codh/kmnist", fetch=True))
