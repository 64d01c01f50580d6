"""Recipes: extends, --set, --smoke, and rejection of bad input with key paths and suggestions."""

from __future__ import annotations

import pytest

from biasbench.errors import UserError
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES, tiny_recipe, write_recipe


def test_extends_merges_and_file_wins(tmp_path):
    write_recipe(tmp_path / "base.yaml", tiny_recipe(tmp_path, optim={"lr": 0.3, "momentum": 0.5}))
    write_recipe(tmp_path / "child.yaml", {"extends": "base.yaml", "optim": {"lr": 0.01}})
    r = load_recipe(tmp_path / "child.yaml")
    assert r.optim.lr == 0.01 and r.optim.momentum == 0.5  # deep merge keeps the base's other keys
    assert r.output.name == "child"


def test_set_overrides_typed_values_and_options(tmp_path):
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    r = load_recipe(p, ["optim.lr=0.5", "train.epochs=7", "model.options.width=8", "optim.name=adam"])
    assert (r.optim.lr, r.train.epochs, r.model.options["width"], r.optim.name) == (0.5, 7, 8, "adam")


def test_smoke_block_applies(tmp_path):
    doc = tiny_recipe(tmp_path)
    doc["smoke"] = {"train.epochs": 1, "model.options.width": 4}
    r = load_recipe(write_recipe(tmp_path / "r.yaml", doc), smoke=True)
    assert r.train.epochs == 1 and r.model.options["width"] == 4 and r.output.name == "r_smoke"


@pytest.mark.parametrize("mutation, message", [
    ({"optim": {"lrr": 0.1}}, "unknown recipe key `optim.lrr` (did you mean `optim.lr`?)"),
    ({"train": {"epochs": -1}}, "`train.epochs` must be at least 1"),
    ({"train": {"epochs": "ten"}}, "`train.epochs` must be an integer"),
    ({"optim": {"name": "sgdd"}}, "did you mean `sgd`?"),
    ({"schedule": {"milestones": "5"}}, "`schedule.milestones` must be a list"),
    ({"data": {"val_fraction": 1.5}}, "`data.val_fraction` must be in [0, 1)"),
])
def test_bad_values_name_the_key(tmp_path, mutation, message):
    doc = tiny_recipe(tmp_path)
    for section, values in mutation.items():
        doc[section] = {**doc.get(section, {}), **values}
    with pytest.raises(UserError) as e:
        load_recipe(write_recipe(tmp_path / "r.yaml", doc))
    assert message in str(e.value)


def test_unknown_set_key_suggests(tmp_path):
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    with pytest.raises(UserError, match=r"--set: unknown recipe key `train.epoch` \(did you mean `train.epochs`\?\)"):
        load_recipe(p, ["train.epoch=3"])


def test_malformed_yaml_and_cycles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [mlp\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_recipe(bad)
    write_recipe(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_recipe(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(UserError, match="extends itself"):
        load_recipe(tmp_path / "a.yaml")


def test_every_shipped_recipe_validates():
    recipes = [p for p in RECIPES.rglob("*.yaml") if "gates" not in p.parts]
    assert recipes
    for path in recipes:
        r = load_recipe(path)
        assert r.train.epochs >= 1, path
        if r.smoke:
            load_recipe(path, smoke=True)


@pytest.mark.parametrize("overrides, message", [
    (["data.val_folds=5", "data.val_fold=7"], "`data.val_fold` is 7, but folds are 0..4"),
    (["data.val_fold=1"], "`data.val_fold` needs `data.val_folds`"),
    (["optim.betas=[2, 0.9]"], "`optim.betas` must be two numbers in [0, 1)"),
    (["optim.eps=-1"], "`optim.eps` must be positive"),
])
def test_values_torch_would_reject_are_caught_first(tmp_path, overrides, message):
    p = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    with pytest.raises(UserError) as e:
        load_recipe(p, overrides)
    assert message in str(e.value)
