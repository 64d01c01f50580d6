"""MNIST-like IDX files as distributed: flat or torchvision's layout, gzipped or not, checked.

Tiny files written here in exactly the official format; the official checksums are exercised by
giving the release table the md5s of these files (the real files: tests/test_real_data.py)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from biasbench.data import build_data, dataset_info
from biasbench.data import idx as idx_module
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import run_cli

RNG = np.random.default_rng(19)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, big-endian int32 sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, gz: bool, n_train: int = 30, n_test: int = 10, mtime: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n, key in (("train", n_train, "train"), ("t10k", n_test, "test")):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        RNG.shuffle(y)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            raw = idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=mtime))
            else:
                (folder / stem).write_bytes(raw)
        out[f"{key}_x"], out[f"{key}_y"] = x, y
    return out


def cfg(root: Path, name: str = "mnist", **kw) -> DataConfig:
    return DataConfig(name=name, root=str(root), val_fraction=0.0, **kw)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_every_layout_loads_the_exact_pixels_and_labels(tmp_path, layout, gz, name, folder):
    where = tmp_path if layout == "flat" else tmp_path / folder / "raw"
    written = write_idx_set(where, gz)
    bundle = build_data(cfg(tmp_path, name))
    assert torch.equal(bundle.train.x, torch.from_numpy(written["train_x"]).unsqueeze(1))
    assert torch.equal(bundle.train.y, torch.from_numpy(written["train_y"]).long())
    assert torch.equal(bundle.test.x, torch.from_numpy(written["test_x"]).unsqueeze(1))
    assert torch.equal(bundle.test.y, torch.from_numpy(written["test_y"]).long())
    assert f"{layout} layout" in bundle.info["source"]
    assert ("gzip" if gz else "decompressed") in bundle.info["source"]


def test_gzip_is_told_by_content_not_by_name(tmp_path):
    written = write_idx_set(tmp_path, gz=True)
    for f in tmp_path.glob("*.gz"):  # gz content under the plain name
        f.rename(f.with_suffix(""))
    assert torch.equal(build_data(cfg(tmp_path)).test.y, torch.from_numpy(written["test_y"]).long())


def _release_of(folder: Path, gz_official: bool) -> idx_module.Release:
    """A release whose md5s are those of the files in `folder` (gz md5s only if `gz_official`)."""
    gz_md5, raw_md5 = {}, {}
    for role, stem in idx_module.STEMS.items():
        data = (folder / f"{stem}.gz").read_bytes()
        gz_md5[role] = hashlib.md5(data).hexdigest() if gz_official else "0" * 32
        raw_md5[role] = hashlib.md5(gzip.decompress(data)).hexdigest()
    return dataclasses.replace(idx_module.RELEASES["mnist"], gz_md5=gz_md5, raw_md5=raw_md5)


def test_official_files_are_recognised_by_gz_md5_or_by_content(tmp_path, monkeypatch):
    write_idx_set(tmp_path, gz=True)
    for gz_official, expected in ((True, "official-gz"), (False, "official-content")):
        monkeypatch.setitem(idx_module.RELEASES, "mnist", _release_of(tmp_path, gz_official))
        bundle = build_data(cfg(tmp_path))
        assert set(bundle.info["checksum"].values()) == {expected}
        build_data(cfg(tmp_path, options={"verify": True}))  # the release itself passes the strict check


def test_file_of_official_size_with_other_content_is_refused_as_corrupt(tmp_path):
    write_idx_set(tmp_path, gz=False)
    labels = (np.arange(10_000) % 10).astype(np.uint8)  # exactly the official 10,008 bytes, not its labels
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte` has the official file's size but not its content"):
        build_data(cfg(tmp_path))


def test_unofficial_files_are_read_but_refused_under_verify_true(tmp_path):
    write_idx_set(tmp_path, gz=False)
    assert set(build_data(cfg(tmp_path)).info["checksum"].values()) == {"unofficial"}
    with pytest.raises(UserError, match="not the official mnist file.*verify: true"):
        build_data(cfg(tmp_path, options={"verify": True}))
    with pytest.raises(UserError, match="verify"):
        build_data(cfg(tmp_path, options={"verify": "yes"}))


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_is_one_line_naming_it(tmp_path, gz):
    write_idx_set(tmp_path, gz=gz, n_train=200)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(UserError) as e:
        build_data(cfg(tmp_path))
    message = str(e.value)
    assert "\n" not in message and str(path) in message and ("truncated" in message)


def test_mixed_up_files_are_refused(tmp_path):
    write_idx_set(tmp_path, gz=False)
    # the training labels put where the test labels belong: 30 labels for 10 images
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(UserError, match="30 labels for the 10 images.*do not belong together"):
        build_data(cfg(tmp_path))
    # an image file where a label file belongs: wrong magic number, named
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte` is not an IDX labels file"):
        build_data(cfg(tmp_path))


def test_labels_outside_0_to_9_are_refused(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 12, dtype=np.uint8)))
    with pytest.raises(UserError, match="holds label 12"):
        build_data(cfg(tmp_path))


def test_missing_files_name_both_layouts_and_the_installer(tmp_path):
    write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError) as e:
        build_data(cfg(tmp_path))
    message = str(e.value)
    assert "t10k-images-idx3-ubyte" in message and "train-images" not in message
    assert "MNIST/raw/" in message and "make real-data" in message


def test_data_check_reports_files_splits_and_classes(tmp_path, monkeypatch):
    write_idx_set(tmp_path, gz=True, n_train=40, n_test=20)
    monkeypatch.setitem(idx_module.RELEASES, "mnist", _release_of(tmp_path, gz_official=False))
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["data", "check", "mnist", "--root", str(tmp_path)])
    assert code == 0, err
    prose = " ".join(out.split())  # titles wrap between words at 80 columns
    assert "flat layout" in prose and "train-images-idx3-ubyte.gz" in out
    assert out.count("official (content md5)") == 4 and "every file is the official release" in prose
    train_row = next(line.split() for line in out.splitlines() if line.startswith("train "))
    assert train_row[1:] == ["4"] * 10  # 40 training labels, 4 per class
    assert "40 train and 20 test images of 28x28" in prose
    assert max(len(line) for line in out.splitlines()) <= 80


def test_data_check_on_a_truncated_file_is_one_line_exit_2(tmp_path):
    write_idx_set(tmp_path, gz=True, n_train=300)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    code, out, err = run_cli(["data", "check", "mnist", "--root", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err + out


def test_data_check_refuses_bundled_and_missing_roots(tmp_path):
    code, _, err = run_cli(["data", "check", "digits"])
    assert code == 2 and "bundled" in err
    code, _, err = run_cli(["data", "check", "fashion_mnist", "--root", str(tmp_path / "none")])
    assert code == 2 and "not a folder" in err and "make real-data" in err
    # every set is told where its files come from by its own declaration, not by a list of names
    code, _, err = run_cli(["data", "check", "kmnist", "--root", str(tmp_path / "none")])
    assert code == 2 and dataset_info("kmnist").download.source in err


def test_train_size_keeps_a_fixed_class_balanced_subset_and_the_whole_test_set(tmp_path):
    written = write_idx_set(tmp_path, gz=True, n_train=200, n_test=30)
    first = build_data(cfg(tmp_path, options={"train_size": 50}))
    again = build_data(cfg(tmp_path, options={"train_size": 50}))
    assert len(first.train) == 50 and torch.bincount(first.train.y).tolist() == [5] * 10
    assert torch.equal(first.train.x, again.train.x)  # the same images every time
    assert len(first.test) == 30 and first.info["train_subset"] == {"size": 50, "of": 200, "seed": 0}
    # every kept image is a training image with its own label
    pool = {x.tobytes(): int(y) for x, y in zip(written["train_x"], written["train_y"])}
    assert all(pool[bytes(x[0].numpy().tobytes())] == int(y) for x, y in zip(first.train.x, first.train.y))
    with pytest.raises(UserError, match="train_size"):
        build_data(cfg(tmp_path, options={"train_size": 3}))


def test_a_release_is_read_once_while_its_files_are_unchanged(tmp_path, monkeypatch):
    write_idx_set(tmp_path, gz=True)
    reads = []
    real_read = idx_module.read_file
    monkeypatch.setattr(idx_module, "read_file", lambda *a, **k: reads.append(a[2]) or real_read(*a, **k))
    first = build_data(cfg(tmp_path))
    second = build_data(cfg(tmp_path))
    assert len(reads) == 4 and torch.equal(first.train.x, second.train.x)  # a sweep worker's later runs
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-5])  # a changed file is read again, and refused
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        build_data(cfg(tmp_path))


def test_dry_run_counts_the_training_subset(tmp_path):
    from biasbench.recipe import from_dict
    from biasbench.study.cost import _train_samples

    full = from_dict({"data": {"name": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.1}})
    subset = from_dict({"data": {"name": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.1,
                                 "options": {"train_size": 10_000}}})
    assert _train_samples(full) == (54_000, False) and _train_samples(subset) == (9_000, False)


def test_verify_false_checks_structure_only(tmp_path):
    write_idx_set(tmp_path, gz=False)
    labels = (np.arange(10_000) % 10).astype(np.uint8)  # the official size, not the official content
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(UserError, match="corrupt"):
        build_data(cfg(tmp_path))  # auto compares it with the release
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10_000, 28, 28), np.uint8)))
    bundle = build_data(cfg(tmp_path, options={"verify": False}))  # false: no hash, structure still checked
    assert set(bundle.info["checksum"].values()) == {"skipped"} and len(bundle.test) == 10_000
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels)[:-3])
    with pytest.raises(UserError, match="truncated"):
        build_data(cfg(tmp_path, options={"verify": False}))
