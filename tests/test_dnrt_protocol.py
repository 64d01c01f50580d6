"""DNRT's ViT protocol as the authors run it (horrible-dong/DNRT): timm's transforms and cosine
schedule compared with timm's own objects built as the authors' code builds them, weight decay on
every parameter (and on none of the biases in the held-out twin), all training images with no
validation split, end to end; the long-tailed rows' ResNet-32."""

from __future__ import annotations

import enum
import json

import pytest
import torch
from PIL import Image

from biasbench import trainer
from biasbench.data import build_data
from biasbench.data.augment import AUGMENTS, augment_options
from biasbench.data.loader import ImageLoader, TensorLoader, seeded_rngs
from biasbench.models import build_model, model_hooks
from biasbench.optim import build_optimizer, build_scheduler
from biasbench.params import parameter_roles
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES, run_cli
from tests.test_data_formats import write_cifar10

CPU = torch.device("cpu")
AUTHORS = RECIPES / "dnrt" / "cifar10" / "vit_tiny_dnrt.yaml"
HELDOUT = RECIPES / "dnrt" / "cifar10" / "vit_tiny_dnrt_heldout.yaml"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # qtcls/datasets/__init__.py, CIFAR-10


def authors_transforms(image_size: int = 32):
    """`build_timm_aug_kwargs` of qtcls/datasets/__init__.py, passed to timm as their code does."""
    from timm.data import create_transform

    train = create_transform(input_size=image_size, is_training=True, use_prefetcher=False, no_aug=False,
                             scale=(0.08, 1.0), ratio=(3. / 4., 4. / 3.), hflip=0.5, vflip=0., color_jitter=0.4,
                             auto_augment="rand-m9-mstd0.5-inc1", interpolation="random", mean=MEAN, std=STD,
                             re_prob=0.25, re_mode="pixel", re_count=1, re_num_splits=0, separate=False)
    evaluate = create_transform(input_size=image_size, is_training=False, use_prefetcher=False, no_aug=False,
                                crop_pct=0.875, interpolation="bilinear", mean=MEAN, std=STD)
    return train, evaluate


def describe(obj):
    """Every setting of a transform pipeline, as plain data: ops in order, probabilities, magnitudes."""
    if hasattr(obj, "transforms"):
        return [describe(t) for t in obj.transforms]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {k: describe(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return str(obj)
    if callable(obj) and hasattr(obj, "__name__"):
        return obj.__name__
    if hasattr(obj, "__dict__"):
        fields = {k: describe(v) for k, v in vars(obj).items() if not k.startswith("_") and k != "training"}
        return {"op": type(obj).__name__, **fields}
    return obj


def pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=8, n_test=6)
    return root


def test_training_transform_is_timms_as_the_authors_build_it(cifar):
    recipe = load_recipe(AUTHORS, [f"data.root={cifar}"])
    bundle = build_data(recipe.data)
    assert (bundle.mean, bundle.std) == (MEAN, STD)  # normalization: dnrt
    options = augment_options("timm", recipe.data.augment_options)
    ours = AUGMENTS.get("timm").train((3, 32, 32), bundle.mean, bundle.std, options)  # as ImageLoader builds it
    theirs, _ = authors_transforms()
    expected = describe(theirs)
    for op in expected[2]["ops"]:  # the one change: posterize as their Pillow (<= 12) ran it (test_timm_posterize)
        if op["name"] == "PosterizeIncreasing":
            op["aug_fn"] = "posterize_old_pillow"
    assert describe(ours.transform) == expected  # same ops, probabilities, magnitudes, interpolations
    ops = [step["op"] for step in describe(theirs)]
    assert ops == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "MaybeToTensor",
                   "Normalize", "RandomErasing"]  # no colour jitter: timm drops it under RandAugment
    for i in range(6):  # the same random numbers give the same image
        with seeded_rngs(100 + i):
            a = ours(bundle.train.x[i])
        with seeded_rngs(100 + i):
            b = theirs(pil(bundle.train.x[i]))
        assert torch.equal(a, b)


def test_evaluation_images_are_timms_resize_36_crop_32(cifar):
    recipe = load_recipe(AUTHORS, [f"data.root={cifar}"])
    raw = build_data(load_recipe(AUTHORS, [f"data.root={cifar}", "data.augment=none",
                                           "data.augment_options={}"]).data)
    bundle = build_data(recipe.data)
    _, theirs = authors_transforms()
    (ours, _), = list(TensorLoader(bundle, bundle.test, 64, CPU))
    expected = torch.stack([theirs(pil(image)) for image in raw.test.x])
    assert torch.equal(ours, expected)


def test_timm_augmentation_gives_the_same_batches_in_any_number_of_workers(cifar):
    # timm draws from Python's and NumPy's generators too: each image seeds all three
    recipe = load_recipe(AUTHORS, [f"data.root={cifar}"])
    bundle = build_data(recipe.data)
    options = augment_options("timm", recipe.data.augment_options)
    batches = []
    for workers in (0, 2):
        loader = ImageLoader(bundle, bundle.train, 16, CPU, AUGMENTS.get("timm"), seed=3, workers=workers,
                             options=options)
        loader.set_epoch(1)
        batches.append(list(loader))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*batches, strict=True))


def _authors_lrs(base_lr: float, epochs: int, steps: int, warmup_epochs: int, warmup_lr: float,
                 min_lr: float) -> list[float]:
    """timm's CosineLRScheduler built as qtcls/schedulers/__init__.py builds it and stepped as
    engine.py steps it; the learning rate each optimiser step runs with."""
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr, weight_decay=0.05, eps=1e-8)
    num_steps, warmup_steps = int(epochs * steps), int(warmup_epochs * steps)
    sched = CosineLRScheduler(opt, t_initial=(num_steps - warmup_steps), lr_min=min_lr, warmup_lr_init=warmup_lr,
                              warmup_t=warmup_steps, cycle_limit=1, t_in_epochs=False)
    lrs = []
    for epoch in range(epochs):
        for batch in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_update(epoch * steps + batch)
        sched.step(epoch)
    return lrs


@pytest.mark.parametrize("epochs, warmup, steps", [(30, 2, 7), (15, 1, 4)])
def test_schedule_matches_timms_at_every_step_of_a_shortened_run(epochs, warmup, steps):
    recipe = load_recipe(AUTHORS, [f"train.epochs={epochs}", f"schedule.warmup_epochs={warmup}"])
    s = recipe.schedule
    opt, _ = build_optimizer(torch.nn.Linear(3, 2), recipe.optim)
    sched = build_scheduler(opt, s, recipe.optim.lr, steps, epochs)
    ours = []
    for _ in range(epochs * steps):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    theirs = _authors_lrs(recipe.optim.lr, epochs, steps, warmup, s.warmup_start_lr, s.min_lr)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    floor = (epochs - warmup) * steps  # warmup_prefix=False: the floor comes warmup epochs early
    assert theirs[floor] > s.min_lr and theirs[floor + 1] == s.min_lr and ours[-1] == pytest.approx(s.min_lr)


def test_the_full_schedule_reaches_its_floor_at_epoch_280_of_300():
    recipe = load_recipe(AUTHORS)
    opt, _ = build_optimizer(torch.nn.Linear(3, 2), recipe.optim)
    steps = 196  # 50,000 images in batches of 256
    lr = build_scheduler(opt, recipe.schedule, recipe.optim.lr, steps, recipe.train.epochs).lr_lambdas[0]
    floor = recipe.schedule.min_lr / recipe.optim.lr
    assert lr(279 * steps) > floor * 1.0001 and lr(280 * steps + 1) == pytest.approx(floor, rel=1e-12)


def _model_and_groups(path):
    recipe = load_recipe(path)
    model = build_model(recipe.model.name, recipe.model.variant, num_classes=10, in_channels=3,
                        input_shape=(3, 32, 32), variant_options=recipe.model.variant_options, **recipe.model.options)
    opt, _ = build_optimizer(model, recipe.optim)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    return model, opt, decay


def test_weight_decay_reaches_every_parameter_in_the_authors_recipe_and_no_bias_in_the_heldout_one():
    model, opt, decay = _model_and_groups(AUTHORS)
    names = dict(model.named_parameters())
    roles = parameter_roles(model)
    assert len(opt.param_groups) == 1 and all(decay[id(p)] == 0.05 for p in names.values())
    not_weights = {n for n, r in roles.items() if r != "weight"}
    # the authors' single group: biases, norms, position embedding, class token, RAA's gate
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= not_weights
    assert any(".act_fc2." in n for n in not_weights)  # RAA's parameters
    model, opt, decay = _model_and_groups(HELDOUT)
    names = dict(model.named_parameters())
    assert all(decay[id(names[n])] == 0.0 for n in not_weights)
    assert all(decay[id(p)] == 0.05 for n, p in names.items() if roles[n] == "weight")


def test_authors_protocol_trains_on_every_image_says_there_is_no_validation_and_resumes(tmp_path, cifar):
    tiny = ["model.options.patch=8", "model.options.dim=16", "model.options.depth=1", "model.options.heads=1",
            "train.epochs=2", "train.batch_size=16", "train.replicates=1", "train.amp=none", "data.workers=0",
            f"data.root={cifar}"]

    def run(out, **kw):
        return trainer.train_recipe(load_recipe(AUTHORS, [*tiny, f"output.dir={tmp_path / out}"]), CPU, **kw)[0]

    doc = run("a")
    assert doc["status"] == "completed" and doc["data"]["train_size"] == 40 and doc["data"]["val_size"] == 0
    assert doc["data"]["val_split"] == "none" and doc["best"]["selected_by"] == "test_acc"
    assert all("val_acc" not in h for h in doc["history"]) and doc["seed"] == 42
    assert doc["recipe"]["data"]["augment_options"]["auto_augment"] == "rand-m9-mstd0.5-inc1"
    run("b", stop_after=1)
    resumed = run("b", resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in doc["history"]]
    # compare reads it, and says the robust estimator could only choose its epoch on the test set
    code, out, err = run_cli(["compare", str(tmp_path / "a"), "--estimator", "robust", "--json", "-"])
    summary = json.loads(out)
    assert code == 0 and summary["groups"][0]["completed"] == 1, err
    assert any("no validation split" in note for note in summary["notes"])


def test_the_long_tailed_resnet32_counts_its_parameters_from_its_layers():
    # He et al.'s option-A ResNet-32 (identity shortcuts padded with zeros: no parameters).
    model = build_model("resnet32_v1", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32),
                        variant_options={"activation": "gelu"})
    conv = lambda c_in, c_out, k: c_in * c_out * k * k  # noqa: E731  (no conv biases)
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 16, 3) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(5):
            total += conv(c_in, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            c_in = width
    total += 64 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == total == 464_154
    dnrt = build_model("resnet32_v1", "dnrt", num_classes=10, in_channels=3, input_shape=(3, 32, 32),
                       variant_options={"activation": "gelu"})
    assert len(model_hooks(dnrt).loss_terms) == 1 and any(type(m).__name__ == "RAA2d" for m in dnrt.modules())
    assert not any(isinstance(m, torch.nn.GELU) for m in dnrt.modules())
