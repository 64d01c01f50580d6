"""The CLI as a user meets it: help, train/eval round trip, and one clear line for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


@pytest.fixture
def recipe(tmp_path):
    return write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2}))


def test_help_lists_commands_with_examples():
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "train" in out and "eval" in out
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0 and "--resume" in out and "Examples" in out


def test_train_then_eval_reports_the_same_test_accuracy(recipe, tmp_path):
    code, out, err = run_cli(["train", str(recipe), "--device", "cpu", "-q"])
    assert code == 0, err
    ckpt = tmp_path / "runs" / "r" / "seed0" / "checkpoint.pt"
    results = json.loads((ckpt.parent / "results.json").read_text())
    code, out, err = run_cli(["eval", str(ckpt), "--json", "--device", "cpu"])
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["acc"] == pytest.approx(results["final"]["test_acc"])
    assert evaluated["epoch"] == 2


def test_existing_run_is_not_overwritten_without_a_flag(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    before = (tmp_path / "runs" / "r" / "seed0" / "results.json").read_bytes()
    code, out, err = run_cli(["train", str(recipe), "-q"])
    one_line_error(code, err, "already holds a run", "--resume")
    assert (tmp_path / "runs" / "r" / "seed0" / "results.json").read_bytes() == before


@pytest.mark.parametrize("setter, fragment", [
    ("model.name=resnet9000", "unknown model `resnet9000`"),
    ("model.variant=dacc", "unknown variant `dacc`"),
    ("data.name=digitz", "unknown data set `digitz` (did you mean `digits`?)"),
    ("train.epochs=-3", "`train.epochs` must be at least 1"),
    ("train.batch_size=big", "`train.batch_size` must be an integer"),
    ("optim.lrr=0.1", "unknown recipe key `optim.lrr` (did you mean `optim.lr`?)"),
    ("model.options.widht=3", "model `mlp` has no option `widht` (did you mean `width`?)"),
])
def test_bad_recipe_values_give_one_line(recipe, setter, fragment):
    code, out, err = run_cli(["train", str(recipe), "--set", setter, "-q"])
    one_line_error(code, err, fragment)


def test_missing_and_malformed_recipe(tmp_path):
    one_line_error(*run_cli(["train", str(tmp_path / "nope.yaml")])[::2], "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    one_line_error(*run_cli(["train", str(bad)])[::2], "not valid YAML")


def test_output_folder_that_is_a_file(recipe, tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    one_line_error(*run_cli(["train", str(recipe), "--out", str(target)])[::2], "is a file")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    one_line_error(*run_cli(["eval", str(corrupt)])[::2], "not a readable checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    one_line_error(*run_cli(["eval", str(foreign)])[::2], "not a biasbench checkpoint")
    one_line_error(*run_cli(["eval", str(tmp_path / "missing.pt")])[::2], "does not exist")


def test_truncated_checkpoint(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    ckpt = tmp_path / "runs" / "r" / "seed0" / "checkpoint.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    one_line_error(*run_cli(["eval", str(truncated)])[::2], "not a readable checkpoint")


def test_overwrite_with_bad_input_keeps_the_earlier_run(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    run_dir = tmp_path / "runs" / "r" / "seed0"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, _, err = run_cli(["train", str(recipe), "-q", "--overwrite", "--set", "model.options.widht=3"])
    one_line_error(code, err, "no option `widht`")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_refuses_a_run_of_another_experiment(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    code, _, err = run_cli(["train", str(recipe), "-q", "--resume", "--set", "optim.lr=0.5"])
    one_line_error(code, err, "optim.lr", "--overwrite")
    # settings of place and speed may change: the finished run is found and skipped
    code, out, _ = run_cli(["train", str(recipe), "--resume", "--set", "train.eval_batch_size=7"])
    assert code == 0 and "already completed, skipped" in out


def test_impossible_variant_option_gives_one_line(tmp_path):
    from tests.conftest import RECIPES

    code, _, err = run_cli(["train", str(RECIPES / "dnrt/cifar10/vit_tiny_dnrt.yaml"), "--smoke", "-q",
                            "--out", str(tmp_path), "--set", "model.variant_options.lam=-1"])
    one_line_error(code, err, "variant `dnrt`", "lam >= 0")
