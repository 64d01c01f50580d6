"""Run folders: names that tell experiments apart, the folder lock, and how a run starts there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from biasbench.errors import UserError
from biasbench.fsutil import hold_lock, lock_holder, remove_orphans
from biasbench.recipe import load_recipe
from biasbench.runfolder import TAG_MAX, experiment_overrides, inspect_start, run_paths, run_tag
from tests.conftest import REPO, one_line_error, run_cli, tiny_recipe, write_recipe

# ---------------------------------------------------------------------------------------------
# run_tag
# ---------------------------------------------------------------------------------------------


def test_run_tag_is_short_readable_and_independent_of_order():
    assert run_tag({"model.variant": "dac", "optim.lr": 0.01}) == "variant=dac,lr=0.01"
    assert run_tag({"optim.lr": 0.01, "model.variant": "dac"}) == "variant=dac,lr=0.01"  # recipe order
    assert run_tag({"model.name": "resnet20_v1", "model.options.width": 4}) == "model=resnet20_v1,width=4"
    assert run_tag({"schedule.milestones": [100.0, 150.0], "optim.lr": 1e-3}) == "lr=0.001,milestones=100.0+150.0"
    assert run_tag({}) == ""


def test_run_tag_keeps_longer_names_where_a_short_one_is_ambiguous():
    tag = run_tag({"model.options.width": 4, "data.options.width": 8})
    assert tag == "model.options.width=4,data.options.width=8"
    assert run_tag({"model.name": "cnn", "data.name": "digits"}) == "model=cnn,data=digits"


def test_run_tag_is_filesystem_safe_and_never_merges_two_experiments():
    odd = [{"data.root": "/a/b"}, {"data.root": "/a_b"}, {"data.root": "_a_b"}, {"data.options.x": "a,b"},
           {"data.options.x": "a"}, {"data.options.x": ["a", "b"]}, {"data.options.x": ["a+b"]},
           {"data.options.x": {"k": 1}}, {"data.options.x": ""}, {"data.options.x": None},
           {"optim.lr": 1}, {"optim.lr": 1.0}]
    tags = [run_tag(o) for o in odd]
    assert len(set(tags)) == len(tags), tags
    for tag in tags:
        assert "/" not in tag and " " not in tag and not tag.startswith(".") and len(tag) <= TAG_MAX


def test_long_tags_end_in_a_hash_after_whole_fields():
    many = {f"model.options.option{i}": 1000.5 + i for i in range(30)}
    tag = run_tag(many)
    assert len(tag) <= TAG_MAX and "~" in tag
    head, digest = tag.split("~")
    assert len(digest) == 8 and all(f.count("=") == 1 for f in head.split(","))  # no field cut in half
    assert run_tag({**many, "model.options.option0": 0.5}) != tag


def test_experiment_overrides_ignore_place_and_speed_and_same_values(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    base = load_recipe(path).to_dict()
    changed = load_recipe(path, ["model.variant=dac", "optim.lr=0.05", "model.options.width=8",
                                 "data.workers=3", "train.eval_batch_size=7", "train.compile=true"]).to_dict()
    # optim.lr=0.05 is what the file says already; workers, eval batch size and compile change no result
    assert experiment_overrides(base, changed) == {"model.variant": "dac", "model.options.width": 8}


# ---------------------------------------------------------------------------------------------
# train --set writes beside the recipe's own run
# ---------------------------------------------------------------------------------------------


def test_a_variant_override_writes_beside_the_baseline_and_says_where(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    assert run_cli(["train", str(recipe), "-q"])[0] == 0
    baseline = (tmp_path / "runs" / "r" / "seed0" / "results.json").read_bytes()
    code, out, err = run_cli(["train", str(recipe), "--set", "model.variant=preact", "--set", "data.workers=0"])
    assert code == 0, err
    assert "runs go to" in out and str(tmp_path / "runs" / "r" / "variant=preact") in out
    assert (tmp_path / "runs" / "r" / "seed0" / "results.json").read_bytes() == baseline
    doc = json.loads((tmp_path / "runs" / "r" / "variant=preact" / "seed0" / "results.json").read_text())
    assert doc["recipe"]["model"]["variant"] == "preact" and doc["name"] == "r/variant=preact"
    # the same overrides again find the same folder: --resume skips the finished run
    code, out, _ = run_cli(["train", str(recipe), "--set", "model.variant=preact", "--resume"])
    assert code == 0 and "already completed, skipped" in out


def test_smoke_says_what_it_does_to_the_name(tmp_path):
    from tests.conftest import RECIPES

    code, out, err = run_cli(["train", str(RECIPES / "quickstart.yaml"), "--smoke", "--dry-run",
                              "--out", str(tmp_path)])
    assert code == 0, err
    assert "--smoke: train.epochs=2; runs are named quickstart_smoke" in " ".join(out.split())
    assert str(tmp_path / "quickstart_smoke" / "seed0") in out
    # --json writes the final table, which a dry run does not have: refused, not silently dropped
    code, _, err = run_cli(["train", str(RECIPES / "quickstart.yaml"), "--dry-run", "--json", str(tmp_path / "t.json")])
    one_line_error(code, err, "--json", "--dry-run")


# ---------------------------------------------------------------------------------------------
# The folder lock.
# ---------------------------------------------------------------------------------------------


def test_lock_refuses_a_second_process_naming_the_holder_and_dies_with_it(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from biasbench.fsutil import hold_lock\n"
         f"with hold_lock(Path({str(lock)!r}), 'x'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(lock) == holder.pid
        with pytest.raises(UserError, match=f"in use by another biasbench process \\(PID {holder.pid}\\)"):
            with hold_lock(lock, "run folder `x`"):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait()
    assert lock_holder(lock) is None  # the PID is still in the file; the lock is not
    with hold_lock(lock, "x"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # a normal end tidies up


def test_two_trainings_in_one_folder_the_second_refuses_in_one_line(tmp_path):
    """The issue's case: `train Q --out X & train Q ... --out X` both exit 0 today."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 200}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "biasbench", "train", str(recipe), "--device", "cpu"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        while "epoch 1/" not in first.stdout.readline():  # training (and holding the lock)
            assert first.poll() is None
        for flags in ([], ["--overwrite"], ["--resume"]):
            code, _, err = run_cli(["train", str(recipe), "--set", "optim.lr=0.05", *flags])
            one_line_error(code, err, f"(PID {first.pid})", "in use")
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / "runs" / "r" / "seed0" / "checkpoint.pt").exists()


def test_orphan_temporary_files_are_ours_only(tmp_path):
    ours = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".results.json.x.tmp",
            tmp_path / ".write-probe.q.tmp"]
    theirs = [tmp_path / ".notes.txt.a.tmp", tmp_path / "checkpoint.pt"]
    for p in ours + theirs:
        p.write_bytes(b"x")
    removed = remove_orphans(tmp_path, ["checkpoint.pt", "results.json"])
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in theirs)


# ---------------------------------------------------------------------------------------------
# How a run starts in a folder (item 4): every case says what happens; no usable checkpoint is lost.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def stopped_run(tmp_path):
    """A 3-epoch recipe stopped after epoch 1: checkpoint + results `interrupted`."""
    recipe_file = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3}))
    assert run_cli(["train", str(recipe_file), "-q", "--stop-after", "1"])[0] == 0
    recipe = load_recipe(recipe_file)
    return recipe_file, recipe, run_paths(recipe, 0)


def test_start_new_resume_skip_and_refuse(stopped_run, tmp_path):
    recipe_file, recipe, paths = stopped_run
    start = inspect_start(paths, recipe, 0, resume=True, overwrite=False)
    assert start.action == "resume" and start.epoch == 1 and "after epoch 1" in start.note
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite.*--out"):
        inspect_start(paths, recipe, 0, resume=False, overwrite=False)
    assert inspect_start(paths, recipe, 0, resume=False, overwrite=True).action == "restart"
    empty = run_paths(recipe, 5)
    start = inspect_start(empty, recipe, 5, resume=True, overwrite=False)
    assert start.action == "new" and "nothing to resume" in start.note


def test_truncated_results_beside_a_good_checkpoint_resume_from_the_checkpoint(stopped_run):
    recipe_file, recipe, paths = stopped_run
    paths.results.write_text(paths.results.read_text()[:100])  # truncated: not JSON
    code, out, err = run_cli(["train", str(recipe_file), "--resume"])
    assert code == 0, err
    assert "resuming" in out and "unreadable" in out and "rewritten" in out
    doc = json.loads(paths.results.read_text())
    assert doc["status"] == "completed" and doc["epochs_completed"] == 3


def test_interrupted_results_without_their_checkpoint_are_refused_not_restarted(stopped_run):
    recipe_file, recipe, paths = stopped_run
    paths.checkpoint.unlink()
    code, _, err = run_cli(["train", str(recipe_file), "--resume"])
    one_line_error(code, err, "checkpoint.pt holds epoch 1", "missing", "--overwrite")
    assert json.loads(paths.results.read_text())["status"] == "interrupted"  # nothing was touched


def test_a_run_without_checkpoints_says_so_when_stopped_and_when_resumed(tmp_path, monkeypatch):
    from biasbench import trainer

    recipe_file = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3},
                                                                output={"checkpoint": False}))
    real, calls = trainer.evaluate, {"n": 0}

    def ctrl_c_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", ctrl_c_in_epoch_two)
    code, _, err = run_cli(["train", str(recipe_file)])
    assert code == 130 and "no checkpoint was kept (output.checkpoint is false)" in " ".join(err.split())
    assert "checkpoint kept" not in err
    monkeypatch.setattr(trainer, "evaluate", real)
    code, out, err = run_cli(["train", str(recipe_file), "--resume"])
    assert code == 0, err
    assert "no checkpoint to continue from; starting it again from epoch 1" in " ".join(out.split())
    assert json.loads((tmp_path / "runs" / "r" / "seed0" / "results.json").read_text())["epochs_completed"] == 3


def test_orphans_of_a_killed_write_are_removed_on_the_next_start(stopped_run):
    recipe_file, _, paths = stopped_run
    orphans = [paths.dir / ".checkpoint.pt.k1ll3d.tmp", paths.dir / ".predictions.npz.x.tmp"]
    for p in orphans:
        p.write_bytes(b"\0" * 1000)
    code, out, err = run_cli(["train", str(recipe_file), "--resume"])
    assert code == 0, err
    assert "removed 2 temporary file(s)" in out
    assert not any(p.exists() for p in orphans)
    assert not list(paths.dir.glob("*.tmp")) and not list(paths.dir.glob(".*.tmp"))


def test_dry_run_prints_the_resolved_recipe_and_each_folder_and_trains_nothing(stopped_run, tmp_path):
    import yaml

    recipe_file, _, paths = stopped_run
    code, out, err = run_cli(["train", str(recipe_file), "--dry-run", "--replicates", "2", "--resume"])
    assert code == 0, err
    resolved = yaml.safe_load(out)  # the YAML part parses; comments are the folder lines
    assert resolved["train"]["replicates"] == 2 and resolved["optim"]["momentum"] == 0.9  # defaults included
    flat = " ".join(out.replace("\n#", " ").split())  # comment lines wrap at 80 columns, between words
    assert f"seed 0: {paths.dir} (resumes after epoch 1)" in flat
    assert f"seed 1: {paths.dir.parent / 'seed1'} (new run)" in flat
    assert not (paths.dir.parent / "seed1").exists()
