"""The CLI as a user meets it: help, train/eval round trip, and one clear line for bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

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
    # digits ships with scikit-learn: a --data-root would be ignored, so it is refused
    one_line_error(*run_cli(["eval", str(ckpt), "--data-root", str(tmp_path)])[::2], "--data-root",
                   "`digits` is not read from a data root")


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
    one_line_error(*run_cli(["eval", str(corrupt)])[::2], "is a Python pickle", "give a checkpoint.pt")
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
    original = recipe.read_text()
    doc = yaml.safe_load(original)
    doc["optim"]["lr"] = 0.5  # the recipe file itself changed: same folder, another experiment
    recipe.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(["train", str(recipe), "-q", "--resume"])
    one_line_error(code, err, "optim.lr", "--overwrite")
    recipe.write_text(original)
    # settings of place and speed may change: the finished run is found and skipped
    code, out, _ = run_cli(["train", str(recipe), "--resume", "--set", "train.eval_batch_size=7"])
    assert code == 0 and "already completed, skipped" in out


def test_impossible_variant_option_gives_one_line(tmp_path):
    from tests.conftest import RECIPES

    code, _, err = run_cli(["train", str(RECIPES / "dnrt/cifar10/vit_tiny_dnrt.yaml"), "--smoke", "-q",
                            "--out", str(tmp_path), "--set", "model.variant_options.lam=-1"])
    one_line_error(code, err, "variant `dnrt`", "lam >= 0")


def test_eval_says_what_a_wrong_file_is(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    run = tmp_path / "runs" / "r" / "seed0"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    cases = [(run / "results.json", ["is a biasbench results file", str(run / "checkpoint.pt")]),
             (tmp_path / "module.pt", ["pickled Python objects", "give a checkpoint.pt"]),
             (tmp_path / "notes.txt", ["is a text file", "give a checkpoint.pt"]),
             (tmp_path / "random.bin", ["binary file of an unknown format", "give a checkpoint.pt"])]
    for path, words in cases:
        code, _, err = run_cli(["eval", str(path)])
        one_line_error(code, err, *words)
        assert "\x1b" not in err and "weights_only" not in err and "..." not in err


def test_eval_which_best_needs_a_run_folder_or_a_best_checkpoint(recipe, tmp_path):
    assert run_cli(["train", str(recipe), "-q", "--set", "output.checkpoint=false"])[0] == 0
    run = tmp_path / "runs" / "r" / "seed0"
    one_line_error(*run_cli(["eval", str(run), "--which", "worst"])[::2], "--which must be last or best")
    one_line_error(*run_cli(["eval", str(run / "results.json"), "--which", "best"])[::2], "give the folder")
    one_line_error(*run_cli(["eval", str(run), "--which", "best"])[::2], "does not exist")


def test_train_output_fits_80_columns_with_one_grepable_line_per_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them (a path is never broken)
    doc = tiny_recipe(tmp_path, train={"epochs": 3, "replicates": 2})
    doc["output"]["name"] = "a_rather_long_run_name_for_the_table"
    write_recipe(tmp_path / "r.yaml", doc)
    code, out, err = run_cli(["train", "r.yaml", "--out", "runs", "--set", "model.options.width=16",
                              "--set", "optim.lr=0.1"])
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    for epoch in (1, 2, 3):  # stdout is not a terminal here: plain lines, one per epoch and replicate
        assert len([x for x in lines if x.startswith(f"epoch {epoch}/3  loss ") and "test " in x]) == 2
    assert not any(c in out for c in "│┃━─")  # no table borders or rules in a pipe
    header = next(x for x in lines if x.split()[:2] == ["seed", "status"])
    below = [x for x in lines[lines.index(header) + 1:] if set(x) - {"-", " "}]  # past the header's rule
    rows = [x.split() for x in below[:2]]
    assert [r[:2] for r in rows] == [["0", "completed"], ["1", "completed"]]


def test_train_table_fits_80_columns_on_a_terminal_and_as_json(tmp_path, monkeypatch):
    import io
    import re

    from rich.console import Console

    from biasbench.cli.train_cmd import print_runs_table, summary_rows
    from biasbench.recipe import load_recipe
    from biasbench.trainer import train_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    recipe = load_recipe(path)
    docs = train_recipe(recipe, torch.device("cpu"))
    monkeypatch.setenv("COLUMNS", "80")
    buf = io.StringIO()
    buf.isatty = lambda: True  # a terminal: headers bold (escape codes), the same columns
    print_runs_table(summary_rows(docs), recipe, Console(file=buf, force_terminal=True, width=80))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    assert all(len(line) <= 80 for line in plain.splitlines())
    assert f"{100 * docs[0]['final']['test_acc']:.2f}%" in plain
    code, out, err = run_cli(["train", str(path), "--resume", "--json", "-"])
    assert code == 0, err
    (row,) = json.loads(out)  # stdout holds the JSON alone
    assert row["test_acc"] == docs[0]["final"]["test_acc"] and row["status"] == "completed"


@pytest.mark.parametrize("command", ["train", "eval", "count", "compare", "report", "sweep", "list"])
def test_help_shows_no_value_after_a_flag(command, monkeypatch):
    # Typer 0.29 prints `<bool>` after a flag, as if it took a value (`--resume <bool>`); biasbench's
    # flags say nothing there. (`--help` is Typer's own.)
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = run_cli([command, "--help"])
    assert code == 0
    flags = [line for line in out.splitlines() if "<bool>" in line and "--help" not in line]
    assert not flags, flags
