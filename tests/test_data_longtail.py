"""Long-tailed CIFAR (`data.options.imbalance`): class counts follow Cui et al.'s exponential
profile exactly, the kept images are the originals, the test set stays balanced, bad factors
are refused in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from biasbench.data import build_data
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import RECIPES, one_line_error, run_cli


def _batch(path: Path, labels: np.ndarray, label_key: str, rng: np.random.Generator) -> np.ndarray:
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({label_key: [int(v) for v in labels], "data": data}, f, protocol=2)
    return data


def write_balanced_cifar(root: Path, classes: int, per_class: int, test_per_class: int) -> dict[str, np.ndarray]:
    """CIFAR-10 (5 training batches) or CIFAR-100 (one) files with exactly `per_class` images a class."""
    rng = np.random.default_rng(7)
    ten = classes == 10
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if ten else "fine_labels"
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    names = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    parts = np.array_split(labels, len(names))
    data = np.concatenate([_batch(folder / n, part, key, rng) for n, part in zip(names, parts)])
    _batch(folder / ("test_batch" if ten else "test"), np.repeat(np.arange(classes), test_per_class), key, rng)
    meta = {"label_names": [f"c{i}" for i in range(10)]} if ten else {"fine_label_names": [f"f{i}" for i in range(100)]}
    with open(folder / ("batches.meta" if ten else "meta"), "wb") as f:
        pickle.dump(meta, f)
    return {"x": data.reshape(-1, 3, 32, 32), "y": labels}


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    return root, write_balanced_cifar(root, 10, per_class=100, test_per_class=20)


@pytest.mark.parametrize("beta", [10, 50, 100])
def test_cifar10_class_counts_follow_the_exponential_profile_exactly(cifar10, beta):
    root, files = cifar10
    bundle = build_data(DataConfig(name="cifar10", root=str(root), val_fraction=0.0, options={"imbalance": beta}))
    profile = [int(100 * beta ** (-i / 9)) for i in range(10)]  # n_i = int(n_max * beta ** (-i / (K - 1)))
    assert torch.bincount(bundle.train.y, minlength=10).tolist() == profile
    assert profile[0] == 100 and profile[-1] == 100 // beta
    assert torch.bincount(bundle.test.y, minlength=10).tolist() == [20] * 10  # balanced, untouched
    assert bundle.info["imbalance"]["class_counts"] == profile and bundle.info["imbalance"]["beta"] == beta
    assert bundle.info["class_counts"] == {"train": profile, "test": [20] * 10}
    originals = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(torch.from_numpy(files["x"]), files["y"])}
    assert all(originals[bytes(x.numpy().tobytes())] == int(y) for x, y in zip(bundle.train.x, bundle.train.y))
    again = build_data(DataConfig(name="cifar10", root=str(root), val_fraction=0.0, options={"imbalance": beta}))
    assert torch.equal(again.train.x, bundle.train.x)  # the same images every time


def test_validation_is_carved_out_of_the_long_tailed_set(cifar10):
    root, _ = cifar10
    bundle = build_data(DataConfig(name="cifar10", root=str(root), val_fraction=0.2, options={"imbalance": 10}))
    counts = bundle.info["class_counts"]
    assert [t + v for t, v in zip(counts["train"], counts["val"])] == [int(100 * 10 ** (-i / 9)) for i in range(10)]
    assert counts["val"][0] == 20 and counts["val"][-1] == 2  # stratified: long-tailed too


def test_cifar100_class_counts_follow_the_profile(tmp_path):
    write_balanced_cifar(tmp_path, 100, per_class=20, test_per_class=2)
    bundle = build_data(DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.0, options={"imbalance": 10}))
    assert torch.bincount(bundle.train.y, minlength=100).tolist() == [int(20 * 10 ** (-i / 99)) for i in range(100)]
    assert torch.bincount(bundle.test.y, minlength=100).tolist() == [2] * 100


@pytest.mark.parametrize("value, words", [
    (0.5, ["imbalance", "at least 1"]), ("ten", ["imbalance", "must be a number"]),
    (1000, ["leaves class 9", "without images"]),
])
def test_impossible_imbalance_factors_are_refused_in_one_line(cifar10, tmp_path, value, words):
    root, _ = cifar10
    code, _, err = run_cli(["train", str(RECIPES / "dnrt/cifar10_lt/resnet32_gelu_b10.yaml"), "--out", str(tmp_path),
                            "--set", f"data.root={root}", "--set", f"data.options.imbalance={value}"])
    one_line_error(code, err, *words)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_imbalance_is_a_cifar_option_only():
    with pytest.raises(UserError, match="has no option"):
        build_data(DataConfig(name="digits", options={"imbalance": 10}))
