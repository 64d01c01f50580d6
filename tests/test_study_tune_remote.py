"""`tune:` through the Slurm backend, without a cluster: `SlurmBackend` as `sweep --backend
slurm` builds it, with submitit's executor and the Slurm queue replaced by an in-process fake
(each "job" is `train_one` in this process). The trials go in job arrays of `batch`, every
trial is submitted once, the sweep process tells Optuna, and the record equals the local
path's for the same seed. A stopped sweep follows a trial whose job is still queued and submits
again, with the same values, those whose jobs are gone. (The real cluster:
tests/test_study_slurm.py, `make test-slurm`.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from rich.console import Console

from biasbench.errors import UserError
from biasbench.study import load_study
from biasbench.study import runner as study_runner
from biasbench.study import slurm as study_slurm
from biasbench.study import tune_search as ts
from biasbench.study.runner import train_one
from biasbench.study.slurm import SlurmBackend
from biasbench.study.specs import LauncherSpec
from tests.conftest import assert_fits, output_at, run_cli
from tests.test_study_tune import tune_study

TRIALS = 3


class FakeJob:
    def __init__(self, job_id: str):
        self.job_id = job_id


class FakeCluster:
    """submitit's executor and `squeue`, in this process. A job submitted while `run_at_submit`
    trains at once (it has left the queue by the first look); else it waits in `alive` until a
    test finishes or drops it."""

    def __init__(self):
        self.arrays: list[list[str]] = []  # the trial keys of each submitted array, in order
        self.calls: dict[str, tuple] = {}  # job id -> the call's arguments
        self.alive: dict[str, str] = {}  # job id -> Slurm state
        self.run_at_submit = True
        self.sleep: Any = lambda seconds: None  # the backend's wait between two looks at the queue

    def executor(self, launcher, folder, name):
        return self

    def map_array(self, fn, recipes, seeds, replicates, devices, threads):
        array = len(self.arrays) + 1
        ids = [f"{array}_{i}" for i in range(len(recipes))]
        self.arrays.append([f"{Path(r.output.dir).name}/{r.output.name}" for r in recipes])
        for job_id, call in zip(ids, zip(recipes, seeds, replicates, devices)):
            self.calls[job_id] = call
            if self.run_at_submit:
                self.train(job_id)
            else:
                self.alive[job_id] = "PENDING"
        return [FakeJob(j) for j in ids]

    def train(self, job_id: str) -> None:
        recipe, seed, replicate, device = self.calls[job_id]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a job of --cpus 1, and the local workers below
        try:
            train_one(recipe, seed, replicate, device, True)
        finally:
            torch.set_num_threads(threads)

    def queue_states(self, job_ids):
        return {j: s for j, s in self.alive.items() if j in job_ids}

    def submitted(self) -> list[str]:
        return [key for array in self.arrays for key in array]


@pytest.fixture
def cluster(monkeypatch):
    fake = FakeCluster()
    monkeypatch.setattr(study_slurm, "executor_for", fake.executor)
    monkeypatch.setattr(study_slurm, "queue_states", fake.queue_states)
    # The backend's own `time` only: the module's sleep is also subprocess's.
    monkeypatch.setattr(study_slurm, "time", SimpleNamespace(sleep=lambda seconds: fake.sleep(seconds)))
    return fake


def _study(tmp_path: Path):
    return load_study(tune_study(tmp_path, trials=TRIALS))


def _results(out: Path) -> dict[str, list[dict]]:
    """Every trial's history, without the wall-clock seconds."""
    return {str(p.relative_to(out / "tune").parent): [{k: v for k, v in row.items() if k != "seconds"}
                                                      for row in json.loads(p.read_text())["history"]]
            for p in sorted((out / "tune").glob("*/trial_*/seed*/results.json"))}


def _every_trial() -> list[str]:
    return sorted(f"variant={arm}/trial_{n:03d}" for arm in ("baseline", "dac") for n in range(TRIALS))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The local path's tuning of the same study: one worker process of one thread."""
    tmp_path = tmp_path_factory.mktemp("local")
    study, out = _study(tmp_path), tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ts, "worker_threads", lambda jobs: 1)
        tuned = ts.run_tuning(study, out, Console(quiet=True), jobs=1, device="cpu")
    return tuned.tuned, _results(out)


def test_two_arms_three_trials_run_as_job_arrays_and_equal_the_local_path(tmp_path, cluster, local):
    study, out = _study(tmp_path), tmp_path / "out"
    tuned = ts.run_tuning(study, out, Console(quiet=True), device="cpu", backend=SlurmBackend(LauncherSpec()),
                          batch=4)
    # Arrays of 4 asked trials, the arms alternating (fewest trials first), then the 2 left.
    assert [len(a) for a in cluster.arrays] == [4, 2]
    assert sorted(cluster.submitted()) == _every_trial()  # each trial once
    record, results = local
    assert tuned.tuned == record  # the same values asked (same seed), the same trials, the same best
    assert _results(out) == results
    for cell in study.cells:  # the cells go on with their best trial's values
        best = record["cells"][cell.name]["params"]
        recipe = tuned.cell(cell.name).recipe
        assert (recipe.optim.lr, recipe.optim.weight_decay) == (best["optim.lr"], best["optim.weight_decay"])
    jobs = json.loads((out / "tune" / ts.JOBS_FILE).read_text())
    assert sorted(jobs) == _every_trial() and {j["status"] for j in jobs.values()} == {"completed"}


def test_a_stopped_tuning_follows_queued_trials_and_submits_lost_ones_again(tmp_path, cluster, local):
    study, out = _study(tmp_path), tmp_path / "out"
    backend = SlurmBackend(LauncherSpec())
    cluster.run_at_submit = False

    def stop(seconds):
        raise KeyboardInterrupt  # Ctrl-C while the first array waits in the queue

    cluster.sleep = stop
    with pytest.raises(KeyboardInterrupt):
        ts.run_tuning(study, out, Console(quiet=True), device="cpu", backend=backend, batch=4)
    (first,) = cluster.arrays
    asked = {key: cluster.calls[f"1_{i}"][0] for i, key in enumerate(first)}
    # While no sweep ran, one job kept running and the others were cancelled before they started.
    kept = "1_0"
    cluster.alive = {kept: "RUNNING"}
    cluster.run_at_submit = True

    def finish(seconds):
        cluster.train(kept)
        cluster.alive.clear()

    cluster.sleep = finish
    tuned = ts.run_tuning(study, out, Console(quiet=True), device="cpu", backend=backend, batch=4)
    again = cluster.arrays[1]
    assert sorted(again) == sorted(first[1:])  # the lost three once more, the running one followed
    for i, key in enumerate(again):  # with the values they were asked with
        recipe = cluster.calls[f"2_{i}"][0]
        assert (recipe.optim.lr, recipe.optim.weight_decay) == (asked[key].optim.lr, asked[key].optim.weight_decay)
    assert sorted(cluster.arrays[2]) == ["variant=baseline/trial_002", "variant=dac/trial_002"]
    # The trials asked before the stop equal the local path's; the sweep run again draws the third
    # trial of each arm from a sampler seeded by the trials stored (as locally: no draw repeated).
    record, results = local
    for cell, got in tuned.tuned["cells"].items():
        assert [t["number"] for t in got["trials"]] == list(range(TRIALS))
        assert {t["state"] for t in got["trials"]} == {"complete"}
        assert got["trials"][:2] == record["cells"][cell]["trials"][:2]
    assert {k: v for k, v in _results(out).items() if "trial_002" not in k} == \
        {k: v for k, v in results.items() if "trial_002" not in k}


@pytest.mark.parametrize("options, batch, where", [
    (["--array-parallelism", "3"], 3, "(launcher.array_parallelism)"),
    ([], ts.SLURM_BATCH, f"(the default, {ts.SLURM_BATCH})"),
])
def test_the_slurm_plan_says_how_many_trials_go_in_each_job_array(tmp_path, monkeypatch, options, batch, where):
    monkeypatch.setattr(study_runner, "check_slurm", lambda: None)  # sbatch need not be here for a plan
    path = tune_study(tmp_path, trials=TRIALS)
    code, text, err = output_at(["sweep", str(path), "--dry-run", "--backend", "slurm", *options], 80, monkeypatch)
    assert code == 0, err
    assert_fits(text)
    assert f"on Slurm the trials go in job arrays of {batch} {where}" in " ".join(text.split())
    code, text, err = run_cli(["sweep", str(path), "--dry-run", "--json", "--backend", "slurm", *options])
    assert code == 0, err
    assert json.loads(text)["tune"]["slurm_batch"] == batch
    code, text, err = run_cli(["sweep", str(path), "--dry-run", "--json"])  # local: no job arrays
    assert code == 0 and json.loads(text)["tune"]["slurm_batch"] is None, err


def test_a_trial_whose_job_vanished_stops_the_tuning_in_one_line_and_runs_again_next_time(tmp_path, cluster):
    study, out = _study(tmp_path), tmp_path / "out"
    backend = SlurmBackend(LauncherSpec())
    cluster.run_at_submit = False
    cluster.sleep = lambda seconds: cluster.alive.clear()  # the jobs leave the queue untrained (killed?)
    with pytest.raises(UserError) as e:
        ts.run_tuning(study, out, Console(quiet=True), device="cpu", backend=backend, batch=2)
    line = str(e.value)
    assert "\n" not in line and "left the queue without a result" in line and "run the same command again" in line
    (first,) = cluster.arrays
    assert any(line.startswith(f"tuning trial {key}:") for key in first)
    for key in first:
        assert "left the queue" in (out / "tune" / key / "error.txt").read_text()
    assert {j["status"] for j in json.loads((out / "tune" / ts.JOBS_FILE).read_text()).values()} == {"error"}
    cluster.run_at_submit = True
    tuned = ts.run_tuning(study, out, Console(quiet=True), device="cpu", backend=backend, batch=2)
    assert sorted(cluster.arrays[1]) == sorted(first)  # the same two trials first, then the others once
    assert sorted(cluster.submitted()[2:]) == _every_trial()
    assert all(len(c["trials"]) == TRIALS for c in tuned.tuned["cells"].values())
