"""`tune:`: an equal Optuna search per arm on validation data, then the replicates with each
arm's best values; a stopped tuning resumes without repeating a finished trial."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from biasbench.data import _INFO, DATASETS, DataBundle, DatasetInfo, Split
from biasbench.errors import UserError
from biasbench.recipe import from_dict
from biasbench.study import load_study
from biasbench.study import tune as tn
from biasbench.study import tune_search as ts
from tests.conftest import assert_fits, one_line_error, output_at, run_cli, tiny_recipe, write_recipe

SPACE = {"optim.lr": {"log_uniform": [0.01, 0.3]}, "optim.weight_decay": {"choice": [0.0, 1.0e-4]}}


def tune_study(tmp_path: Path, recipe: dict | None = None, **tune) -> Path:
    recipe = recipe or tiny_recipe(tmp_path, train={"epochs": 2, "batch_size": 64})
    write_recipe(tmp_path / "r.yaml", recipe)
    spec = {"arms": "model.variant", "space": SPACE, "trials": 4, "metric": "val_acc", "epochs": 1, **tune}
    doc = {"recipe": "r.yaml", "grid": {"model.variant": ["baseline", "dac"]}, "replicates": 2, "tune": spec,
           "analysis": {"pairs": {"by": "model.variant", "baseline": "baseline", "metric": "test_acc",
                                  "estimator": "final"}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# Validation: one line each, before anything runs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"sampler": "cmaes"}, ["tune.sampler", "tpe, random, grid"]),
    ({"space": {}}, ["tune.space", "empty"]),
    ({"space": {"optim.lr": {"log_uniform": [0.0, 1.0]}}}, ["tune.space.optim.lr.log_uniform", "positive"]),
    ({"space": {"optim.lr": {"uniform": [0.3, 0.1]}}}, ["tune.space.optim.lr.uniform", "low < high"]),
    ({"space": {"optim.lr": {"normal": [0.1, 0.01]}}}, ["tune.space.optim.lr", "log_uniform"]),
    ({"space": {"optim.lr": {"choice": []}}}, ["tune.space.optim.lr.choice", "non-empty"]),
    ({"space": {"optim.lrr": {"choice": [0.1]}}}, ["unknown recipe key `optim.lrr`", "optim.lr"]),
    ({"space": {"model.variant": {"choice": ["dac"]}}}, ["tune.space.model.variant", "grid or zip key"]),
    ({"space": {"train.epochs": {"int": [1, 3]}}}, ["tune.space.train.epochs", "budget"]),
    ({"trials": 0}, ["tune.trials", "at least 1"]),
    ({"metric": "test_acc"}, ["tune.metric", "validation metric"]),
    ({"arms": "optim.lr"}, ["tune.arms", "varies"]),
    ({"sampler": "grid"}, ["tune.sampler: grid", "optim.lr"]),
    ({"sampler": "grid", "space": {"optim.weight_decay": {"choice": [0.0, 1.0e-4]}}}, ["trials", "2 points"]),
    ({"colour": "red"}, ["unknown key `tune.colour`"]),
])
def test_bad_tune_is_refused_in_one_line(tmp_path, change, words):
    path = tune_study(tmp_path, **change)
    with pytest.raises(UserError) as e:
        load_study(path)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_recipe_without_validation_is_refused_from_the_command_line(tmp_path):
    recipe = tiny_recipe(tmp_path, data={"val_fraction": 0.0})  # tuning could only read the test split
    code, _, err = run_cli(["sweep", str(tune_study(tmp_path, recipe)), "--dry-run"])
    one_line_error(code, err, "no validation split", "val_fraction")


def test_test_split_off_needs_a_validation_split(tmp_path):
    with pytest.raises(UserError, match="data.test_split"):
        from_dict(tiny_recipe(tmp_path, data={"val_fraction": 0.0, "test_split": False}))


# ---------------------------------------------------------------------------------------------
# The plan, the samplers, the trials' recipes.
# ---------------------------------------------------------------------------------------------


def test_dry_run_prints_the_tuning_plan(tmp_path, monkeypatch):
    path = tune_study(tmp_path, trials=3, epochs=2)
    code, text, err = output_at(["sweep", str(path), "--dry-run"], 80, monkeypatch)
    assert code == 0, err
    assert_fits(text)
    flat = " ".join(text.split())
    assert "2 searches (one per cell; arms model.variant: baseline, dac) x 3 trials x 2 epochs = 6 trial runs" in flat
    assert "then each cell's replicates below with its best values" in flat
    assert "study s: 4 runs in 2 cells" in flat  # the replicates after the tuning
    code, text, err = run_cli(["sweep", str(path), "--dry-run", "--json"])
    assert json.loads(text)["tune"]["trials"] == 3


def test_a_trial_recipe_drops_the_test_split_and_takes_the_trial_budget(tmp_path):
    study = load_study(tune_study(tmp_path, epochs=1))
    cell = study.cells[0]
    recipe = tn.trial_recipe(cell, {"optim.lr": 0.02, "optim.weight_decay": 1e-4}, study.tune, tmp_path / "o", 7)
    assert recipe.data.test_split is False and cell.recipe.data.test_split is True
    assert (recipe.optim.lr, recipe.optim.weight_decay, recipe.train.epochs) == (0.02, 1e-4, 1)
    assert recipe.train.replicates == 1 and cell.recipe.train.epochs == 2
    assert Path(recipe.output.dir) / recipe.output.name == tmp_path / "o" / "tune" / cell.name / "trial_007"


def test_grid_sampler_visits_every_point_of_a_space_of_choices_once(tmp_path):
    space = {"optim.lr": {"choice": [0.01, 0.05, 0.1]}, "optim.weight_decay": {"choice": [0.0, 1.0e-4]}}
    study = load_study(tune_study(tmp_path, space=space, sampler="grid", trials=6))
    storage = ts._storage(tmp_path)
    searches = {c.name: ts._search(storage, c, study.tune, tmp_path) for c in study.cells}
    batch = ts._pending(study, searches, tmp_path, size=100)
    grid = set(itertools.product([0.01, 0.05, 0.1], [0.0, 1.0e-4]))
    for cell in study.cells:
        asked = [(t.params["optim.lr"], t.params["optim.weight_decay"]) for t in batch if t.cell == cell.name]
        assert len(asked) == 6 and set(asked) == grid  # each point once, per arm
    again = ts._pending(study, searches, tmp_path, size=100)  # asked, not told (a killed sweep): run again
    assert sorted(again, key=lambda t: t.key) == sorted(batch, key=lambda t: t.key)


def test_a_changed_space_is_refused_on_the_same_folder(tmp_path):
    study = load_study(tune_study(tmp_path))
    storage = ts._storage(tmp_path)
    ts._search(storage, study.cells[0], study.tune, tmp_path)
    other = load_study(tune_study(tmp_path, space={"optim.lr": {"log_uniform": [0.001, 0.3]}}))
    with pytest.raises(UserError, match="other settings"):
        ts._search(ts._storage(tmp_path), other.cells[0], other.tune, tmp_path)


def test_fewer_trials_on_the_same_folder_are_refused(tmp_path):
    study = load_study(tune_study(tmp_path, trials=2))
    search = ts._search(ts._storage(tmp_path), study.cells[0], study.tune, tmp_path)
    for _ in range(2):
        search.ask(fixed_distributions={k: tn.distribution(k, v) for k, v in SPACE.items()})
    fewer = load_study(tune_study(tmp_path, trials=1))
    with pytest.raises(UserError, match="trials can grow, not shrink"):
        ts._search(ts._storage(tmp_path), fewer.cells[0], fewer.tune, tmp_path)
    more = load_study(tune_study(tmp_path, trials=3))  # growing continues the same search
    assert len(ts._search(ts._storage(tmp_path), more.cells[0], more.tune, tmp_path).trials) == 2


def test_best_so_far_keeps_the_best_and_skips_failed_trials():
    trials = [{"state": "fail", "value": None}, {"state": "complete", "value": 0.5},
              {"state": "complete", "value": 0.4}, {"state": "complete", "value": 0.7}]
    got = tn.best_so_far(trials, higher=True)
    assert str(got[0]) == "nan" and got[1:] == [0.5, 0.5, 0.7]
    assert tn.best_so_far(trials, higher=False)[1:] == [0.5, 0.4, 0.4]


def test_trial_lines_fit_80_columns():
    trial = ts.Trial("dataset=cifar100,layers=56,version=v2,variant=baseline", 11,
                     {"optim.lr": 0.0123456, "optim.weight_decay": 0.0005, "optim.momentum": 0.95}, None)
    assert len(ts.trial_line(trial, 16, "val_acc", 0.91234, 0.93)) <= 80


# ---------------------------------------------------------------------------------------------
# The test split is never read by a trial.
# ---------------------------------------------------------------------------------------------


class PoisonedSplit(Split):
    """A test split that fails whatever reads it."""

    def __getattribute__(self, name):
        if name in ("x", "y"):
            raise AssertionError("the test split was read")
        return super().__getattribute__(name)

    def __len__(self):
        raise AssertionError("the test split was read")


def test_a_trial_never_reads_a_poisoned_test_split(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    from biasbench.study.runner import train_one

    def poisoned(cfg, replicate=0):
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
        y = torch.tensor(y)
        return DataBundle(Split(x[:1200], y[:1200]), Split(x[1200:1400], y[1200:1400]),
                          PoisonedSplit(x[1400:], y[1400:]), "classification", 10, (1, 8, 8))

    monkeypatch.setitem(DATASETS._items, "poisoned_test", poisoned)
    monkeypatch.setitem(_INFO, "poisoned_test", DatasetInfo("test split poisoned", bundled=True, kind="images"))
    doc = tiny_recipe(tmp_path, data={"name": "poisoned_test"}, train={"epochs": 1})
    study = load_study(tune_study(tmp_path, doc))
    recipe = tn.trial_recipe(study.cells[0], {"optim.lr": 0.05, "optim.weight_decay": 0.0}, study.tune,
                             tmp_path / "o", 0)
    result = train_one(recipe, 0, 0, "cpu", resume=False)
    assert result["status"] == "completed" and result["data"]["test_size"] == 0
    assert not any(k.startswith("test_") for row in result["history"] for k in row)
    assert not any(k.startswith(("test_", "best_test")) for k in {*result["final"], *result["best"]})
    assert result["predictions"] is None
    with pytest.raises(AssertionError, match="test split was read"):  # the poison works: a normal run reads it
        train_one(study.cells[0].recipe, 0, 0, "cpu", resume=False)


# ---------------------------------------------------------------------------------------------
# The whole sweep: 2 arms x 4 trials, resumed from 2, then the replicates with the best values.
# ---------------------------------------------------------------------------------------------


def _trials(out: Path) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "tune").glob("*/trial_*/seed*/results.json")):
        cell, number = path.parts[-4], int(path.parts[-3].split("_")[1])
        found.setdefault(cell, {})[number] = {"doc": json.loads(path.read_text()), "bytes": path.read_bytes()}
    return found


@pytest.mark.slow  # about 2 min on a loaded 2-core machine: 8 trials and 4 runs in spawned workers
def test_two_arms_four_trials_resumed_from_two_then_replicates_with_the_best_values(tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(["sweep", str(tune_study(tmp_path, trials=2)), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    first = _trials(out)
    assert {c: sorted(t) for c, t in first.items()} == {"variant=baseline": [0, 1], "variant=dac": [0, 1]}
    code, _, err = run_cli(["sweep", str(tune_study(tmp_path, trials=4)), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    trials = _trials(out)
    manifest = json.loads((out / "study.json").read_text())
    for cell, found in trials.items():
        assert sorted(found) == [0, 1, 2, 3]  # exactly 4 trials per arm
        for n in (0, 1):  # the first two were kept as they were, not trained again
            assert found[n]["bytes"] == first[cell][n]["bytes"]
        for t in found.values():  # validation only: no test metric anywhere in a trial
            doc = t["doc"]
            assert doc["recipe"]["data"]["test_split"] is False and doc["data"]["test_size"] == 0
            assert not [k for row in doc["history"] for k in row if "test" in k]
        # The best trial, from the trials' own results (best val_acc over epochs, first on ties).
        values = {n: max(r["val_acc"] for r in t["doc"]["history"]) for n, t in found.items()}
        best = min(n for n in values if values[n] == max(values.values()))
        chosen = found[best]["doc"]["recipe"]["optim"]
        record = manifest["tune"]["cells"][cell]
        assert record["trial"] == best and record["value"] == pytest.approx(values[best])
        assert [t["number"] for t in record["trials"]] == [0, 1, 2, 3]
        replicates = [json.loads(p.read_text()) for p in sorted((out / cell).glob("seed*/results.json"))]
        assert len(replicates) == 2
        for doc in replicates:  # the replicates train the arm's best values, on the full budget, with test
            assert (doc["recipe"]["optim"]["lr"], doc["recipe"]["optim"]["weight_decay"]) == \
                (chosen["lr"], chosen["weight_decay"])
            assert doc["epochs_completed"] == 2 and "test_acc" in doc["final"]
    code, _, err = run_cli(["report", str(out), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "Each arm had 4 trials of up to 1 epoch" in report and (tmp_path / "rep/figures/tuning.png").is_file()
    assert "tuned: 4 trials per arm of up to 1 epoch" in report
    code, text, err = run_cli(["compare", str(out)])
    assert code == 0, err
    assert "tuned: 4 trials per arm of up to 1 epoch" in " ".join(text.split())
