"""The trainer: learning, exact resume, reproducibility, divergence, interruption, results."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biasbench import trainer
from biasbench.recipe import load_recipe
from biasbench.results import load_results
from tests.conftest import RECIPES, REPO, tiny_recipe, write_recipe

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


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimiser_uses_fused_kernel_and_steps_by_the_formula(name):
    """build_optimizer takes PyTorch's fused step on the CPU (issue 22: it halves the step's
    serial optimiser time); two steps must still follow the update rule, written out here."""
    from biasbench.optim import build_optimizer
    from biasbench.recipe import OptimConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    cfg = OptimConfig(name=name, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, bias_weight_decay=0.01)
    opt, _ = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    w = model.weight.detach().clone()
    grads = [torch.randn(3, 5), torch.randn(3, 5)]
    buf = m = v = torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        model.weight.grad, model.bias.grad = g.clone(), torch.zeros(3)
        opt.step()
        if name == "sgd":  # torch's SGD: d = g + wd w; buf = mu buf + d (buf = d at first); nesterov
            d = g + 0.01 * w
            buf = d if t == 1 else 0.9 * buf + d
            w = w - 0.05 * (d + 0.9 * buf)
        else:  # Adam (L2 in the gradient) / AdamW (decoupled decay), bias-corrected moments
            d = g + 0.01 * w if name == "adam" else g
            if name == "adamw":
                w = w * (1 - 0.05 * 0.01)
            m, v = 0.9 * m + 0.1 * d, 0.999 * v + 0.001 * d * d
            m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
            w = w - 0.05 * m_hat / (v_hat.sqrt() + cfg.eps)
        assert torch.allclose(model.weight, w, atol=1e-6), (name, t)


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
    with pytest.raises(Exception, match="schema version 99, this biasbench reads version 2"):
        load_results(future)
    code, _, err = run_cli(["compare", str(future.parent)])
    one_line_error(code, err, "schema version 99")


def test_history_records_each_epochs_own_learning_rate(tmp_path):
    doc = tiny_recipe(tmp_path, schedule={"name": "multistep", "per": "epoch", "milestones": [2], "gamma": 0.1},
                      train={"epochs": 3})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    assert [h["lr"] for h in res["history"]] == pytest.approx([0.05, 0.05, 0.005])


# ---------------------------------------------------------------------------------------------
# What a run writes besides results.json: best checkpoint, metrics.csv, predictions, TensorBoard.
# ---------------------------------------------------------------------------------------------


def test_best_checkpoint_holds_the_best_validation_epoch_and_eval_reads_it(tmp_path):
    from biasbench.checkpoint import load_checkpoint
    from tests.conftest import run_cli

    # a learning rate that overshoots late in the run, so the best epoch is not the last one
    doc = tiny_recipe(tmp_path, schedule={"name": "constant"}, optim={"lr": 0.4}, train={"epochs": 6})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    run = tmp_path / "runs" / "r" / "seed0"
    best = res["best"]
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 6
    for which, epoch in (("best", best["epoch"]), ("last", 6)):
        code, out, err = run_cli(["eval", str(run), "--which", which, "--json", "--device", "cpu"])
        assert code == 0, err
        evaluated = json.loads(out)
        assert evaluated["epoch"] == epoch
        assert evaluated["acc"] == pytest.approx(res["history"][epoch - 1]["test_acc"])


def test_metrics_csv_and_predictions_match_the_history(tmp_path):
    import csv

    from biasbench.predictions import load_predictions

    (res,) = _train(write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3})), tmp_path)
    run = tmp_path / "runs" / "r" / "seed0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [{k: float(v) for k, v in r.items()} for r in rows] == [
        {k: pytest.approx(float(v)) for k, v in h.items()} for h in res["history"]]
    preds = load_predictions(run)
    assert res["predictions"] == {"file": "predictions.npz", "split": "test", "epochs": 3,
                                  "examples": res["data"]["test_size"], "stored": "predicted class"}
    for h in res["history"]:  # per-example predictions give back each epoch's test accuracy
        assert preds.correct(h["epoch"]).mean() == pytest.approx(h["test_acc"])


def test_regression_predictions_are_per_example_losses(tmp_path):
    from biasbench.predictions import load_predictions

    doc = tiny_recipe(tmp_path, data={"name": "synthetic", "options": {"task": "regression"}}, train={"epochs": 2})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    preds = load_predictions(tmp_path / "runs" / "r" / "seed0")
    assert preds.task == "regression" and res["predictions"]["stored"] == "per-example loss"
    assert preds.example_loss(2).mean() == pytest.approx(res["final"]["test_loss"], rel=1e-5)


def test_resumed_run_has_the_uninterrupted_predictions_and_best_checkpoint(tmp_path):
    from biasbench.checkpoint import load_checkpoint
    from biasbench.predictions import load_predictions

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 4}))
    _train(path, tmp_path / "a")
    _train(path, tmp_path / "b", stop_after=2)
    _train(path, tmp_path / "b", resume=True)
    a, b = (tmp_path / x / "runs" / "r" / "seed0" for x in "ab")
    pa, pb = load_predictions(a), load_predictions(b)
    assert (pa.epochs == pb.epochs).all() and (pa.pred == pb.pred).all()
    assert load_checkpoint(a / "checkpoint_best.pt")["epoch"] == load_checkpoint(b / "checkpoint_best.pt")["epoch"]


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    doc = tiny_recipe(tmp_path, train={"epochs": 3}, output={"loggers": ["csv", "tensorboard"]})
    (res,) = _train(write_recipe(tmp_path / "r.yaml", doc), tmp_path)
    events = EventAccumulator(str(tmp_path / "runs" / "r" / "seed0" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("test/acc")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx([h["test_acc"] for h in res["history"]])
    assert {"train/loss", "val/loss", "lr"} <= set(events.Tags()["scalars"])


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import builtins

    from tests.conftest import one_line_error, run_cli

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard") or name == "torch.utils.tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"loggers": ["csv", "tensorboard"]}))
    one_line_error(*run_cli(["train", str(path)])[::2], "pip install 'biasbench[tensorboard]'")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Kernel builds stay out of throughput; precision.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,variant", [("dac_linear_cpu", "dac"), ("raa_cpu", "raa")])
def test_kernel_build_is_announced_and_kept_out_of_images_per_second(tmp_path, monkeypatch, kernel, variant):
    import importlib

    from tests.conftest import run_cli

    module = importlib.import_module(f"biasbench.kernels.{kernel}")
    events: list[tuple[str, float]] = []
    real_available, real_epoch, real_warm_up = module.available, trainer._train_epoch, trainer.warm_up
    built: list[float] = []

    def slow_first_build(*args):  # what the first run on a machine does: compile, 10-20 s
        if not events or events[-1][0] != "build":
            events.append(("build", time.perf_counter()))
            time.sleep(1.5)
        return real_available(*args)

    def timed_epoch(*args, **kwargs):
        events.append(("epoch", time.perf_counter()))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(module, "available", slow_first_build)
    monkeypatch.setattr(trainer, "warm_up", lambda *a: built.append(real_warm_up(*a)) or built[-1])
    monkeypatch.setattr(trainer, "_train_epoch", timed_epoch)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={"variant": variant}, train={"epochs": 2}))
    code, out, err = run_cli(["train", str(path), "--device", "cpu"])
    assert code == 0, err
    assert [e for e, _ in events[:2]] == ["build", "epoch"]  # built before the first epoch's clock
    text = " ".join(out.split())
    assert text.index(f"{variant.upper()} layers: building the fused C++ kernels") < \
        text.index("kernels ready after") < text.index("epoch 1/2")
    res = json.loads((tmp_path / "runs" / "r" / "seed0" / "results.json").read_text())
    assert res["warmup_s"] >= 1.5
    seconds = sum(h["seconds"] for h in res["history"])  # the epochs' own clocks, the build not in them
    first_step = res["warmup_s"] - built[0]  # warmup_s: the build, then the first step (left out too)
    assert 0 < first_step < seconds
    assert res["images_per_second"] == pytest.approx((2 * res["data"]["train_size"] - 64) / (seconds - first_step),
                                                     rel=0.02)


def test_fp16_on_the_cpu_trains_in_bf16_and_says_so(tmp_path):
    from tests.conftest import run_cli

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3, "amp": "fp16"}))
    code, out, err = run_cli(["train", str(path), "--device", "cpu"])
    assert code == 0, err
    assert "train.amp fp16 needs CUDA" in " ".join(out.split()) and "bf16" in out
    res = json.loads((tmp_path / "runs" / "r" / "seed0" / "results.json").read_text())
    assert res["environment"]["precision"] == "bf16" and "fp16" in res["environment"]["precision_note"]
    assert res["recipe"]["train"]["amp"] == "fp16"  # what was asked stays in the recipe
    assert res["final"]["test_acc"] > 0.8  # and it learns


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: fp16 autocast with a GradScaler")
def test_fp16_on_cuda_uses_a_gradient_scaler_and_resumes_exactly(tmp_path):
    from biasbench.checkpoint import load_checkpoint

    doc = tiny_recipe(tmp_path, model={"name": "cnn", "options": {"width": 8}}, train={"epochs": 3, "amp": "fp16"})
    path = write_recipe(tmp_path / "r.yaml", doc)
    cuda = torch.device("cuda")
    recipe = lambda out: load_recipe(path, [f"output.dir={out}"])  # noqa: E731
    (straight,) = trainer.train_recipe(recipe(tmp_path / "a"), cuda)
    trainer.train_recipe(recipe(tmp_path / "b"), cuda, stop_after=1)
    (resumed,) = trainer.train_recipe(recipe(tmp_path / "b"), cuda, resume=True)
    assert straight["environment"]["precision"] == "fp16" and straight["final"]["test_acc"] > 0.8
    ckpt = load_checkpoint(tmp_path / "a" / "r" / "seed0" / "checkpoint.pt")
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], rel=1e-3)


# ---------------------------------------------------------------------------------------------
# OS errors while writing: one line, exit 2, the previous checkpoint intact.
# ---------------------------------------------------------------------------------------------


def _deny_writes_below(folder, monkeypatch, err=errno.EACCES):
    """Make `folder` unwritable: chmod, and (as root, where chmod does not stop writes) an
    os.open that refuses to create files below it with `err`."""
    real_open = os.open
    folder.chmod(0o555)

    def guarded(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).startswith(str(folder)):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


def test_read_only_output_folder_is_refused_before_training(tmp_path, monkeypatch):
    from tests.conftest import one_line_error, run_cli

    out = tmp_path / "ro"
    out.mkdir()
    _deny_writes_below(out, monkeypatch)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    code, stdout, err = run_cli(["train", str(path), "--out", str(out)])
    one_line_error(code, err, f"cannot write in `{out}`", "Permission denied", "--out")
    assert "epoch" not in stdout
    out.chmod(0o755)


@pytest.mark.parametrize("err", [errno.EACCES, errno.ENOSPC])
def test_folder_unwritable_between_epochs_gives_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, err):
    from biasbench.checkpoint import load_checkpoint
    from tests.conftest import one_line_error, run_cli

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3}))
    run = tmp_path / "runs" / "r" / "seed0"
    real, calls = trainer.evaluate, {"n": 0}

    def break_folder_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 checkpointed; epoch 2's files will not be
            _deny_writes_below(run, monkeypatch, err)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", break_folder_in_epoch_two)
    code, _, stderr = run_cli(["train", str(path)])
    one_line_error(code, stderr, f"cannot write `{run}/", os.strerror(err), "intact")
    run.chmod(0o755)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# Signals: SIGTERM and SIGUSR1 stop like Ctrl-C; workers of --jobs end with their parent.
# ---------------------------------------------------------------------------------------------


def _cli(args, **kw):
    """`biasbench ARGS` as its own process (one thread, this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "biasbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for(proc, *texts, any_of: bool = False):
    """Read the process's output until each of `texts` (or one, `any_of`) has appeared in a line."""
    missing = set(texts)
    for line in proc.stdout:
        missing = {t for t in missing if t not in line}
        if not missing or (any_of and len(missing) < len(texts)):
            return
    raise AssertionError(f"process ended before printing {missing}: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGINT, 130)])
def test_stop_signals_keep_a_checkpoint_and_results_and_resume(tmp_path, monkeypatch, sig, code):
    """What Slurm, `timeout` and container runtimes send (SIGUSR1: Slurm's warning before a time
    limit) ends a run like Ctrl-C: checkpoint, results `interrupted`, exit 128 + signal."""
    from tests.conftest import run_cli

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 3}))
    real, calls = trainer.evaluate, {"n": 0}

    def signal_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 is checkpointed; the signal arrives during epoch 2's evaluation
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", signal_in_epoch_two)
    before = signal.getsignal(sig)
    result, err = run_cli(["train", str(path), "--device", "cpu"])[::2]
    assert result == code, err
    assert signal.getsignal(sig) == before  # the CLI's handlers are gone again
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"interrupted ({sig.name}): checkpoint (epoch 1)" in lines[0], err
    res = json.loads((tmp_path / "runs" / "r" / "seed0" / "results.json").read_text())
    assert res["status"] == "interrupted" and res["interrupted_by"] == sig.name and res["checkpoint_epoch"] == 1
    monkeypatch.setattr(trainer, "evaluate", real)
    code, out, err = run_cli(["train", str(path), "--device", "cpu", "--resume"])
    assert code == 0 and "after epoch 1" in " ".join(out.split()), err
    assert json.loads((tmp_path / "runs" / "r" / "seed0" / "results.json").read_text())["epochs_completed"] == 3


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds `marker` (a training and its workers inherit it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the workers")
def test_jobs_workers_end_with_their_parent_even_on_sigkill(tmp_path):
    import uuid

    marker = f"BIASBENCH_TEST_MARK={uuid.uuid4().hex}"
    key, value = marker.split("=")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2000, "replicates": 2}))
    parent = _cli(["train", str(path), "--device", "cpu", "--jobs", "2"], env={key: value})
    _wait_for(parent, "seed 0  epoch 2/2000", "seed 1  epoch 2/2000")  # both workers are training
    assert len(_processes_with(marker)) >= 3  # the parent and two workers
    parent.kill()  # SIGKILL: the parent runs no cleanup at all
    parent.wait()
    deadline = time.time() + 20
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []
    for seed in (0, 1):  # each worker stopped like Ctrl-C: resumable
        res = json.loads((tmp_path / "runs" / "r" / f"seed{seed}" / "results.json").read_text())
        assert res["status"] == "interrupted" and res["interrupted_by"] == "SIGTERM"


# ---------------------------------------------------------------------------------------------
# Fault injection: kill -9 at random moments; every resume ends with the uninterrupted numbers.
# ---------------------------------------------------------------------------------------------


def _kill_repeatedly(tmp_path, kills: int, seed: int, output: dict | None = None) -> list[str]:
    """Train with `--resume` in a subprocess, SIGKILL it after a random delay, `kills` times, then
    resume to the end in this process; the run must equal an uninterrupted one (trained without
    mid-epoch checkpoints). Returns where each kill landed, and (with output.checkpoint_every)
    whether checkpoint.pt was then a mid-epoch one, for the test log."""
    import random

    from biasbench.predictions import load_predictions
    from tests.conftest import run_cli

    # wide enough that checkpoint writes (two parts of ~1 MB, fsync) are a real share of an epoch
    doc = tiny_recipe(tmp_path, model={"options": {"depth": 3, "width": 256}}, train={"epochs": 12},
                      output=output or {})
    path = write_recipe(tmp_path / "r.yaml", doc)
    (straight,) = _train(path, tmp_path / "straight", "output.checkpoint_every=null", "output.keep=1")
    epoch_s = straight["wall_time_s"] / 12  # training, evaluation and writes of one epoch
    run = tmp_path / "runs" / "r" / "seed0"
    rng, landed = random.Random(seed), []
    for _ in range(kills):
        proc = _cli(["train", str(path), "--resume", "--device", "cpu"])
        _wait_for(proc, "resuming", "nothing to resume", any_of=True)  # built and locked: training starts
        time.sleep(rng.uniform(0.0, 2.0 * epoch_s))  # in restore, steps, evaluation or a write
        proc.kill()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # it did not finish before the kill
        landed.append("during a write" if list(run.glob(".*.tmp")) else "in steps or evaluation")
        if output and (run / "checkpoint.pt").exists():
            from biasbench.checkpoint import load_checkpoint

            landed.append("mid-epoch checkpoint" if load_checkpoint(run / "checkpoint.pt")["partial"] else
                          "epoch checkpoint")
    code, out, err = run_cli(["train", str(path), "--resume", "--device", "cpu"])
    assert code == 0, err
    resumed = json.loads((run / "results.json").read_text())
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert resumed["status"] == "completed" and strip(resumed["history"]) == strip(straight["history"])
    p1, p2 = load_predictions(run), load_predictions(tmp_path / "straight" / "runs" / "r" / "seed0")
    assert (p1.pred == p2.pred).all() and (p1.epochs == p2.epochs).all()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    return landed


def test_three_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    _kill_repeatedly(tmp_path, kills=3, seed=0)


@pytest.mark.slow  # 13.7 s of CPU with its workers, 34.9 s at load 6.8 (2026-12-05)
def test_kill_9_mid_epoch_with_checkpoints_every_2_steps_then_resume_equals_the_uninterrupted_run(tmp_path):
    landed = _kill_repeatedly(tmp_path, kills=3, seed=2, output={"checkpoint_every": "2 steps", "keep": 3})
    assert "mid-epoch checkpoint" in landed, landed  # a resume started in the middle of an epoch


@pytest.mark.slow
def test_twenty_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    landed = _kill_repeatedly(tmp_path, kills=20, seed=1)
    print(f"kills: {landed.count('during a write')} during a write, "
          f"{landed.count('in steps or evaluation')} in steps or evaluation")


def test_progress_bar_shows_the_runs_eta_on_a_terminal_and_nothing_in_a_pipe():
    import io

    from rich.console import Console

    terminal = Console(file=io.StringIO(), force_terminal=True, width=80)
    with trainer._progress_bar(terminal, total_steps=100, done=2, epochs=10) as bar:
        for _ in range(5):
            time.sleep(0.05)
            bar.update(bar.task_ids[0], advance=1, rate="123/s")
        terminal.print(bar.get_renderable())
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", terminal.file.getvalue())  # colours and cursor moves
    assert "epoch 3/10" in shown and "123/s" in shown
    assert re.search(r"eta 0:0\d:\d\d", shown)  # time remaining over the whole run's steps
    with trainer._progress_bar(Console(file=io.StringIO()), 100, 0, 10) as bar:
        assert bar is None  # not a terminal: no bar, no per-step work


def test_channels_last_trains_images_like_the_default_format_and_is_refused_elsewhere(tmp_path):
    from tests.conftest import run_cli

    cnn = {"model": {"name": "cnn", "options": {"width": 8}}, "train": {"epochs": 2}}
    histories = []
    for fmt in (False, True):
        path = write_recipe(tmp_path / f"cl{int(fmt)}.yaml", tiny_recipe(tmp_path, **{
            **cnn, "train": {**cnn["train"], "channels_last": fmt}}))
        code, _, err = run_cli(["train", str(path), "--device", "cpu", "--quiet"])
        assert code == 0, err
        res = json.loads((tmp_path / "runs" / f"cl{int(fmt)}" / "seed0" / "results.json").read_text())
        histories.append([h["train_loss"] for h in res["history"]])
    # the same training in another layout (the convolutions may round differently, nothing more)
    assert histories[1] == pytest.approx(histories[0], rel=5e-3)
    from biasbench.recipe import load_recipe
    from biasbench.trainer import build_run

    run = build_run(load_recipe(tmp_path / "cl1.yaml"), 0, 0, torch.device("cpu"))
    convs = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (one input channel: both layouts coincide)
    # mnist1d gives (40,) vectors: channels_last would be a silent no-op there, so it is refused
    path = write_recipe(tmp_path / "v.yaml", tiny_recipe(tmp_path, data={"name": "mnist1d"},
                                                         train={"channels_last": True}))
    code, _, err = run_cli(["train", str(path), "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1 and "train.channels_last" in err and "(40,)" in err
    assert not (tmp_path / "runs" / "v").exists()


def test_a_full_disk_while_checkpointing_is_one_line_that_says_to_free_space(tmp_path, monkeypatch):
    # torch.save's zip writer turns the OS's ENOSPC into a RuntimeError ("unexpected pos ..."),
    # raised while handling it: what a full output folder does (seen on a 200 KB tmpfs).
    import errno

    from biasbench import checkpoint
    from tests.conftest import run_cli

    def full_disk(obj, f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 194816 vs 194704")  # noqa: B904 (as torch does: context, not cause)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    code, _, err = run_cli(["train", str(path), "--device", "cpu"])
    assert code == 2 and err.count("\n") == 1, err
    assert "checkpoint.pt" in err and "(ENOSPC)" in err and "free some space" in err
    assert "nothing was written there" in err and "permissions" not in err
    assert not list((tmp_path / "runs").rglob("*.tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGINT, 130)])
def test_a_stop_signal_before_training_began_exits_with_its_own_code_and_says_so(tmp_path, monkeypatch, signum,
                                                                                code):
    # Typer turns any KeyboardInterrupt into a silent exit 130: a SIGTERM while the data set was
    # being built used to end as "Ctrl-C", with nothing said.
    from biasbench import trainer
    from biasbench.stopping import StopRequested
    from tests.conftest import run_cli

    def stopped_while_building(*args, **kwargs):
        raise StopRequested(signum)  # what the handler raises when the signal lands here

    monkeypatch.setattr(trainer, "build_for_recipe", stopped_while_building)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    got, _, err = run_cli(["train", str(path), "--device", "cpu"])
    assert got == code
    assert err.strip() == f"stopped by {signal.Signals(signum).name} before training began; nothing was written"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
