"""Every ABN / DNRT / bias-only recipe loads (full and smoke); the ABN smoke recipes learn."""

from __future__ import annotations

import pytest
import torch

from biasbench import trainer
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES

CPU = torch.device("cpu")
PAPER_RECIPES = sorted(
    [*RECIPES.glob("abn/**/*.yaml"), *RECIPES.glob("dnrt/**/*.yaml"), *RECIPES.glob("bias_only/**/*.yaml")]
)



@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_loads_with_header_and_smoke(path):
    head = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("biasbench train" in line for line in head) and any("Reproduces" in line for line in head)
    assert any("Time:" in line for line in head)
    full, smoke = load_recipe(path), load_recipe(path, smoke=True)
    assert smoke.train.epochs < full.train.epochs


def test_abn_recipes_follow_the_authors_protocol():
    r = load_recipe(RECIPES / "abn" / "cifar10" / "resnet_s_dmb.yaml")
    assert (r.model.name, r.model.variant, r.data.name, r.data.root) == (
        "resnet_s",
        "dmb",
        "cifar10",
        "data/cifar10",
    )
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert r.optim.bias_weight_decay == 5e-4  # the author's optimiser decays every parameter
    assert (r.schedule.name, r.schedule.per, r.train.epochs, r.train.batch_size) == (
        "cosine",
        "epoch",
        15,
        128,
    )
    assert (r.data.augment, r.train.replicates) == ("crop_flip", 5)


@pytest.mark.parametrize("name", ["resnet_s_baseline", "resnet_s_dmb"])
def test_abn_smoke_recipes_learn(tmp_path, name):
    recipe = load_recipe(RECIPES / "abn" / "cifar10" / f"{name}.yaml", [f"output.dir={tmp_path}"], smoke=True)
    (doc,) = trainer.train_recipe(recipe, CPU)
    assert doc["status"] == "completed" and doc["final"]["test_acc"] > 0.8  # chance is 0.1
