"""`imagenet`: the ImageFolder tree (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) read from a tiny
generated one, class subsets from a class-list file, images decoded per batch by the timm
pipeline (training) and timm's evaluation transform (evaluation), bad trees in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biasbench import trainer
from biasbench.data import FileSplit, build_data
from biasbench.data.loader import FileEvalLoader, ImageLoader, make_eval_loader, make_train_loader
from biasbench.errors import UserError
from biasbench.recipe import DataConfig, load_recipe
from tests.conftest import RECIPES, one_line_error, run_cli, tiny_recipe, write_recipe

CPU = torch.device("cpu")
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_tree(root: Path, train: int = 3, val: int = 2) -> Path:
    """JPEGs of assorted sizes (and one greyscale, one PNG) in the standard ImageFolder layout."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                pixels = np.clip(rng.normal(60 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if i == 1 and c == 0:
                    image.convert("L").save(folder / f"{wnid}_{i}.JPEG")
                elif i == 2 and c == 1:
                    image.save(folder / f"{wnid}_{i}.png")
                else:
                    image.save(folder / f"{wnid}_{i}.JPEG", quality=90)
            (folder / ".DS_Store").write_bytes(b"junk")  # hidden files are not images
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("imagenet"))


def _cfg(root: Path, **options) -> DataConfig:
    return DataConfig(name="imagenet", root=str(root), val_fraction=0.0, augment="timm", workers=0,
                      options={"image_size": 32, **options})


def test_reads_the_tree_in_sorted_class_order(tree):
    bundle = build_data(_cfg(tree))
    assert isinstance(bundle.train, FileSplit) and isinstance(bundle.test, FileSplit) and bundle.val is None
    assert len(bundle.train) == 12 and len(bundle.test) == 8 and bundle.num_outputs == 4
    for files, y in ((bundle.train.files, bundle.train.y), (bundle.test.files, bundle.test.y)):
        assert [WNIDS.index(Path(f).parent.name) for f in files] == y.tolist()
    assert (bundle.mean, bundle.std, bundle.input_shape) == (IMAGENET_MEAN, IMAGENET_STD, (3, 32, 32))
    assert "PIL" in bundle.info["decode"] and bundle.info["val_split"] == "none"


def test_a_class_list_selects_a_subset_labelled_in_sorted_order(tree, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text(f"# two classes\n{WNIDS[3]}\n\n{WNIDS[1]}  # a comment\n")
    bundle = build_data(_cfg(tree, classes=str(classes)))
    assert bundle.num_outputs == 2 and len(bundle.train) == 6 and len(bundle.test) == 4
    assert {Path(f).parent.name for f in bundle.train.files} == {WNIDS[1], WNIDS[3]}
    assert all(WNIDS[[1, 3][int(y)]] == Path(f).parent.name for f, y in zip(bundle.train.files, bundle.train.y))


def test_shipped_imagenet100_list_names_100_classes():
    from biasbench.data.imagenet import read_class_list

    ids = read_class_list(RECIPES / "dnrt" / "imagenet100_classes.txt")
    assert len(ids) == 100 and all(i.startswith("n") and len(i) == 9 for i in ids)


def test_training_batches_decode_files_through_the_timm_pipeline(tree):
    cfg = _cfg(tree)
    bundle = build_data(cfg)
    loader = make_train_loader(bundle, cfg, 5, CPU, seed=1)
    assert isinstance(loader, ImageLoader) and len(loader) == 3
    loader.set_epoch(0)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(bundle.train.y.tolist())
    assert all(x.dtype == torch.float32 and x.abs().max() < 10 for x, _ in batches)  # normalised


def test_evaluation_batches_are_timms_resize_and_centre_crop(tree):
    from timm.data import create_transform

    cfg = _cfg(tree)
    bundle = build_data(cfg)
    loader = make_eval_loader(bundle, bundle.test, cfg, 3, CPU)
    assert isinstance(loader, FileEvalLoader)
    x = torch.cat([x for x, _ in loader])
    timm_eval = create_transform(input_size=32, is_training=False, crop_pct=0.875, interpolation="bilinear",
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with_pil = [timm_eval(Image.open(f).convert("RGB")) for f in bundle.test.files]
    assert torch.allclose(x, torch.stack(with_pil), atol=1e-6, rtol=0)


def test_training_on_the_tree_runs_end_to_end(tree, tmp_path):
    doc = tiny_recipe(tmp_path, model={"name": "cnn", "options": {"width": 4}},
                      data={"name": "imagenet", "root": str(tree), "augment": "timm", "workers": 0,
                            "val_fraction": 0.25, "options": {"image_size": 16}},
                      train={"epochs": 1, "batch_size": 4})
    (result,) = trainer.train_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", doc)), CPU)
    assert result["status"] == "completed" and result["data"]["train_size"] == 8
    assert result["data"]["val_size"] == 4 and result["data"]["test_size"] == 8
    assert "val_acc" in result["history"][0] and "PIL" in result["data"]["decode"]


@pytest.mark.parametrize("problem, words", [
    ("missing class", ["2 of 2 classes have no folder", "n99999999"]),
    ("no val", ["lacks the folders train/ and val/"]),
    ("batched augmentation", ["reads images from disk", "data.augment: timm"]),
])
def test_bad_trees_and_settings_are_refused_in_one_line(tree, tmp_path, problem, words):
    root, sets = tree, ["data.augment=timm"]
    if problem == "missing class":
        (tmp_path / "c.txt").write_text("n99999999\nn99999998\n")
        sets = [*sets, f"data.options.classes={tmp_path / 'c.txt'}"]
    elif problem == "no val":
        root = tmp_path / "broken"
        (root / "train" / WNIDS[0]).mkdir(parents=True)
    else:
        sets = ["data.augment=crop_flip"]
    doc = tiny_recipe(tmp_path, data={"name": "imagenet", "root": str(root), "workers": 0})
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    code, _, err = run_cli(["train", str(recipe), "--out", str(tmp_path / "out"), *[f"--set={s}" for s in sets]])
    one_line_error(code, err, *words)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_undecodable_image_is_one_line_naming_it(tmp_path, workers):
    root = write_tree(tmp_path / "tree", train=1, val=1)
    bad = root / "train" / WNIDS[2] / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    cfg = _cfg(root)
    cfg.workers = workers  # in a worker process, the error crosses back as one line too
    bundle = build_data(cfg)
    with pytest.raises(UserError, match="cannot decode image") as e:
        list(make_train_loader(bundle, cfg, 8, CPU, seed=0))
    assert "broken.JPEG" in str(e.value) and "\n" not in str(e.value)
