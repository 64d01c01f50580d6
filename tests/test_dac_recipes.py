"""Every recipe loads, in full and smoke form, and builds its model; paper recipes say what they reproduce."""

from __future__ import annotations

import pytest

from biasbench.count import data_shape
from biasbench.models import build_model
from biasbench.recipe import load_raw, load_recipe
from tests.conftest import RECIPES

# The DAC recipes (other recipes belong to their own tests): recipes/dac/**, the short name, the smoke pair.
PAPER = sorted((RECIPES / "dac").rglob("*.yaml"))
RUNNABLE = PAPER + [RECIPES / "resnet32_dac.yaml"] + sorted(RECIPES.glob("smoke_*_digits.yaml"))



def _build(recipe):
    shape, outputs = data_shape(recipe.data)
    return build_model(recipe.model.name, recipe.model.variant, num_classes=outputs, in_channels=shape[0],
                       input_shape=shape, variant_options=recipe.model.variant_options, **recipe.model.options)


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_and_its_smoke_form_build_their_model(path):
    _build(load_recipe(path))
    if load_raw(path).get("smoke"):
        smoke = load_recipe(path, smoke=True)
        _build(smoke)
        if path in PAPER:  # smoke runs on bundled data, in seconds
            assert smoke.data.name in ("digits", "synthetic") and smoke.train.epochs == 1


def test_paper_recipes_cover_the_experiments():
    names = {str(p.relative_to(RECIPES / "dac")) for p in PAPER}
    for ds in ("cifar10", "cifar100"):
        for depth in (20, 32, 44, 56):
            for v in ("v1", "v2"):
                assert {f"{ds}/resnet{depth}_{v}_baseline.yaml", f"{ds}/resnet{depth}_{v}_dac.yaml"} <= names
        assert {f"{ds}/vgg20_16_dac.yaml", f"{ds}/vgg14_32_dac.yaml", f"{ds}/resnet20_v1_preact.yaml"} <= names
    assert {f"cifar100/resnet20_v1_mba_k{k}.yaml" for k in (2, 4, 8)} <= names
    assert {"cifar10/resnet20_v2_w4_dac.yaml", "sgemm/mlp_dac.yaml", "isic2019/resnet32_v1_dac.yaml",
            "imagenette/resnet20_v1_dac.yaml", "imagewoof/resnet32_v2_dac.yaml"} <= names
    assert (RECIPES / "resnet32_dac.yaml").exists()


@pytest.mark.parametrize("path", PAPER + [RECIPES / "resnet32_dac.yaml"], ids=lambda p: p.name)
def test_paper_recipe_header_gives_command_target_and_time(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert f"biasbench train recipes/{path.relative_to(RECIPES)}" in text
    assert "Reproduces:" in text and "Time:" in text


def test_paper_protocol_lives_in_the_base_file():
    recipe = load_recipe(RECIPES / "dac/cifar100/resnet56_v2_dac.yaml")
    protocol = (recipe.optim.name, recipe.optim.lr, recipe.optim.momentum, recipe.train.batch_size)
    assert protocol == ("sgd", 0.1, 0.9, 128)
    assert recipe.optim.l2 > 0 and recipe.optim.bias_l2 == 0 and recipe.data.val_folds == 5
    assert recipe.data.augment == "crop_flip" and recipe.data.root == "data/cifar100"
    assert load_recipe(RECIPES / "dac/imagewoof/resnet20_v1_dac.yaml").data.options["image_size"] == 80
