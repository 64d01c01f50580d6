"""The trainer: learning, exact resume, reproducibility, divergence, interruption, results."""

from __future__ import annotations

import json

import pytest
import torch

from biasbench import trainer
from biasbench.recipe import load_recipe
from biasbench.results import load_results
from tests.conftest import RECIPES, tiny_recipe, write_recipe

CPU = torch.device("cpu")


def _train(path, tmp_path, *overrides, **kw):
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'runs'}", *overrides], smoke=kw.pop("smoke", False))
    return trainer.train_recipe(recipe, CPU, **kw)


def test_quickstart_cnn_reaches_95_percent_on_digits(tmp_path):
    (doc,) = _train(RECIPES / "quickstart.yaml", tmp_path)
    assert doc["status"] == "completed"
    assert doc["final"]["test_acc"] >= 0.95


def test_mnist1d_mlp_reaches_60_percent(tmp_path):
    (doc,) = _train(RECIPES / "mnist1d_mlp.yaml", tmp_path, "train.epochs=15")
    assert doc["final"]["test_acc"] >= 0.60


def test_resume_after_stop_equals_uninterrupted_run(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data={"augment": "none"},
                                                         optim={"l2": 1e-4, "momentum": 0.9}))
    (straight,) = _train(path, tmp_path / "a")
    (stopped,) = _train(path, tmp_path / "b", stop_after=2)
    assert stopped["status"] == "interrupted" and stopped["epochs_completed"] == 2
    (resumed,) = _train(path, tmp_path / "b", resume=True)
    assert resumed["status"] == "completed"
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    assert resumed["final"]["test_loss"] == straight["final"]["test_loss"]


def test_resume_with_augmentation_and_dropout_free_cnn_is_exact(tmp_path):
    doc = tiny_recipe(tmp_path, model={"name": "cnn", "options": {"width": 4}}, data={"augment": "crop_flip"},
                      train={"epochs": 3})
    path = write_recipe(tmp_path / "r.yaml", doc)
    (straight,) = _train(path, tmp_path / "a")
    _train(path, tmp_path / "b", stop_after=1)
    (resumed,) = _train(path, tmp_path / "b", resume=True)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]


def test_same_seed_same_numbers_twice(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    (a,) = _train(path, tmp_path / "a")
    (b,) = _train(path, tmp_path / "b")
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["final"] == {**b["final"], "seconds": a["final"]["seconds"]}
    (c,) = _train(path, tmp_path / "c", "train.seed=1")
    assert c["history"][0]["train_loss"] != a["history"][0]["train_loss"]


def test_results_file_records_provenance(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2, "replicates": 2}))
    docs = _train(path, tmp_path)
    assert [d["seed"] for d in docs] == [0, 1]
    on_disk = load_results(tmp_path / "runs" / "r" / "seed1" / "results.json")
    assert on_disk["recipe"]["train"]["epochs"] == 2 and on_disk["recipe"]["data"]["name"] == "digits"
    for key in ("torch", "python", "biasbench", "device", "git_revision"):
        assert key in on_disk["environment"]
    assert on_disk["params"]["total"] == sum(p for k, p in on_disk["params"].items() if k in ("weights", "biases",
                                                                                             "other"))
    assert len(on_disk["history"]) == 2 and on_disk["images_per_second"] > 0
    assert on_disk["best"]["selected_by"] == "val_acc"


def test_divergence_is_recorded_and_other_replicates_go_on(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, optim={"lr": 1e6, "momentum": 0.0},
                                                         model={"options": {"bn": False}},
                                                         train={"replicates": 2, "epochs": 3}))
    docs = _train(path, tmp_path)
    assert [d["status"] for d in docs] == ["diverged", "diverged"]
    assert all(d["epochs_completed"] >= 1 for d in docs)


def test_ctrl_c_leaves_resumable_checkpoint_and_interrupted_results(tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3}))
    real = trainer.evaluate
    calls = {"n": 0}

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # val+test of epoch 1 done, then Ctrl-C during epoch 2's evaluation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", interrupt_in_second_epoch)
    with pytest.raises(trainer.Interrupted) as e:
        _train(path, tmp_path)
    results = json.loads((e.value.run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs_completed"] == 1
    monkeypatch.setattr(trainer, "evaluate", real)
    (doc,) = _train(path, tmp_path, resume=True)
    assert doc["status"] == "completed" and doc["epochs_completed"] == 3


def test_regression_task_learns_in_target_scale(tmp_path):
    doc = tiny_recipe(tmp_path, data={"name": "synthetic", "options": {"task": "regression"}},
                      model={"options": {"depth": 2, "width": 64}}, optim={"name": "adam", "lr": 3e-3},
                      train={"epochs": 15})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    targets_var = 0.6  # variance of sin(.) + 0.5 x0 x1 is about 0.6; a learned model is far below it
    assert res["task"] == "regression" and "test_acc" not in res["final"]
    assert res["final"]["test_loss"] < 0.5 * targets_var
    assert res["history"][-1]["test_loss"] < res["history"][0]["test_loss"]


def test_l2_penalty_gradient_equals_autograd_of_the_penalty():
    from biasbench.optim import build_optimizer
    from biasbench.recipe import OptimConfig

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    _, l2 = build_optimizer(model, OptimConfig(l2=0.01, bias_l2=0.0))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    l2.apply()
    weights = [model[0].weight, model[2].weight]
    expected = torch.autograd.grad(0.01 * sum((w**2).sum() for w in weights), weights)
    assert torch.allclose(model[0].weight.grad, expected[0]) and torch.allclose(model[2].weight.grad, expected[1])
    for p in (model[0].bias, model[1].weight, model[1].bias, model[2].bias):
        assert torch.count_nonzero(p.grad) == 0  # biases and BN parameters are never penalised


def test_schedule_warmup_cosine_floor_and_multistep():
    from biasbench.optim import lr_factor
    from biasbench.recipe import ScheduleConfig

    cos = ScheduleConfig(name="cosine", per="step", warmup_epochs=2, warmup_start_lr=0.0, min_lr=0.01)
    assert lr_factor(cos, 0.1, 0, 10, 12) == 0.0
    assert lr_factor(cos, 0.1, 10, 10, 12) == pytest.approx(0.5)  # half-way through warm-up
    assert lr_factor(cos, 0.1, 20, 10, 12) == pytest.approx(1.0)
    assert lr_factor(cos, 0.1, 70, 10, 12) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine mid-point, with floor
    assert lr_factor(cos, 0.1, 120, 10, 12) == pytest.approx(0.1)  # the floor: min_lr / lr
    ms = ScheduleConfig(name="multistep", per="epoch", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(ms, 1.0, s, 10, 6) for s in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_results_of_another_schema_version_are_refused_with_one_line(tmp_path):
    from tests.conftest import one_line_error, run_cli

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    (doc,) = _train(path, tmp_path)
    future = tmp_path / "future" / "results.json"
    future.parent.mkdir()
    future.write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(Exception, match="schema version 99, this biasbench reads version 1"):
        load_results(future)
    code, _, err = run_cli(["compare", str(future.parent)])
    one_line_error(code, err, "schema version 99")


def test_history_records_each_epochs_own_learning_rate(tmp_path):
    doc = tiny_recipe(tmp_path, schedule={"name": "multistep", "per": "epoch", "milestones": [2], "gamma": 0.1},
                      train={"epochs": 3})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    assert [h["lr"] for h in res["history"]] == pytest.approx([0.05, 0.05, 0.005])
