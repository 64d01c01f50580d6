"""CIFAR, MNIST-like and SVHN loaders read tiny files written in the official on-disk formats."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from biasbench.cli import main
from biasbench.data import build_data
from biasbench.data.common import channel_stats
from biasbench.data.splits import validation_split
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import run_cli, tiny_recipe, write_recipe

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------
# Writers of the official formats.
# ---------------------------------------------------------------------------------------------


def _cifar_batch(path: Path, n: int, classes: int, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = RNG.integers(0, classes, n)
    labels[:classes] = np.arange(classes)[:n]  # every class present
    entry = {"batch_label": path.name, label_key: [int(v) for v in labels], "data": data,
             "filenames": [f"img_{i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        entry["coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return data.reshape(n, 3, 32, 32), labels


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 10) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = [_cifar_batch(folder / f"data_batch_{i}", per_batch, 10, "labels") for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", n_test, 10, "labels")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch}, f)
    return {"train_x": np.concatenate([p[0] for p in parts]),
            "train_y": np.concatenate([p[1] for p in parts]), "test_x": test[0], "test_y": test[1]}


def write_cifar100(root: Path, n_train: int = 220, n_test: int = 30) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = _cifar_batch(folder / "train", n_train, 100, "fine_labels")
    test = _cifar_batch(folder / "test", n_test, 100, "fine_labels")
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return {"train_x": train[0], "train_y": train[1], "test_x": test[0], "test_y": test[1]}


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX (the MNIST format): magic 0x0000 0x08 ndim, big-endian int32 dims, uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, cls: str, n_train: int = 40, n_test: int = 12) -> dict[str, np.ndarray]:
    raw = root / cls / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n, key in (("train", n_train, "train"), ("t10k", n_test, "test")):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        RNG.shuffle(y)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[f"{key}_x"], out[f"{key}_y"] = x[:, None], y
    return out


def write_svhn(root: Path, n_train: int = 30, n_test: int = 11) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        svhn_labels = np.where(digits == 0, 10, digits)  # SVHN writes digit 0 as 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0),
                                                       "y": svhn_labels.reshape(-1, 1).astype(np.uint8)})
        out[f"{split}_x"], out[f"{split}_y"] = x, digits
    return out


def cfg(name: str, root: Path | None, **kw) -> DataConfig:
    return DataConfig(name=name, root=None if root is None else str(root), **kw)


def _assert_bundle(bundle, written, config, classes: int, replicate: int = 0) -> None:
    """Exact pixels and labels; validation carved from train by `validation_split`; official test."""
    tx, ty = torch.from_numpy(written["train_x"]), torch.from_numpy(written["train_y"]).long()
    tr, va, info = validation_split(ty, config, replicate)
    assert torch.equal(bundle.train.x, tx[tr]) and torch.equal(bundle.train.y, ty[tr])
    if len(va):
        assert torch.equal(bundle.val.x, tx[va]) and torch.equal(bundle.val.y, ty[va])
    assert torch.equal(bundle.test.x, torch.from_numpy(written["test_x"]))
    assert torch.equal(bundle.test.y, torch.from_numpy(written["test_y"]).long())
    assert bundle.train.x.dtype == torch.uint8 and bundle.train.y.dtype == torch.int64
    assert bundle.num_outputs == classes and bundle.task == "classification"
    assert bundle.input_shape == tuple(tx.shape[1:])
    assert bundle.mean == pytest.approx(channel_stats(tx[tr])[0]) and len(bundle.mean) == tx.shape[1]
    expected_std = (tx[tr].double() / 255).transpose(0, 1).reshape(tx.shape[1], -1).std(dim=1, unbiased=False)
    assert bundle.std == pytest.approx(expected_std.tolist(), abs=1e-5)
    for k, v in info.items():
        assert bundle.info[k] == v


# ---------------------------------------------------------------------------------------------
# Exact loading and splits.
# ---------------------------------------------------------------------------------------------


def test_cifar10_pickles_load_exactly_with_fraction_validation(tmp_path):
    written = write_cifar10(tmp_path)
    config = cfg("cifar10", tmp_path, val_fraction=0.2, split_seed=3)
    bundle = build_data(config)
    _assert_bundle(bundle, written, config, 10)
    assert len(bundle.train) + len(bundle.val) == 60 and bundle.info["test_split"] == "official"
    # stratified: every class keeps its share in validation
    for c in range(10):
        n_c = int((torch.from_numpy(written["train_y"]) == c).sum())
        assert int((bundle.val.y == c).sum()) == round(n_c * 0.2)


def test_cifar10_kfold_validation_folds_partition_the_training_set(tmp_path):
    written = write_cifar10(tmp_path)
    seen = []
    for r in range(3):
        config = cfg("cifar10", tmp_path, val_folds=3)
        bundle = build_data(config, replicate=r)
        _assert_bundle(bundle, written, config, 10, replicate=r)
        assert bundle.info["val_fold"] == r
        seen.append(bundle.val.x.reshape(len(bundle.val), -1))
    rows = torch.cat(seen)
    assert len(rows) == 60 and len(torch.unique(rows, dim=0)) == 60  # each image validated exactly once


def test_cifar100_fine_labels_load_exactly(tmp_path):
    written = write_cifar100(tmp_path)
    config = cfg("cifar100", tmp_path, val_fraction=0.0)
    bundle = build_data(config)
    _assert_bundle(bundle, written, config, 100)
    assert bundle.val is None


@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"),
                                      ("kmnist", "KMNIST")])
def test_mnist_like_idx_files_load_exactly_from_torchvisions_layout(tmp_path, name, cls):
    written = write_mnist_like(tmp_path, cls)
    config = cfg(name, tmp_path, val_fraction=0.25)
    bundle = build_data(config)
    _assert_bundle(bundle, written, config, 10)
    assert bundle.input_shape == (1, 28, 28) and "torchvision layout" in bundle.info["source"]


def test_svhn_mat_files_load_exactly_with_label_10_as_digit_0(tmp_path):
    written = write_svhn(tmp_path / "svhn")
    config = cfg("svhn", tmp_path / "svhn", val_fraction=0.34)
    bundle = build_data(config)
    _assert_bundle(bundle, written, config, 10)
    assert int(torch.cat([bundle.train.y, bundle.val.y, bundle.test.y]).max()) == 9
    assert (bundle.test.y == 0).sum() == 2  # test labels 0..9 cyclic over 11 images: two zeros


def test_verify_option_checks_official_md5(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(UserError, match="differ from the official files"):
        build_data(cfg("cifar10", tmp_path, options={"verify": True}))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "kmnist", "svhn"])
def test_missing_root_names_the_files_and_the_download_key(tmp_path, name):
    with pytest.raises(UserError) as e:
        build_data(cfg(name, tmp_path / "nowhere"))
    msg = str(e.value)
    assert "\n" not in msg and "data.download: true" in msg and "does not exist" in msg
    assert any(f in msg for f in ("data_batch_1", "cifar-100-python/train", "train-images-idx3-ubyte",
                                  "train_32x32.mat"))


def test_root_not_set_says_which_key(tmp_path):
    with pytest.raises(UserError, match="needs data.root"):
        build_data(cfg("cifar10", None))


def test_incomplete_cifar_root_lists_only_missing_files(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(UserError) as e:
        build_data(cfg("cifar10", tmp_path))
    assert "data_batch_4" in str(e.value) and "data_batch_3" not in str(e.value)


def test_corrupt_files_give_one_line(tmp_path):
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="data_batch_2.*not a CIFAR python batch"):
        build_data(cfg("cifar10", tmp_path / "c"))
    write_mnist_like(tmp_path / "m", "MNIST")
    (tmp_path / "m" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="train-images-idx3-ubyte` is truncated"):
        build_data(cfg("mnist", tmp_path / "m"))
    write_svhn(tmp_path / "s")
    (tmp_path / "s" / "test_32x32.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(UserError, match="test_32x32.mat"):
        build_data(cfg("svhn", tmp_path / "s"))


def test_unknown_option_is_rejected(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(UserError, match="no option"):
        build_data(cfg("cifar10", tmp_path, options={"image_sise": 3}))


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_cli_missing_root_exits_2_with_one_line(tmp_path, capsys, dry):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["train", str(recipe), "--set", "data.name=cifar10", "--set", f"data.root={tmp_path / 'none'}", *dry])
    assert e.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error:") and "\n" not in err and "data.download: true" in err
    assert "Traceback" not in err and "does not exist" in err
    assert captured.out == ""  # refused before any line about the run (--dry-run too)


def test_cli_trains_on_cifar_files_with_crop_flip(tmp_path, capsys):
    written = write_cifar10(tmp_path / "data")
    doc = tiny_recipe(tmp_path, train={"epochs": 1, "batch_size": 16})
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    code, _, err = run_cli(["train", str(recipe), "--set", "data.name=cifar10", "--set",
                            f"data.root={tmp_path / 'data'}", "--set", "data.augment=crop_flip", "-q"])
    assert code == 0, err
    results = json.loads(next((tmp_path / "runs").rglob("results.json")).read_text())
    assert results["status"] == "completed"
    tr, va, _ = validation_split(torch.from_numpy(written["train_y"]), DataConfig(), 0)  # default fraction
    assert results["data"]["train_size"] == len(tr) and results["data"]["val_size"] == len(va) > 0
    assert results["data"]["test_size"] == 10
    assert results["data"]["input_shape"] == [3, 32, 32]
