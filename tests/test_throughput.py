"""Samples per second leave out kernel builds and the first training step (issue 22).

A fake clock makes the arithmetic exact: every training step takes 1 s, except the process's
first, which takes 100 s (as a backward kernel's JIT build or torch.compile would).
"""

from __future__ import annotations

import io
import re
import types

import pytest
import torch
from rich.console import Console

from biasbench import trainer
from biasbench.recipe import load_recipe
from tests.conftest import tiny_recipe, write_recipe

FIRST_S, STEP_S = 100.0, 1.0


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that moves only when a training step runs; returns the list of steps."""
    now, steps = [0.0], []
    real_step = trainer._optimizer_step

    def step(run, *args):
        steps.append(now[0])
        now[0] += FIRST_S if len(steps) == 1 else STEP_S
        real_step(run, *args)

    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(trainer, "_optimizer_step", step)
    return steps


def test_first_step_is_not_counted_in_samples_per_second(tmp_path, fake_clock):
    epochs, batch = 3, 64
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": epochs, "batch_size": batch}))
    recipe = load_recipe(path)
    log = io.StringIO()
    doc = trainer.train_run(recipe, 0, 0, torch.device("cpu"), console=Console(file=log, width=80))
    n, steps = doc["data"]["train_size"], len(fake_clock)
    assert steps == epochs * -(-n // batch) and steps > epochs  # several steps an epoch
    assert doc["images_per_second"] == pytest.approx((epochs * n - batch) / ((steps - 1) * STEP_S), abs=0.1)
    assert doc["warmup_s"] == pytest.approx(FIRST_S)  # an MLP builds no kernel: only the first step
    assert doc["wall_time_s"] >= FIRST_S  # it trained, so it is in the run's time
    rates = [int(m.replace(",", "")) for m in re.findall(r"([\d,]+)/s", log.getvalue())]
    per_epoch = steps // epochs
    assert rates == [round((n - batch) / (per_epoch - 1)), round(n / per_epoch), round(n / per_epoch)]


def test_a_resumed_run_leaves_out_its_own_first_step(tmp_path, fake_clock):
    """Each process warms up again: the first step after a resume is left out as well."""
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2, "batch_size": 64}))
    recipe = load_recipe(path)
    trainer.train_run(recipe, 0, 0, torch.device("cpu"), stop_after=1)
    doc = trainer.train_run(recipe, 0, 0, torch.device("cpu"), resume=True)
    n, steps = doc["data"]["train_size"], len(fake_clock)
    assert doc["images_per_second"] == pytest.approx((2 * n - 2 * 64) / ((steps - 2) * STEP_S), abs=0.1)
