"""Image-folder sets (Imagenette layout, generic image_folder, ISIC 2019): pixels, splits, cache, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biasbench.data import build_data
from biasbench.data import image_folder as image_folder_mod
from biasbench.data.image_folder import ISIC_CLASSES
from biasbench.data.splits import fraction_split
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import run_cli, tiny_recipe, write_recipe

SIZE = 8


def _png(path: Path, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """PNG bytes (lossless) whatever the file name says; returns the pixels as (3, H, W)."""
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels.transpose(2, 0, 1)


def write_class_folders(folder: Path, classes: list[str], per_class: int, seed: int) -> dict[str, list]:
    """folder/<class>/<i>.png; returns the pixels and labels in sorted class then file order."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, c in enumerate(sorted(classes)):
        for i in range(per_class):
            xs.append(_png(folder / c / f"img{i:03d}.png", rng))
            ys.append(label)
    return {"x": torch.from_numpy(np.stack(xs)), "y": torch.tensor(ys)}


def cfg(name: str, root: Path, **options) -> DataConfig:
    return DataConfig(name=name, root=str(root), val_fraction=0.25,
                      options={"image_size": SIZE, "cache_dir": str(root / "cache"), **options})


def test_imagenette_layout_loads_exact_pixels_with_val_folder_as_test(tmp_path):
    base = tmp_path / "imagenette2-160"  # data.root may be the parent of the extracted archive
    train = write_class_folders(base / "train", ["n02", "n01", "n03"], 4, seed=0)
    test = write_class_folders(base / "val", ["n01", "n02", "n03"], 2, seed=1)
    bundle = build_data(cfg("imagenette", tmp_path))
    x = torch.cat([bundle.train.x, bundle.val.x])
    y = torch.cat([bundle.train.y, bundle.val.y])
    order = sorted(range(len(x)), key=lambda i: x[i].flatten().tolist())
    expected = sorted(range(len(train["x"])), key=lambda i: train["x"][i].flatten().tolist())
    assert torch.equal(x[order], train["x"][expected]) and torch.equal(y[order], train["y"][expected])
    assert torch.equal(bundle.test.x, test["x"]) and torch.equal(bundle.test.y, test["y"])
    assert bundle.num_outputs == 3 and bundle.input_shape == (3, SIZE, SIZE)
    assert len(bundle.val) == 3 and sorted(bundle.val.y.tolist()) == [0, 1, 2]  # stratified 25%
    assert bundle.info["test_split"] == "official val/ folder" and bundle.info["cache_hit"] is False


def test_images_are_resized_to_image_size(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / "train" / c / f"{i}.png", rng, size=20)
            wide = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
            Image.fromarray(wide).save(tmp_path / "train" / c / f"w{i}.jpg")
    for mode in ("squash", "crop"):
        bundle = build_data(cfg("image_folder", tmp_path, image_size=6, resize=mode))
        assert bundle.train.x.shape[1:] == (3, 6, 6) and bundle.test.x.shape[1:] == (3, 6, 6)
        assert bundle.info["resize"] == mode and bundle.num_outputs == 2


def test_second_build_reads_the_cache_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    write_class_folders(tmp_path / "train", ["a", "b"], 4, seed=0)
    write_class_folders(tmp_path / "test", ["a", "b"], 2, seed=1)
    first = build_data(cfg("image_folder", tmp_path))
    assert first.info["cache_hit"] is False and Path(first.info["cache"]).is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is fresh")

    monkeypatch.setattr(image_folder_mod, "decode_image", no_decoding)
    second = build_data(cfg("image_folder", tmp_path))
    assert second.info["cache_hit"] is True
    assert torch.equal(second.train.x, first.train.x) and torch.equal(second.test.x, first.test.x)

    # a rewritten image (new content, new mtime) must be decoded again
    changed = _png(tmp_path / "test" / "a" / "img000.png", np.random.default_rng(99))
    stamp = os.stat(tmp_path / "test" / "a" / "img000.png").st_mtime_ns + 10**9
    os.utime(tmp_path / "test" / "a" / "img000.png", ns=(stamp, stamp))
    with pytest.raises(AssertionError, match="decoded an image"):
        build_data(cfg("image_folder", tmp_path))
    monkeypatch.undo()
    third = build_data(cfg("image_folder", tmp_path))
    assert third.info["cache_hit"] is False and torch.equal(third.test.x[0], torch.from_numpy(changed))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the stale cache was replaced

    # a new image size is a different cache too
    assert build_data(cfg("image_folder", tmp_path, image_size=4)).info["cache_hit"] is False


def test_cache_beside_the_data_by_default(tmp_path):
    write_class_folders(tmp_path / "train", ["a", "b"], 3, seed=0)
    config = DataConfig(name="image_folder", root=str(tmp_path), options={"image_size": SIZE})
    bundle = build_data(config)
    assert Path(bundle.info["cache"]).parent == tmp_path / ".biasbench_cache"
    assert build_data(config).info["cache_hit"] is True


def test_image_folder_without_test_folder_holds_out_a_fixed_stratified_part(tmp_path):
    data = write_class_folders(tmp_path / "train", ["a", "b"], 10, seed=0)
    bundle = build_data(cfg("image_folder", tmp_path, test_fraction=0.2))
    _, test = fraction_split(data["y"], 0.2, 0)
    assert torch.equal(bundle.test.x, data["x"][test]) and torch.equal(bundle.test.y, data["y"][test])
    assert len(bundle.train) + len(bundle.val) == 16
    other_seed = build_data(DataConfig(**{**cfg("image_folder", tmp_path).__dict__, "split_seed": 5}))
    assert torch.equal(other_seed.test.x, bundle.test.x)  # split_seed moves validation, never the test set


def test_image_folder_with_val_and_test_folders_uses_both(tmp_path):
    write_class_folders(tmp_path / "train", ["a", "b"], 3, seed=0)
    val = write_class_folders(tmp_path / "val", ["a", "b"], 2, seed=1)
    test = write_class_folders(tmp_path / "test", ["a"], 2, seed=2)
    bundle = build_data(cfg("image_folder", tmp_path))
    assert torch.equal(bundle.val.x, val["x"]) and torch.equal(bundle.test.x, test["x"])
    assert len(bundle.train) == 6 and bundle.info["val_split"] == "folder"


def _write_isic(root: Path, per_class: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(3)
    rows = ["image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"]
    xs, ys = [], []
    for k in range(per_class * len(ISIC_CLASSES)):
        label = int(rng.integers(0, len(ISIC_CLASSES))) if k >= len(ISIC_CLASSES) else k
        name = f"ISIC_{k:07d}"
        xs.append(_png(root / "ISIC_2019_Training_Input" / f"{name}.jpg", rng))
        ys.append(label)
        one_hot = ["1.0" if c == label else "0.0" for c in range(len(ISIC_CLASSES))]
        rows.append(",".join([name, *one_hot, "0.0"]))
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def test_isic2019_reads_the_csv_and_holds_out_a_fixed_test_part(tmp_path):
    x, y = _write_isic(tmp_path)  # PNG bytes under .jpg names: lossless, so pixels compare exactly
    bundle = build_data(cfg("isic2019", tmp_path, test_fraction=0.25))
    rest, test = fraction_split(y, 0.25, 0)
    assert torch.equal(bundle.test.x, x[test]) and torch.equal(bundle.test.y, y[test])
    assert len(bundle.train) + len(bundle.val) == len(rest) and bundle.num_outputs == 8
    assert "no labelled official test set" in bundle.info["test_split"]


def test_isic_csv_with_missing_columns_or_bad_rows_is_one_line(tmp_path):
    _write_isic(tmp_path)
    csv_path = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line.rsplit(",", 3)[0] for line in lines) + "\n")  # drops VASC, SCC, UNK
    with pytest.raises(UserError, match="lacks the column.*VASC, SCC") as e:
        build_data(cfg("isic2019", tmp_path))
    assert "\n" not in str(e.value)
    lines[3] = lines[3].replace("1.0", "0.0")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="line 4.*not exactly one"):
        build_data(cfg("isic2019", tmp_path))


def test_corrupt_image_names_the_file(tmp_path):
    write_class_folders(tmp_path / "train", ["a", "b"], 2, seed=0)
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UserError, match=r"cannot decode image `.*broken\.jpg`"):
        build_data(cfg("image_folder", tmp_path))


@pytest.mark.parametrize("name", ["imagenette", "imagewoof", "image_folder", "isic2019"])
def test_missing_root_is_one_line(tmp_path, name):
    with pytest.raises(UserError) as e:
        build_data(cfg(name, tmp_path / "nowhere"))
    assert "\n" not in str(e.value) and "does not exist" in str(e.value)


def test_cli_corrupt_image_exits_2(tmp_path, capsys):
    write_class_folders(tmp_path / "data" / "train", ["a", "b"], 2, seed=0)
    (tmp_path / "data" / "train" / "a" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    code, _, err = run_cli(["train", str(recipe), "--set", "data.name=image_folder",
                            "--set", f"data.root={tmp_path / 'data'}"])
    assert code == 2 and "zz.png" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
