"""The authors' protocols run as they did: ABN's fixed normalisation; the DNRT ViT recipe trains
under today's Pillow (13 raises for posterize bits = 0, which the authors' RandAugment draws)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biasbench.data import build_data
from biasbench.recipe import load_recipe
from tests.conftest import run_cli
from tests.test_data_formats import write_cifar10

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["resnet_s_baseline", "resnet_s_dmb"])
def test_abn_recipes_normalise_with_the_authors_constants(tmp_path, name):
    """zorino96/Adaptive-Bias-Networks main.py: Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))."""
    write_cifar10(tmp_path)
    recipe = load_recipe(RECIPES / "abn" / "cifar10" / f"{name}.yaml", [f"data.root={tmp_path}"])
    bundle = build_data(recipe.data)
    assert bundle.info["mean"] == [0.4914, 0.4822, 0.4465] and bundle.info["std"] == [0.2023, 0.1994, 0.2010]
    fitted = build_data(load_recipe(RECIPES / "abn" / "cifar10" / f"{name}.yaml",
                                    [f"data.root={tmp_path}", "data.options.normalization=fit"]).data)
    assert fitted.info["std"] != bundle.info["std"]  # the option took effect: random pixels have std ~0.29


@pytest.mark.slow
def test_the_dnrt_vit_recipe_trains_a_few_hundred_steps_on_cifar_files(tmp_path):
    """The recipe as it is (full ViT-Tiny, the authors' timm augmentation), 1 epoch of 3,000
    generated images in CIFAR's python-batch format at batch 8: 375 steps, about 6 posterize
    draws with bits = 0 expected (39 in 20,000), each of which stopped the run under Pillow 13."""
    import PIL

    root = tmp_path / "cifar"
    write_cifar10(root, per_batch=600, n_test=64)
    out = tmp_path / "runs"
    code, stdout, err = run_cli(["train", str(RECIPES / "dnrt" / "cifar10" / "vit_tiny_gelu.yaml"),
                                 "--set", f"data.root={root}", "--set", f"output.dir={out}",
                                 "--set", "train.epochs=1", "--set", "train.batch_size=8",
                                 "--set", "train.replicates=1", "--set", "train.amp=none",
                                 "--set", "data.workers=2"])
    assert code == 0, f"Pillow {PIL.__version__}: {err[-2000:]}"
    (results,) = list(out.rglob("results.json"))
    doc = json.loads(results.read_text())
    assert doc["status"] == "completed"
    assert torch.isfinite(torch.tensor(doc["final"]["train_loss"]))
