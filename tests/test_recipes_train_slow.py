"""Slow: every shipped recipe's smoke form trains to completion and beats chance.

    make test-slow     (about 15 minutes on 2 CPU cores)
"""

from __future__ import annotations

import pytest
import torch

from biasbench.recipe import load_recipe
from biasbench.trainer import train_recipe
from tests.conftest import RECIPES

RUNNABLE = sorted(p for p in RECIPES.rglob("*.yaml") if "base" not in p.parts and "gates" not in p.parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(RECIPES)) for p in RUNNABLE])
def test_smoke_form_trains(path, tmp_path):
    # Four epochs: enough for every smoke form to learn, where one epoch only shows it runs.
    recipe = load_recipe(path, [f"output.dir={tmp_path}", "train.replicates=1", "train.epochs=4"], smoke=True)
    (doc,) = train_recipe(recipe, torch.device("cpu"))
    assert doc["status"] == "completed", doc["status"]
    final = doc["final"]
    if doc["task"] == "classification":
        assert final["test_acc"] > 1.5 / doc["data"]["num_outputs"], final  # clearly above chance
    else:
        assert final["test_loss"] < doc["history"][0]["test_loss"] or len(doc["history"]) == 1
