"""Long runs: gradient accumulation, model EMA, early stopping, kept checkpoints, mid-epoch
checkpoints and the exact resume from one; the recipe keys that ask for them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from biasbench import trainer
from biasbench.checkpoint import load_checkpoint
from biasbench.early_stop import early_stop_due
from biasbench.ema import ModelEma
from biasbench.recipe import EarlyStopConfig, load_recipe
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe

CPU = torch.device("cpu")


def _train(tmp_path, name: str, **sections):
    path = write_recipe(tmp_path / f"{name}.yaml", tiny_recipe(tmp_path / name, **sections))
    (doc,) = trainer.train_recipe(load_recipe(path), CPU)
    return doc, tmp_path / name / "runs" / name / "seed0"


def _strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# -- gradient accumulation --------------------------------------------------------------------


def test_accumulating_4_batches_of_32_equals_one_step_of_128(tmp_path):
    # No BN (batch statistics would differ by batch) and no dropout: the gradients must agree.
    common = dict(model={"options": {"depth": 2, "width": 32, "bn": False}}, data={"augment": "none"},
                  optim={"momentum": 0.9, "l2": 1e-4}, train={"epochs": 2})
    big, big_dir = _train(tmp_path, "big", **{**common, "train": {"epochs": 2, "batch_size": 128}})
    small, small_dir = _train(tmp_path, "acc", **{**common, "train": {"epochs": 2, "batch_size": 32, "accumulate": 4}})
    one, _ = _train(tmp_path, "small", **{**common, "train": {"epochs": 2, "batch_size": 32}})
    w_big = load_checkpoint(big_dir / "checkpoint.pt")["model"]
    w_acc = load_checkpoint(small_dir / "checkpoint.pt")["model"]
    for name, w in w_big.items():
        assert torch.allclose(w, w_acc[name], rtol=0, atol=1e-6), name
    for a, b in zip(big["history"], small["history"], strict=True):
        assert a["lr"] == b["lr"]  # the schedule counts optimiser steps, not batches
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-6 and abs(a["test_loss"] - b["test_loss"]) < 1e-6
    # and it is not the run with 4x the steps of 32
    assert abs(one["history"][-1]["test_loss"] - big["history"][-1]["test_loss"]) > 1e-3


# -- EMA ----------------------------------------------------------------------------------------


def test_model_ema_updates_like_timm_model_ema_v3_with_buffers_and_counters():
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ours, theirs = ModelEma(net, 0.9), ModelEmaV3(net, decay=0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(8, 5)).square().mean().backward()
        opt.step()
        ours.update(net)
        theirs.update(net)
        for k, v in net.state_dict().items():  # the formula, by hand
            expected[k] = 0.9 * expected[k] + 0.1 * v if v.is_floating_point() else v.clone()
    mine, timm_state = ours.module.state_dict(), theirs.module.state_dict()
    for k, v in mine.items():
        assert torch.allclose(v.float(), expected[k].float(), atol=1e-6), k
        assert torch.allclose(v.float(), timm_state[k].float(), atol=1e-6), k
    assert mine["1.num_batches_tracked"].item() == 5  # copied, not averaged
    assert not torch.allclose(mine["0.weight"], net.state_dict()["0.weight"])


def test_ema_is_evaluated_beside_the_raw_weights_and_checkpointed(tmp_path):
    doc, run = _train(tmp_path, "ema", train={"epochs": 3, "ema": {"decay": 0.5}})
    row = doc["history"][-1]
    for key in ("ema_val_loss", "ema_val_acc", "ema_test_loss", "ema_test_acc"):
        assert key in row
    assert row["ema_test_loss"] != row["test_loss"]
    ckpt = load_checkpoint(run / "checkpoint.pt")
    built = trainer.build_run(load_recipe(tmp_path / "ema.yaml"), 0, 0, CPU)
    assert ckpt["ema"]["updates"] == 3 * len(built.train_loader)  # one update per optimiser step
    # the saved EMA weights give the recorded EMA test loss
    built.model.load_state_dict(ckpt["ema"]["module"])
    loss = trainer.evaluate(built.model, built.eval_loaders["test"], built.criterion)["loss"]
    assert loss == pytest.approx(row["ema_test_loss"], rel=1e-6)


# -- early stopping -----------------------------------------------------------------------------


def _rows(metric, values):
    return [{"epoch": i + 1, metric: v} for i, v in enumerate(values)]


def test_early_stop_rule_waits_patience_epochs_without_an_improvement_over_min_delta():
    falls = EarlyStopConfig(metric="val_loss", patience=2, min_delta=0.05)
    # 1.0 -> 0.9 improves; 0.88 and 0.87 are within min_delta of 0.9: two epochs without improvement
    assert early_stop_due(_rows("val_loss", [1.0, 0.9, 0.88]), falls) is None
    due = early_stop_due(_rows("val_loss", [1.0, 0.9, 0.88, 0.87]), falls)
    assert due is not None and due["best_epoch"] == 2 and due["best"] == 0.9 and due["stopped_after"] == 4
    assert early_stop_due(_rows("val_loss", [1.0, 0.9, 0.88, 0.84]), falls) is None  # 0.06 better than 0.9
    rises = EarlyStopConfig(metric="val_acc", patience=1, min_delta=0.0)
    assert early_stop_due(_rows("val_acc", [0.5, 0.6]), rises) is None
    assert early_stop_due(_rows("val_acc", [0.5, 0.6, 0.6]), rises)["best_epoch"] == 2  # equal is no gain
    assert early_stop_due(_rows("val_acc", [0.5, 0.6, 0.6]), None) is None


def test_early_stopped_run_records_why_and_resume_honours_it(tmp_path):
    # a min_delta no epoch can beat: the run stops `patience` epochs after the first
    stop = {"early_stop": {"metric": "train_loss", "patience": 2, "min_delta": 100.0}, "epochs": 8}
    doc, run = _train(tmp_path, "es", train=stop)
    assert doc["status"] == "completed" and doc["stop_reason"] == "early_stop"
    assert doc["epochs_completed"] == 3 and doc["early_stop"]["best_epoch"] == 1
    code, out, err = run_cli(["train", str(tmp_path / "es.yaml"), "--resume", "--device", "cpu"])
    assert code == 0 and "skipped" in out + err
    # killed after epoch 3's checkpoint but before its results: resume stops there too, untrained
    (run / "results.json").unlink()
    code, out, err = run_cli(["train", str(tmp_path / "es.yaml"), "--resume", "--device", "cpu"])
    assert code == 0, err
    assert "early stop" in out  # the run table says why the run ended, not only `completed`
    again = json.loads((run / "results.json").read_text())
    assert again["stop_reason"] == "early_stop" and _strip(again["history"]) == _strip(doc["history"])
    plain, _ = _train(tmp_path, "plain", train={"epochs": 3})
    assert plain["stop_reason"] == "epochs" and plain["early_stop"] is None


# -- kept checkpoints, mid-epoch checkpoints ------------------------------------------------------


def test_keep_k_holds_the_k_newest_checkpoints_and_the_best(tmp_path):
    doc, run = _train(tmp_path, "keep", train={"epochs": 3}, output={"keep": 3, "checkpoint_every": "8 steps"})
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    # 15 steps per epoch (ceil(936/64)); saves after steps 8 (epoch 1), 15 (end), 16, 24, 30 (end), 32, 40, 45 (end)
    steps = len(trainer.build_run(load_recipe(tmp_path / "keep.yaml"), 0, 0, CPU).train_loader)
    assert len(kept) == 3 and kept[-1] == "epoch00003.pt"
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind
    newest = [load_checkpoint(run / "checkpoints" / k) for k in kept]
    progress = [(c["epoch"], c["partial"]["loader"]["batch"] if c["partial"] else steps) for c in newest]
    assert progress == sorted(progress) and progress[-1] == (3, steps)
    assert progress[0][0] == 2 and 0 < progress[0][1] < steps  # mid-epoch copies kept among them
    assert (run / "checkpoint_best.pt").exists()
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == doc["best"]["epoch"]
    # eval says where a mid-epoch checkpoint stands, in words and in JSON
    code, out, err = run_cli(["eval", str(run / "checkpoints" / kept[0])])
    assert code == 0 and f"epoch 2 and {progress[0][1]} batches of epoch 3" in " ".join(out.split()), out + err
    code, out, err = run_cli(["eval", str(run / "checkpoints" / kept[0]), "--json"])
    assert json.loads(out)["batch"] == progress[0][1] and json.loads(out)["epoch"] == 2


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_resume_from_a_mid_epoch_checkpoint_ends_with_the_uninterrupted_numbers(tmp_path, model):
    """Data order, augmentation random numbers, dropout RNG, schedule, EMA and the epoch's running
    sums: a run restarted from any kept mid-epoch checkpoint ends bit for bit like the straight run."""
    sections = dict(train={"epochs": 2, "accumulate": 2, "ema": {"decay": 0.9}},
                    output={"keep": 50, "checkpoint_every": "3 steps"})
    if model == "cnn":
        sections.update(model={"name": "cnn", "options": {"width": 4}}, data={"augment": "crop_flip"})
    straight, run = _train(tmp_path, "mid", **sections)
    middle = [p for p in sorted((run / "checkpoints").iterdir()) if "batch" in p.name]
    assert len(middle) >= 3
    for i, ckpt in enumerate(middle[::2]):
        resumed_dir = tmp_path / f"resumed{i}" / "runs" / "mid" / "seed0"
        resumed_dir.mkdir(parents=True)
        shutil.copy(ckpt, resumed_dir / "checkpoint.pt")
        recipe = load_recipe(tmp_path / "mid.yaml", [f"output.dir={tmp_path / f'resumed{i}' / 'runs'}"])
        (doc,) = trainer.train_recipe(recipe, CPU, resume=True)
        assert _strip(doc["history"]) == _strip(straight["history"]), ckpt.name
        assert doc["final"]["ema_test_loss"] == straight["final"]["ema_test_loss"]
        a, b = load_checkpoint(resumed_dir / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


@pytest.mark.slow
def test_two_gloo_ranks_resume_from_a_mid_epoch_checkpoint_like_one_process(tmp_path):
    """With DDP the mid-epoch sums are summed over ranks into the checkpoint, and only rank 0
    takes them back: 2 ranks resumed mid-epoch end like one process trained straight."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    doc = tiny_recipe(tmp_path, model={"options": {"depth": 2, "width": 32, "bn": False}},
                      train={"epochs": 2, "batch_size": 64, "accumulate": 2},
                      output={"keep": 50, "checkpoint_every": "3 steps"})
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    (one,) = trainer.train_recipe(load_recipe(recipe, [f"output.dir={tmp_path / 'one'}"]), CPU)
    middle = [p for p in sorted((tmp_path / "one" / "r" / "seed0" / "checkpoints").iterdir()) if "batch" in p.name]
    resumed_dir = tmp_path / "two" / "r" / "seed0"
    resumed_dir.mkdir(parents=True)
    shutil.copy(middle[len(middle) // 2], resumed_dir / "checkpoint.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "biasbench", "train", str(recipe), "--out", str(tmp_path / "two"), "--resume", "-q",
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads((resumed_dir / "results.json").read_text())
    assert two["environment"]["world_size"] == 2
    flat = lambda h: [r[k] for r in h for k in ("train_loss", "train_acc", "test_loss", "test_acc")]  # noqa: E731
    assert flat(two["history"]) == pytest.approx(flat(one["history"]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("setting, words", [
    ("train.accumulate=0", "train.accumulate` must be at least 1"),
    ("train.accumulate=two", "train.accumulate` must be an integer"),
    ("train.ema.decay=1.5", "train.ema.decay` must be in (0, 1)"),
    ("train.ema.decya=0.9", "unknown recipe key `train.ema.decya` (did you mean `train.ema.decay`?)"),
    ("train.ema=0.99", "train.ema` must be a mapping"),
    ("train.early_stop.metric=test_acc", "stopping on the test set"),
    ("train.early_stop.metric=val_f1", "must be val_loss, val_acc"),
    ("train.early_stop.metric=ema_val_acc", "there is no EMA"),
    ("train.early_stop.patience=0", "patience` must be at least 1"),
    ("train.early_stop.min_delta=-1", "min_delta` must be non-negative"),
    ("output.checkpoint_every=500", "output.checkpoint_every` must be a number of steps or a time"),
    ("output.checkpoint_every=0 steps", "output.checkpoint_every` must be"),
    ("output.keep=0", "output.keep` must be at least 1"),
])
def test_long_run_keys_are_validated_in_one_line(tmp_path, setting, words):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    code, out, err = run_cli(["recipe", "show", str(path), "--set", setting])
    one_line_error(code, err, words)


def test_long_run_keys_appear_in_recipe_show_and_read_back(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(
        tmp_path, train={"accumulate": 4, "ema": {"decay": 0.99}, "early_stop": {"metric": "val_acc", "patience": 3}},
        output={"checkpoint_every": "10 min", "keep": 2}))
    code, out, err = run_cli(["recipe", "show", str(path)])
    assert code == 0, err
    shown = write_recipe(tmp_path / "shown.yaml", __import__("yaml").safe_load(out))
    recipe = load_recipe(shown)
    assert recipe.train.accumulate == 4 and recipe.train.ema.decay == 0.99 and recipe.output.keep == 2
    assert recipe.train.early_stop == EarlyStopConfig(metric="val_acc", patience=3, min_delta=0.0)
    assert recipe.output.checkpoint_every == "10 min"
    # needs that only the data can tell are refused before anything is written
    no_val = write_recipe(tmp_path / "nv.yaml", tiny_recipe(tmp_path, data={"val_fraction": 0.0},
                                                            train={"early_stop": {"metric": "val_loss"}}))
    code, out, err = run_cli(["train", str(no_val), "--device", "cpu"])
    one_line_error(code, err, "no validation split")
    assert not (tmp_path / "runs" / "nv").exists()


# -- each loader starts mid-epoch where it left off -----------------------------------------------


def _loaders():
    from biasbench.data import DataBundle, Split, build_data
    from biasbench.data.augment import AUGMENTS, crop_flip
    from biasbench.data.graph import GraphLoader
    from biasbench.data.loader import ImageLoader, TensorLoader
    from biasbench.recipe import DataConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (21, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(21) % 4
    images = DataBundle(Split(x, y), None, Split(x[:4], y[:4]), "classification", 4, (3, 16, 16),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    graph = build_data(DataConfig(name="sbm_graph"))
    return {
        "tensor+crop_flip": TensorLoader(images, images.train, 4, CPU, shuffle=True, augment=crop_flip, seed=3),
        "image (vit, per-image seeds)": ImageLoader(images, images.train, 4, CPU, AUGMENTS.get("vit"), seed=3,
                                                    workers=0),
        "graph": GraphLoader(graph.train, 64, CPU, shuffle=True, seed=3),
    }


@pytest.mark.parametrize("kind", ["tensor+crop_flip", "image (vit, per-image seeds)", "graph"])
def test_every_training_loader_resumes_mid_epoch_with_the_same_batches(kind):
    loader = _loaders()[kind]
    loader.set_epoch(2)
    straight, positions = [], []
    for x, y in loader:
        straight.append((x.x if hasattr(x, "x") and not isinstance(x, torch.Tensor) else x,
                         getattr(x, "nodes", None), y))
        positions.append(loader.position())
    assert len(straight) >= 3
    for k in (1, len(straight) - 2):
        fresh = _loaders()[kind]  # a new process: nothing but the saved position
        fresh.set_epoch(2, positions[k - 1])
        rest = [(x.x if hasattr(x, "x") and not isinstance(x, torch.Tensor) else x, getattr(x, "nodes", None), y)
                for x, y in fresh]
        assert len(rest) == len(straight) - k
        for (a, an, ay), (b, bn, by) in zip(rest, straight[k:], strict=True):
            assert torch.equal(a, b) and torch.equal(ay, by) and (an is None or torch.equal(an, bn))
        fresh.set_epoch(3)  # a position applies to one pass only: the next epoch starts at batch 0
        assert len(list(fresh)) == len(straight)


def test_checkpoint_every_minutes_saves_when_the_time_has_passed(tmp_path, monkeypatch):
    """A clock that moves 40 s per reading: every step is past `0.5 min` of the last save, so
    each step but an epoch's last writes a mid-epoch checkpoint; the numbers do not change."""
    plain, _ = _train(tmp_path, "plain", train={"epochs": 2})
    ticks = iter(range(0, 10**9, 40))
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: float(next(ticks)))
    timed, run = _train(tmp_path, "timed", train={"epochs": 2}, output={"checkpoint_every": "0.5 min", "keep": 1000})
    steps = len(trainer.build_run(load_recipe(tmp_path / "timed.yaml"), 0, 0, CPU).train_loader)
    middle = [p.name for p in (run / "checkpoints").iterdir() if "batch" in p.name]
    assert len(middle) == 2 * (steps - 1)  # after every step of both epochs but their last
    assert _strip(timed["history"]) == _strip(plain["history"])


def test_a_kept_copy_a_killed_write_left_half_done_is_removed_on_resume(tmp_path):
    path = write_recipe(tmp_path / "k.yaml", tiny_recipe(tmp_path, train={"epochs": 2}, output={"keep": 2}))
    (stopped,) = trainer.train_recipe(load_recipe(path), CPU, stop_after=1)
    kept = tmp_path / "runs" / "k" / "seed0" / "checkpoints"
    orphan = kept / ".epoch00002.pt.x1y2z3.tmp"  # what a kill between link and rename leaves
    orphan.write_bytes(b"half")
    code, out, err = run_cli(["train", str(path), "--resume", "--device", "cpu"])
    assert code == 0, err
    assert not orphan.exists() and sorted(p.name for p in kept.iterdir()) == ["epoch00001.pt", "epoch00002.pt"]
    assert "removed 1 temporary file(s)" in " ".join((out + err).split())
