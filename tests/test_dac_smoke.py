"""The smoke-sized DAC pair: baseline and DAC both learn the bundled digits on a CPU."""

from __future__ import annotations

import pytest
import torch

from biasbench.recipe import load_recipe
from biasbench.trainer import train_recipe
from tests.conftest import RECIPES


@pytest.mark.parametrize("variant", ["baseline", "dac"])
def test_smoke_pair_learns_digits(variant, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = load_recipe(RECIPES / f"smoke_{variant}_digits.yaml",
                             overrides=[f"output.dir={tmp_path}", "train.epochs=2", "output.checkpoint=false"])
        (doc,) = train_recipe(recipe, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert doc["status"] == "completed"
    assert doc["final"]["test_acc"] >= 0.8  # chance is 0.1
