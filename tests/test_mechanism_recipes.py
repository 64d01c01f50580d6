"""ABN / DNRT / bias-only recipes: each loads in full and offline smoke form and its header's command
trains that very file; the ABN recipes train as the author's script does; its smoke recipes learn."""

from __future__ import annotations

import re

import pytest
import torch

from biasbench import trainer
from biasbench.data import list_datasets
from biasbench.models import build_model
from biasbench.optim import build_optimizer, build_scheduler
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES

CPU = torch.device("cpu")
PAPER_RECIPES = sorted(
    [*RECIPES.glob("abn/**/*.yaml"), *RECIPES.glob("dnrt/**/*.yaml"), *RECIPES.glob("bias_only/**/*.yaml")]
)
OFFLINE = {"digits", "mnist1d", "synthetic", "multitask", "periodic_signal", "synthetic_images", "sbm_graph"}


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_header_command_trains_this_file_and_the_smoke_form_runs_offline(path):
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    # a copied header would name another recipe: the command must train this one
    assert re.findall(r"biasbench train (\S+\.yaml)", header) == [path.relative_to(RECIPES.parent).as_posix()]
    full, smoke = load_recipe(path), load_recipe(path, smoke=True)
    assert smoke.data.name in OFFLINE and smoke.data.name in list_datasets() and smoke.data.root is None
    assert smoke.train.epochs < full.train.epochs and smoke.train.amp == "none"  # CPU-sized, CPU-typed


def test_abn_recipe_trains_as_the_authors_script():
    # main.py: SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) and
    # CosineAnnealingLR(T_max=epochs) stepped once per epoch.
    recipe = load_recipe(RECIPES / "abn" / "cifar10" / "resnet_s_dmb.yaml")
    model = build_model(recipe.model.name, recipe.model.variant, num_classes=10, in_channels=3,
                                input_shape=(3, 32, 32), **recipe.model.options)
    opt, _ = build_optimizer(model, recipe.optim)
    assert [(g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [(5e-4, len(list(model.parameters())))]
    steps, epochs = 3, recipe.train.epochs
    ours = build_scheduler(opt, recipe.schedule, recipe.optim.lr, steps, epochs)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.optim.lr, momentum=0.9)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs)
    for _ in range(epochs):
        for _ in range(steps):
            assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
            opt.step()  # no gradients: nothing moves, but the schedulers see a step taken
            ours.step()
        ref_opt.step()
        ref.step()


@pytest.mark.parametrize("name", ["resnet_s_baseline", "resnet_s_dmb"])
def test_abn_smoke_recipes_learn(tmp_path, name):
    recipe = load_recipe(RECIPES / "abn" / "cifar10" / f"{name}.yaml", [f"output.dir={tmp_path}"], smoke=True)
    (doc,) = trainer.train_recipe(recipe, CPU)
    assert doc["status"] == "completed" and doc["final"]["test_acc"] > 0.8  # chance is 0.1
