"""Slow: every new architecture trains with every variant that applies to it, and the GNNs learn
node classification on the block-model graph (issue 11 point 6, issue 14 point 4).

    make test-slow
"""

from __future__ import annotations

import math

import pytest
import torch

from biasbench.models import applicability, model_spec
from biasbench.recipe import from_dict
from biasbench.trainer import train_recipe

IMAGE_MODELS = ["alexnet", "vgg11", "mobilenet_v2", "shufflenet_v2", "deit_tiny_patch4", "cait_xxs_patch4",
                "tnt_small_patch4", "pvt_tiny"]


def _recipe(tmp_path, model: str, variant: str, activation: str | None, data: dict, **train) -> dict:
    options = dict(model_spec(model).tiny_options)
    return {"model": {"name": model, "variant": variant, "options": options,
                      "variant_options": {"activation": activation} if activation else {}},
            "data": data, "optim": {"name": "adam", "lr": 0.003},
            "train": {"epochs": 1, "batch_size": 64, **train},
            "output": {"dir": str(tmp_path), "name": f"{model}-{variant}"}}


@pytest.mark.slow
@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_applicable_variant_of_a_new_model_trains(model, tmp_path):
    data = {"name": "synthetic_images", "options": {"num_samples": 160}}
    for variant, cell in applicability(model).items():
        if cell == "-":
            continue
        activation = None if cell == "yes" else cell
        (doc,) = train_recipe(from_dict(_recipe(tmp_path, model, variant, activation, data)), torch.device("cpu"))
        assert doc["status"] == "completed" and math.isfinite(doc["final"]["train_loss"]), (variant, doc["status"])
        assert doc["recipe"]["model"]["variant"] == variant


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gcn", "graphsage"])
@pytest.mark.parametrize("variant", ["baseline", "raa", "arr", "dnrt"])
def test_gnns_learn_node_classification_with_each_dnrt_variant(model, variant, tmp_path):
    doc = _recipe(tmp_path, model, variant, None, {"name": "sbm_graph"}, epochs=40, batch_size=128,
                  eval_batch_size=1000)
    doc["model"]["options"] = {"hidden": 32}
    doc["optim"] = {"name": "adam", "lr": 0.01, "weight_decay": 5e-4}
    (result,) = train_recipe(from_dict(doc), torch.device("cpu"))
    # 3 classes: chance is 1/3; node features alone give a linear classifier about 58%
    assert result["final"]["test_acc"] > 0.8, result["final"]
