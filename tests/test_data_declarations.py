"""Every data set declares what it is (`DatasetInfo`): its input kind, its sizes, where its files
come from; the cost estimate, the missing-data messages and `count` read the declaration, not a
table of names. The sets checked are the registry's, whatever it holds."""

from __future__ import annotations

import math

import pytest
import torch

from biasbench.data import (
    _INFO,
    DATASETS,
    INPUT_KINDS,
    DataBundle,
    DatasetInfo,
    Download,
    Sizes,
    Split,
    dataset_info,
    list_datasets,
    register_dataset,
)
from biasbench.data.common import require_files
from biasbench.errors import UserError
from biasbench.recipe import DataConfig, from_dict
from biasbench.study.cost import _train_samples
from tests.test_data_idx import write_idx_set

# The number of axes one example has, per input kind (a graph's example is one node's features).
AXES = {"images": 3, "features": 1, "sequences": 2, "task_rows": 1, "graphs": 1}


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_set_declares_its_kind_sizes_and_origin(name):
    info = dataset_info(name)
    assert info.summary and info.kind in INPUT_KINDS.names()
    shape = info.shape({})
    if shape is not None:  # a declared shape has the kind's number of axes, and outputs
        assert len(shape[0]) == AXES[info.kind] and shape[1] >= 1
    if info.bundled:
        return  # built (milliseconds) to be counted
    sizes = info.sizes(DataConfig(name=name))  # no data.root: the official sizes, or None
    assert sizes is None or (sizes.train > 0 and sizes.test > 0 and not sizes.exact)
    if info.reads_root:
        assert isinstance(info.download, Download) and info.download.source


def test_a_declaration_of_a_set_read_from_files_without_its_origin_or_sizes_is_refused():
    with pytest.raises(ValueError, match="download"):
        DatasetInfo("x", bundled=False, kind="images", sizes=lambda cfg: None)
    with pytest.raises(ValueError, match="sizes"):
        DatasetInfo("x", bundled=False, kind="images", download=Download("example.org"))
    with pytest.raises(ValueError, match="input kind"):
        DatasetInfo("x", bundled=True, kind="pictures")


@pytest.fixture
def fake_set():
    """A data set registered for one test: 1,234 official training examples, fetchable or not."""
    made = []

    def register(fetch: bool, carves: bool = True) -> str:
        name = f"fake_declared_{len(made)}_{fetch}_{carves}"
        info = DatasetInfo("a set only this test knows", bundled=False, kind="features",
                           shape=lambda o: ((3,), 2), sizes=lambda cfg: Sizes(1_234, 99, carves_validation=carves),
                           download=Download("example.org/fake", fetch=fetch))

        @register_dataset(name, info)
        def build(cfg, replicate=0) -> DataBundle:
            split = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
            return DataBundle(split, None, split, "classification", 2, (3,))

        made.append(name)
        return name

    yield register
    for name in made:  # leave the registry as the other tests know it
        del DATASETS._items[name], _INFO[name]


@pytest.mark.parametrize("carves", [True, False])
def test_the_cost_estimate_reads_the_declared_sizes(fake_set, carves):
    name = fake_set(fetch=False, carves=carves)
    recipe = from_dict({"data": {"name": name, "root": "/nowhere", "val_fraction": 0.25}})
    expected = round(1_234 * 0.75) if carves else 1_234
    assert _train_samples(recipe) == (expected, False)
    folds = from_dict({"data": {"name": name, "root": "/nowhere", "val_fraction": 0.0, "val_folds": 4}})
    assert _train_samples(folds) == (round(1_234 * (1 - 1 / 4)) if carves else 1_234, False)


@pytest.mark.parametrize("fetch", [True, False])
def test_missing_data_messages_come_from_the_declaration(fake_set, tmp_path, fetch):
    name = fake_set(fetch=fetch)
    cfg = DataConfig(name=name, root=str(tmp_path))
    with pytest.raises(UserError) as caught:
        require_files(cfg, name, tmp_path, ["part.bin"])
    message = str(caught.value)
    assert ("data.download: true" in message) == fetch
    assert ("example.org/fake" in message) == (not fetch)  # where to get it by hand
    assert "\n" not in message


def test_idx_sizes_come_from_the_files_headers_when_the_files_are_there(tmp_path):
    write_idx_set(tmp_path, gz=True, n_train=37, n_test=11)
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path))
    assert dataset_info("fashion_mnist").sizes(cfg) == Sizes(37, 11, exact=True)
    recipe = from_dict({"data": {"name": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.2}})
    assert _train_samples(recipe) == (round(37 * 0.8), True)
    official = from_dict({"data": {"name": "fashion_mnist", "root": str(tmp_path / "empty"), "val_fraction": 0.2}})
    assert _train_samples(official) == (round(60_000 * 0.8), False)


def test_the_long_tailed_cifar_subset_is_declared_from_its_profile():
    from biasbench.data.imbalance import exponential_profile

    cfg = DataConfig(name="cifar10", options={"imbalance": 100})
    assert dataset_info("cifar10").sizes(cfg).train == sum(exponential_profile(5_000, 10, 100.0))
    assert dataset_info("cifar10").sizes(DataConfig(name="cifar10")).train == 50_000


def test_every_input_kind_builds_one_example_of_a_declared_shape():
    for name in INPUT_KINDS.names():
        example = INPUT_KINDS.get(name).example((5,) if AXES[name] == 1 else (2,) * AXES[name], "cpu",
                                                torch.float32)
        assert len(example) == 1  # one example, whatever its type: a tensor batch, a graph's node
        x = example if isinstance(example, torch.Tensor) else example.x
        assert math.prod(x.shape) == (5 if AXES[name] == 1 else 2 ** AXES[name])


@pytest.mark.parametrize("name", list_datasets())
def test_data_download_true_is_refused_where_the_declaration_says_it_cannot_fetch(name, tmp_path):
    from biasbench.data import check_data

    download = dataset_info(name).download
    cfg = DataConfig(name=name, root=str(tmp_path), download=True)
    if download is None or download.fetch:
        check_data(cfg)  # torchvision fetches it when it is built; a set without files has nothing to fetch
        return
    with pytest.raises(UserError, match="cannot be downloaded") as caught:
        check_data(cfg)
    assert download.source in str(caught.value) and "\n" not in str(caught.value)
