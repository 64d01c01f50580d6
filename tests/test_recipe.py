"""Recipes: extends, --set, --smoke, YAML 1.2 numbers, duplicate keys, `recipe show`, and
rejection of bad input with key paths and suggestions."""

from __future__ import annotations

import json
import re
import typing

import pytest
import yaml

import biasbench
from biasbench.errors import UserError
from biasbench.recipe import load_raw, load_recipe, parse_yaml, recipe_document, recipe_yaml
from tests.conftest import RECIPES, REPO, one_line_error, run_cli, tiny_recipe, write_recipe


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


SHIPPED = sorted(p for p in RECIPES.rglob("*.yaml") if "gates" not in p.parts)


def test_every_shipped_recipe_reads_back_from_its_resolved_yaml(tmp_path):
    # `recipe show` prints recipe_yaml: itself a recipe that loads to the same experiment.
    assert SHIPPED
    for path in SHIPPED:
        for smoke in (False, True) if load_raw(path).get("smoke") else (False,):
            recipe = load_recipe(path, smoke=smoke)
            again = load_recipe(write_text(tmp_path / "resolved.yaml", recipe_yaml(recipe)))
            assert recipe_document(again) == recipe_document(recipe), (path, smoke)


def write_text(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E-3", 0.001), ("1e8", 1e8), ("1.0e8", 1e8), (".5", 0.5), ("+2.5E-3", 0.0025),
    ("3e+2", 300.0), ("1.", 1.0), ("1_000.5", 1000.5),
])
def test_every_float_form_is_a_number_in_files_and_in_set(tmp_path, text, value):
    # PyYAML's YAML 1.1 reads 1e-3, 1e8 and 1.0e8 as strings; recipes use YAML 1.2 rules.
    doc = tiny_recipe(tmp_path)
    doc["optim"].pop("lr")
    by_hand = yaml.safe_dump(doc).replace("optim:\n", f"optim:\n  lr: {text}\n", 1)
    assert load_recipe(write_text(tmp_path / "r.yaml", by_hand)).optim.lr == value
    assert load_recipe(write_recipe(tmp_path / "s.yaml", tiny_recipe(tmp_path)), [f"optim.lr={text}"]).optim.lr == value


@pytest.mark.parametrize("text, value", [("010", 10), ("1_000", 1000), ("0x10", 16), ("0o17", 15), ("+3", 3)])
def test_integers_follow_yaml_1_2(text, value):
    assert parse_yaml(f"n: {text}") == {"n": value}  # 010 is ten, not YAML 1.1's octal eight


def test_strings_that_yaml_1_1_read_as_other_types_stay_strings():
    # YAML 1.2 has no sexagesimal numbers and no implicit dates: names like these stay text.
    assert parse_yaml("a: 1:30\nb: 2001-12-14\nc: 1e\nd: 1.2.3") == {"a": "1:30", "b": "2001-12-14", "c": "1e",
                                                                      "d": "1.2.3"}


def test_quoted_numbers_stay_strings_through_recipe_show(tmp_path):
    doc = tiny_recipe(tmp_path, model={"options": {"depth": 2, "width": 32, "tag": "1e-3"}})
    # a free-form option the user quoted on purpose: the resolved YAML must quote it too
    path = write_text(tmp_path / "r.yaml", yaml.safe_dump(doc).replace("tag: 1e-3", "tag: '1e-3'"))
    recipe = load_recipe(path)
    assert recipe.model.options["tag"] == "1e-3"
    again = load_recipe(write_text(tmp_path / "again.yaml", recipe_yaml(recipe)))
    assert again.model.options["tag"] == "1e-3"


@pytest.mark.parametrize("text, lines, key", [
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n", "lines 2 and 4", "lr"),
    ("train:\n  epochs: 2\noptim:\n  lr: 0.1\ntrain:\n  epochs: 3\n", "lines 1 and 5", "train"),
    ("model:\n  options: {width: 4, width: 8}\n", "lines 2 and 2", "width"),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, lines, key):
    path = write_text(tmp_path / "dup.yaml", text)
    code, _, err = run_cli(["recipe", "show", str(path)])
    one_line_error(code, err, str(path), f"key `{key}` is given twice", lines)


def test_a_key_given_twice_in_set_is_refused():
    code, _, err = run_cli(["recipe", "show", str(RECIPES / "quickstart.yaml"), "--set",
                            "model.options={width: 4, width: 8}"])
    one_line_error(code, err, "--set", "key `width` is given twice")


@pytest.mark.parametrize("setting", ["optim.lr=.inf", "optim.lr=-.inf", "optim.lr=.nan",
                                     "schedule.min_lr=.inf", "schedule.milestones=[1, .nan]"])
def test_non_finite_numbers_are_refused(setting):
    code, _, err = run_cli(["train", str(RECIPES / "quickstart.yaml"), "--set", setting])
    one_line_error(code, err, f"`{setting.split('=')[0]}", "must be a finite number")


def test_schema_type_hints_are_resolved_once_not_per_load(tmp_path, monkeypatch):
    # Loading cost 50-140 ms when every field's type hints were resolved per key and per load.
    path = write_recipe(tmp_path / "r.yaml", {**tiny_recipe(tmp_path), "smoke": {"train.epochs": 1}})
    load_recipe(path, smoke=True)
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(5):
        load_recipe(path, ["optim.lr=0.1"], smoke=True)
    assert calls == []


def test_version_matches_the_package_metadata():
    code, out, _ = run_cli(["--version"])
    declared = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert code == 0 and out.strip() == f"biasbench {declared}" and biasbench.__version__ == declared


def test_recipe_show_prints_the_resolved_recipe_within_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    path = RECIPES / "dnrt" / "cifar10" / "vit_tiny_dnrt.yaml"
    code, out, err = run_cli(["recipe", "show", str(path), "--smoke", "--set", "optim.lr=1e-3"])
    assert code == 0, err
    assert all(len(line) <= 80 for line in out.splitlines())
    expected = load_recipe(path, ["optim.lr=1e-3"], smoke=True)
    assert parse_yaml(out) == recipe_document(expected)  # comments aside, the YAML is the recipe
    assert out.startswith(f"# {path}") and "#   --set optim.lr=1e-3" in out
    assert expected.optim.lr == 0.001 and expected.train.epochs < load_recipe(path).train.epochs
    code, out, _ = run_cli(["recipe", "show", str(path), "--json"])
    assert code == 0 and json.loads(out) == {"source": str(path), "recipe": recipe_document(load_recipe(path))}


def test_recipe_show_refuses_bad_input_in_one_line(tmp_path):
    code, _, err = run_cli(["recipe", "show", str(tmp_path / "missing.yaml")])
    one_line_error(code, err, "does not exist")
    code, _, err = run_cli(["recipe", "show", str(RECIPES / "quickstart.yaml"), "--set", "optim.lrr=1"])
    one_line_error(code, err, "did you mean `optim.lr`?")


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
