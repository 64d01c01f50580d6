"""The Slurm backend on a real one-node Slurm cluster (tests/slurm/cluster.sh starts it).

    make test-slurm     (installs slurm-wlm and munge when missing; about 5 minutes on 2 cores)

A job requeued by Slurm or preempted by a higher-priority partition resumes from its epoch
checkpoint: its log shows the second start at the checkpoint's epoch, and the numbers equal a
local run. A sweep stopped while its jobs are queued is finished by the same command without
submitting them twice. `tune:` (studies/tune_smoke.yaml --smoke) runs its trials as job
arrays, and a tuning stopped while its trials are queued follows them when run again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from biasbench.study import load_study
from biasbench.study.runner import train_one
from biasbench.study.schema import with_output_dir
from tests.conftest import REPO, tiny_recipe, write_recipe

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if shutil.which("slurmctld") is None:
        pytest.skip("slurm-wlm is not installed here: `make test-slurm` installs it and runs these tests")
    folder = tmp_path_factory.mktemp("slurm-cluster")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield {**os.environ, "SLURM_CONF": conf, "PYTHONPATH": str(REPO)}
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], check=False)


def _study(tmp_path: Path, epochs: int = 8) -> Path:
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": epochs, "batch_size": 16}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", "grid": {"model.variant": ["baseline", "dac"]},
                                    "launcher": {"cpus_per_task": 1, "time": 10}}))
    return path


def _sweep(path: Path, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "biasbench", "sweep", str(path), "--backend", "slurm", "--out",
                             str(out), "--device", "cpu", *extra], cwd=path.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _checkpoint_epoch(out: Path, cell: str) -> int:
    path = out / cell / "seed0" / "checkpoint.pt"
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def _job(out: Path, cell: str) -> str | None:
    try:
        return json.loads((out / "study.json").read_text())["runs"][f"{cell}/seed0"].get("job")
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _starts(out: Path, job: str) -> list[int]:
    """The epochs a job's attempts started from, as its log says (SlurmRun prints them)."""
    text = "".join(p.read_text() for p in (out / "slurm").rglob(f"{job}_*log.out"))
    return [int(e) for e in re.findall(r"starts at epoch (\d+)", text)]


def _histories(out: Path) -> dict:
    return {str(p.parent.relative_to(out)): [{k: v for k, v in r.items() if k != "seconds"}
                                              for r in json.loads(p.read_text())["history"]]
            for p in sorted(out.rglob("results.json"))}


def _local_reference(path: Path, out: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs ran with --cpus 1
    try:
        for cell in load_study(path).cells:
            train_one(with_output_dir(cell, out), 0, 0, "cpu", False)
    finally:
        torch.set_num_threads(threads)
    return _histories(out)


@pytest.mark.parametrize("how", ["scontrol requeue", "preempted by the high partition"])
def test_a_requeued_job_resumes_from_its_checkpoint(tmp_path, slurm_env, how):
    path, out = _study(tmp_path, epochs=60), tmp_path / "out"  # long enough to be stopped mid-run
    sweep = _sweep(path, out, slurm_env)
    cell = "variant=dac"
    _wait_for(lambda: _job(out, cell) and _checkpoint_epoch(out, cell) >= 2)
    job = _job(out, cell)
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    else:  # a job asking for every CPU of the node in the high-priority partition
        cpus = os.cpu_count()
        subprocess.run(["sbatch", "-p", "high", "-c", str(cpus), "-o", str(tmp_path / "hog.out"), "--wrap",
                        "sleep 5"], env=slurm_env, check=True, capture_output=True)
    text, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, text
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"completed"}
    starts = _starts(out, job)
    assert len(starts) >= 2 and starts[0] == 0 and starts[-1] >= 2, starts  # resumed, not started again
    assert _histories(out) == _local_reference(path, tmp_path / "local")


def test_a_stopped_sweep_follows_its_queued_jobs_instead_of_submitting_twice(tmp_path, slurm_env):
    path, out = _study(tmp_path, epochs=20), tmp_path / "out"
    first = _sweep(path, out, slurm_env)
    _wait_for(lambda: _job(out, "variant=baseline") and _job(out, "variant=dac"))
    jobs = {c: _job(out, c) for c in ("variant=baseline", "variant=dac")}
    first.send_signal(signal.SIGINT)
    text, _ = first.communicate(timeout=60)
    assert first.returncode == 130 and "the Slurm jobs keep running" in " ".join(text.split()), text
    second = _sweep(path, out, slurm_env)
    text, _ = second.communicate(timeout=600)
    assert second.returncode == 0 and "following them" in text, text
    assert {c: _job(out, c) for c in jobs} == jobs  # the same jobs, none submitted again
    assert len(list((out / "slurm").rglob("*_submitted.pkl"))) == 2
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"completed"}


def _two_task_study(tmp_path: Path, epochs: int) -> Path:
    # No BatchNorm: gloo has no SyncBatchNorm, so BN statistics would be per rank.
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={"options": {"depth": 2, "width": 32, "bn": False}},
                                                  optim={"l2": 1e-4}, train={"epochs": epochs, "batch_size": 64}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", "grid": {"model.variant": ["baseline"]},
                                    "launcher": {"tasks_per_node": 2, "cpus_per_task": 1, "time": 10}}))
    return path


def _flat(histories: dict) -> dict:
    return {k: [r[m] for r in h for m in ("train_loss", "test_loss", "test_acc")] for k, h in histories.items()}


def test_a_run_on_two_slurm_tasks_equals_one_process(tmp_path, slurm_env):
    """`launcher.tasks_per_node: 2`: one run, two Slurm tasks joined through submitit's
    distributed environment (gloo), rank 0 writing; the numbers of one process on the same
    global batch."""
    path = _two_task_study(tmp_path, epochs=3)
    out = tmp_path / "out"
    sweep = _sweep(path, out, slurm_env)
    text, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, text
    (results,) = out.rglob("results.json")
    doc = json.loads(results.read_text())
    assert doc["status"] == "completed" and doc["environment"]["world_size"] == 2
    job = json.loads((out / "study.json").read_text())["runs"]["variant=baseline/seed0"]["job"]
    logs = sorted((out / "slurm").rglob(f"{job}_*_log.out"))
    assert len(logs) == 2  # two tasks ran the run
    assert "starts at epoch 0 on 2 tasks" in "".join(p.read_text() for p in logs)
    reference, ours = _flat(_local_reference(path, tmp_path / "local")), _flat(_histories(out))
    assert ours.keys() == reference.keys()
    for key, values in reference.items():
        assert ours[key] == pytest.approx(values, rel=1e-5, abs=1e-6)


def test_a_requeued_two_task_run_resumes_from_its_checkpoint(tmp_path, slurm_env):
    path, out = _two_task_study(tmp_path, epochs=40), tmp_path / "out"
    sweep = _sweep(path, out, slurm_env)
    cell = "variant=baseline"
    _wait_for(lambda: _job(out, cell) and _checkpoint_epoch(out, cell) >= 2)
    job = _job(out, cell)
    subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    text, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, text
    starts = _starts(out, job)  # rank 0 says where each attempt started
    assert len(starts) >= 2 and starts[0] == 0 and starts[-1] >= 2, starts
    reference, ours = _flat(_local_reference(path, tmp_path / "local")), _flat(_histories(out))
    for key, values in reference.items():
        assert ours[key] == pytest.approx(values, rel=1e-5, abs=1e-6)


def test_tune_smoke_runs_its_trials_and_replicates_as_job_arrays(tmp_path, slurm_env):
    """studies/tune_smoke.yaml --smoke on the cluster: the trials go in job arrays (each trial
    submitted once, told by the sweep), then the replicates with each arm's best values."""
    path, out = REPO / "studies" / "tune_smoke.yaml", tmp_path / "out"
    study = load_study(path, smoke=True)
    sweep = subprocess.Popen([sys.executable, "-m", "biasbench", "sweep", str(path), "--smoke", "--backend",
                              "slurm", "--cpus", "1", "--out", str(out), "--device", "cpu"], cwd=REPO, env=slurm_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, text
    trials = study.tune.trials
    keys = sorted(f"{c.name}/trial_{n:03d}" for c in study.cells for n in range(trials))
    jobs = json.loads((out / "tune" / "jobs.json").read_text())
    assert sorted(jobs) == keys and {j["status"] for j in jobs.values()} == {"completed"}
    assert len({j["job"] for j in jobs.values()}) == len(keys)  # one job each
    assert len(list((out / "tune" / "slurm").rglob("*_submitted.pkl"))) == len(keys)  # submitted once each
    manifest = json.loads((out / "study.json").read_text())
    for cell in study.cells:
        record = manifest["tune"]["cells"][cell.name]
        assert [t["state"] for t in record["trials"]] == ["complete"] * trials
        best = max(record["trials"], key=lambda t: t["value"])["value"]  # val_acc: higher is better
        assert record["value"] == best
        for _, seed in cell.seeds():  # each replicate trained the arm's best values
            doc = json.loads((out / cell.name / f"seed{seed}" / "results.json").read_text())
            assert doc["status"] == "completed"
            assert doc["recipe"]["optim"]["lr"] == record["params"]["optim.lr"]
    assert {r["status"] for r in manifest["runs"].values()} == {"completed"}
    assert len(re.findall(r"^tune variant=\w+ \d/\d: val_acc", text, flags=re.M)) == len(keys)


def test_a_tune_stopped_while_its_trials_are_queued_follows_them_when_run_again(tmp_path, slurm_env):
    path, out = REPO / "studies" / "tune_smoke.yaml", tmp_path / "out"
    command = [sys.executable, "-m", "biasbench", "sweep", str(path), "--smoke", "--backend", "slurm", "--cpus", "1",
               "--out", str(out), "--device", "cpu"]
    first = subprocess.Popen(command, cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    _wait_for(lambda: (out / "tune" / "jobs.json").exists())  # the first array is submitted
    first.send_signal(signal.SIGINT)
    text, _ = first.communicate(timeout=60)
    assert first.returncode == 130 and "the Slurm jobs keep running" in " ".join(text.split()), text
    submitted = json.loads((out / "tune" / "jobs.json").read_text())
    second = subprocess.run(command, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "still queued or running from an earlier sweep; following them" in second.stdout
    jobs = json.loads((out / "tune" / "jobs.json").read_text())
    assert {k: j["job"] for k, j in jobs.items()} == {k: j["job"] for k, j in submitted.items()}  # none again
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert len(list((out / "tune" / "slurm").rglob("*_submitted.pkl"))) == len(jobs)
    manifest = json.loads((out / "study.json").read_text())
    assert {r["status"] for r in manifest["runs"].values()} == {"completed"}
