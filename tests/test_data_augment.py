"""Augmentations: the fused crop_flip gather, the per-image ViT pipeline and its loader, eval transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasbench.data import DataBundle, Split, build_data
from biasbench.data.augment import AUGMENTS, crop_flip, random_crop, random_flip, resize_center_crop
from biasbench.data.loader import ImageLoader, TensorLoader, make_train_loader
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe
from tests.test_data_formats import write_cifar10

CPU = torch.device("cpu")


def _reference_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Image by image, the obvious way, drawing the same random numbers in the same order."""
    b, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = []
    for i in range(b):
        img = F.pad(x[i], (pad, pad, pad, pad))[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(img.flip(2) if flip[i] else img)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(17, 3, 32, 32), (5, 1, 8, 6)])
def test_crop_flip_equals_per_image_reference(shape):
    x = torch.rand(shape)
    got = crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(got, _reference_crop_flip(x, torch.Generator().manual_seed(3)))
    two_steps = random_flip(random_crop(x, torch.Generator().manual_seed(3)), _after_crop(x.shape[0]))
    assert torch.equal(got, two_steps)
    assert not torch.equal(got, x)


def _after_crop(b: int) -> torch.Generator:
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
    return g


def _bundle(n: int = 20, size: int = 32) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return DataBundle(Split(x, y), None, Split(x[:4], y[:4]), "classification", 4, (3, size, size),
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_vit_loader_is_seeded_per_epoch_and_independent_of_workers():
    bundle = _bundle()
    vit = AUGMENTS.get("vit")
    inline = ImageLoader(bundle, bundle.train, 8, CPU, vit, seed=5, workers=0)
    assert len(inline) == 3 and inline.device == CPU and torch.equal(inline.y, bundle.train.y)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    e0 = _epoch(inline, 0)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    e1 = _epoch(inline, 1)
    assert [x.shape for x, _ in e0] == [(8, 3, 32, 32), (8, 3, 32, 32), (4, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x, _ in e0)
    assert not torch.equal(e0[0][0], e1[0][0])
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == sorted(bundle.train.y.tolist())
    workers = ImageLoader(bundle, bundle.train, 8, CPU, vit, seed=5, workers=2)
    again = _epoch(workers, 1)  # a "resumed" loader, in worker processes, straight at epoch 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, e1, strict=True))


def test_make_train_loader_picks_the_loader_by_augmentation():
    bundle = _bundle()
    vit = make_train_loader(bundle, DataConfig(augment="vit"), 8, CPU, seed=0, workers=0)
    batched = make_train_loader(bundle, DataConfig(augment="crop_flip"), 8, CPU, seed=0)
    assert isinstance(vit, ImageLoader) and isinstance(batched, TensorLoader) and len(vit) == len(batched)
    zeros = torch.zeros(10, dtype=torch.long)
    features = DataBundle(Split(torch.randn(10, 5), zeros), None, Split(torch.randn(2, 5), zeros[:2]),
                          "classification", 2, (5,))
    with pytest.raises(UserError, match="needs images"):
        make_train_loader(features, DataConfig(augment="crop_flip"), 4, CPU, seed=0)
    with pytest.raises(UserError, match="did you mean `crop_flip`"):
        make_train_loader(bundle, DataConfig(augment="cropflip"), 4, CPU, seed=0)


def test_resize_center_crop_keeps_the_centre():
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    x[..., 8:24, 8:24] = 200  # a centred square grows by 36/32 and stays centred
    out = resize_center_crop(x, 36, 32)
    assert out.shape == (1, 1, 32, 32) and out.dtype == torch.uint8
    assert int(out[0, 0, 16, 16]) == 200 and int(out[0, 0, 0, 0]) == 0
    row = out[0, 0, 16]
    assert int((row > 100).sum()) == 18 and torch.equal(row, row.flip(0))  # 16 px * 36/32, still centred
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(resize_center_crop(flat, 36, 32), flat)


def test_vit_eval_transform_is_applied_once_to_val_and_test_only(tmp_path):
    write_cifar10(tmp_path)
    plain = build_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    vit = build_data(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2, augment="vit"))
    assert torch.equal(vit.train.x, plain.train.x)
    assert torch.equal(vit.test.x, resize_center_crop(plain.test.x, 36, 32))
    assert torch.equal(vit.val.x, resize_center_crop(plain.val.x, 36, 32))
    assert not torch.equal(vit.test.x, plain.test.x) and vit.info["eval_transform"] == "vit"


def test_tensor_loader_crop_flip_on_uint8_equals_crop_flip_on_floats():
    bundle = _bundle(n=13)
    loader = TensorLoader(bundle, bundle.train, 5, CPU, shuffle=True, augment=crop_flip, seed=2)
    assert crop_flip.moves_pixels_only
    loader.set_epoch(3)
    got = list(loader)
    from biasbench.data.loader import epoch_generator

    order = torch.randperm(13, generator=epoch_generator(2, 3))
    g = epoch_generator(2, 3, stream=1)
    mean, std = torch.tensor(bundle.mean).view(1, 3, 1, 1), torch.tensor(bundle.std).view(1, 3, 1, 1)
    for b, (x, y) in enumerate(got):
        idx = order[b * 5:(b + 1) * 5]
        expected = (_reference_crop_flip(bundle.train.x[idx].float() / 255, g) - mean) / std
        assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, bundle.train.y[idx])
    assert len(got) == 3 and bundle.train.x.dtype == torch.uint8  # stored data untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loaders_on_cuda_match_the_cpu():
    cuda = torch.device("cuda")
    bundle = _bundle(n=13)
    on_cpu = TensorLoader(bundle, bundle.train, 5, CPU, shuffle=True, augment=crop_flip, seed=2)
    on_gpu = TensorLoader(bundle, bundle.train, 5, cuda, shuffle=True, augment=crop_flip, seed=2)
    for (a, ya), (b, yb) in zip(on_cpu, on_gpu, strict=True):
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-6) and torch.equal(ya, yb.cpu())
    vit = ImageLoader(bundle, bundle.train, 5, cuda, AUGMENTS.get("vit"), seed=1, workers=0)
    x, y = next(iter(vit))
    assert x.device.type == "cuda" and y.device.type == "cuda" and x.shape == (5, 3, 32, 32)


def test_training_with_vit_resumes_exactly(tmp_path):
    from biasbench import trainer
    from biasbench.recipe import load_recipe
    from tests.conftest import tiny_recipe, write_recipe

    write_cifar10(tmp_path / "data", per_batch=8, n_test=6)
    doc = tiny_recipe(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "data"), "augment": "vit"},
                      train={"epochs": 2, "batch_size": 16})
    path = write_recipe(tmp_path / "r.yaml", doc)

    def run(out, **kw):
        return trainer.train_recipe(load_recipe(path, [f"output.dir={tmp_path / out}"]), CPU, **kw)[0]

    straight = run("a")
    run("b", stop_after=1)
    resumed = run("b", resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert straight["data"]["eval_transform"] == "vit"


@pytest.mark.parametrize("augment, options, words", [
    ("timm", {"re_prb": 0.5}, ["has no option `re_prb`", "did you mean `re_prob`"]),
    ("timm", {"color_jitter": 0.4}, ["timm ignores colour jitter", "color_jitter: 0"]),
    ("timm", {"re_mode": "noise"}, ["re_mode must be const, rand or pixel"]),
    ("timm", {"auto_augment": "rand-zz9"}, ["not valid for timm's create_transform"]),
    ("crop_flip", {"p": 0.5}, ["augmentation `crop_flip` has no option `p`", "it has no options"]),
])
def test_augmentation_options_are_checked_before_any_data_is_read(tmp_path, augment, options, words):
    doc = tiny_recipe(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "absent"), "augment": augment,
                                      "augment_options": options})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    one_line_error(code, err, *words)


def test_timm_colour_jitter_is_allowed_without_randaugment(tmp_path):
    from biasbench.data.augment import augment_options

    options = augment_options("timm", {"color_jitter": 0.4, "auto_augment": None})
    pipeline = AUGMENTS.get("timm").train((3, 32, 32), (0.5,) * 3, (0.25,) * 3, options)
    assert "ColorJitter" in repr(pipeline)
