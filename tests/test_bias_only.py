"""Bias-only learning (spec section 5): frozen weights bit for bit, multi-task, RNN, recipes."""

from __future__ import annotations

import pytest
import torch

from biasbench import trainer
from biasbench.bias_only import apply_trainable, init_weights, parse_trainable, readout_parameters
from biasbench.errors import UserError
from biasbench.models import build_model
from biasbench.params import parameter_roles
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES, tiny_recipe, write_recipe

CPU = torch.device("cpu")



def _smoke(path, tmp_path, *overrides):
    recipe = load_recipe(path, [f"output.dir={tmp_path}", *overrides], smoke=True)
    return recipe, trainer.train_recipe(recipe, CPU)


def _initial_model(recipe, seed: int):
    """The model exactly as train_run builds it for `seed`, before any step."""
    trainer.seed_everything(seed)
    return trainer.build_for_recipe(recipe, 0, CPU)[1]


def _final_state(tmp_path):
    return torch.load(next(tmp_path.rglob("checkpoint.pt")), weights_only=True)["model"]


def test_trainable_groups_parse_and_bad_ones_are_rejected(tmp_path):
    assert parse_trainable("biases+readout") == {"biases", "readout"}
    for bad in ("bias", "all+biases", "biases+"):
        with pytest.raises(ValueError):
            parse_trainable(bad)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"trainable": "biasses"}))
    with pytest.raises(UserError, match="train.trainable"):
        load_recipe(path)


def test_groups_select_parameters_by_role():
    model = build_model("mlp", num_classes=10, in_channels=1, input_shape=(64,), depth=2, width=16, bn=True)
    roles = parameter_roles(model)
    apply_trainable(model, "biases")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, r in roles.items() if r == "bias"
    }
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if roles[n] == "other"
    )  # BN scales frozen
    apply_trainable(model, "biases+readout")
    readout = readout_parameters(model)
    assert readout == {"5.1.weight", "5.1.bias"}  # the last unit's Linear
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, r in roles.items() if r == "bias"
    } | readout
    apply_trainable(model, "biases+other")
    assert all(p.requires_grad for n, p in model.named_parameters() if roles[n] != "weight")


def test_normal_fan_in_init_has_variance_one_over_fan_in():
    torch.manual_seed(0)
    model = build_model(
        "mlp", num_classes=10, in_channels=1, input_shape=(400,), depth=1, width=2000, bn=False
    )
    init_weights(model, "normal_fan_in")
    w = model[1].weight  # Linear(400, 2000)
    assert w.mean().abs() < 1e-3
    assert w.var().item() == pytest.approx(1 / 400, rel=0.02)


def test_bias_only_training_keeps_every_weight_and_learns(tmp_path):
    recipe, (doc,) = _smoke(RECIPES / "bias_only" / "digits" / "mlp_bias_only.yaml", tmp_path)
    assert doc["final"]["test_acc"] > 0.6  # chance is 0.1
    start, end = _initial_model(recipe, doc["seed"]), _final_state(tmp_path)
    roles = parameter_roles(start)
    for name, p in start.named_parameters():
        if roles[name] == "weight":
            assert torch.equal(p, end[name]), f"{name} moved"  # bit for bit
        else:
            assert not torch.equal(p, end[name]), f"bias {name} did not train"
    assert doc["params"]["trainable"] == doc["params"]["biases"] < doc["params"]["total"] / 20


def test_multitask_shared_frozen_weights_learn_every_task(tmp_path):
    recipe, (doc,) = _smoke(RECIPES / "bias_only" / "digits" / "multitask.yaml", tmp_path)
    final = doc["final"]
    # chance: 1/10 for the 10-class tasks, 1/5 for the subset
    assert (
        final["test_acc_plain"] > 0.5 and final["test_acc_permuted"] > 0.5 and final["test_acc_subset"] > 0.6
    )
    assert all("val_acc_permuted" in h for h in doc["history"])  # per-task accuracy in the history
    start, end = _initial_model(recipe, doc["seed"]), _final_state(tmp_path)
    banks = [n for n in end if n.startswith("banks.")]
    assert banks and all(end[n].shape[0] == 3 for n in banks)  # one bias set per task
    for name, p in start.named_parameters():
        if not name.startswith("banks."):
            assert torch.equal(p, end[name]), f"shared weight {name} moved"
    first = end["banks.bias_1__bias"]  # the hidden layer's biases
    assert not torch.equal(first[0], first[1])  # the tasks' biases went their own ways


def test_multitask_rows_use_their_own_task_biases():
    torch.manual_seed(0)
    model = build_model(
        "multitask",
        num_classes=3,
        in_channels=1,
        input_shape=(5,),
        num_tasks=2,
        base_options={"depth": 1, "width": 8, "bn": False},
    )
    with torch.no_grad():
        for bank in model.banks.values():
            bank[1].add_(1.0)
    feats = torch.randn(4, 4)
    rows = torch.cat([feats, torch.tensor([[0.0], [1.0], [1.0], [0.0]])], dim=1)
    out = model(rows)
    for t in (0, 1):  # each row equals the base run with that task's biases alone
        alone = torch.func.functional_call(
            model.base, {n: model.banks[k][t] for n, k in model._slots}, (feats,)
        )
        sel = rows[:, -1] == t
        torch.testing.assert_close(out[sel], alone[sel])


def test_rnn_learns_a_periodic_signal_by_its_biases(tmp_path):
    recipe, (doc,) = _smoke(RECIPES / "bias_only" / "signals" / "rnn_periodic.yaml", tmp_path)
    assert doc["params"]["trainable"] == 201  # 200 unit biases + the readout's bias
    assert doc["final"]["test_loss"] < 0.4  # predicting 0 scores the signal's variance, 0.625
    start, end = _initial_model(recipe, doc["seed"]), _final_state(tmp_path)
    for name in ("input_weight", "recurrent_weight", "readout.weight"):
        assert torch.equal(dict(start.named_parameters())[name], end[name])


def test_the_readout_a_model_declares_is_the_readout_group():
    """bias_rnn names its readout with its registration; other models fall back to the last
    module owning a weight."""
    rnn = build_model("bias_rnn", num_classes=1, in_channels=1, input_shape=(5, 2), hidden=8)
    assert readout_parameters(rnn) == {"readout.weight", "readout.bias"}
    counts = apply_trainable(rnn, "biases+readout")
    assert counts["trainable"] == 8 + (8 + 1)  # the recurrent biases, the readout's weights and bias
