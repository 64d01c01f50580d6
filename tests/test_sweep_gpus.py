"""`sweep --backend local --gpus 0,1,2,3|all [--workers-per-gpu K]`: one device per worker,
checked without GPUs through each worker's own environment."""

from __future__ import annotations

from collections import Counter

import pytest

from biasbench.errors import UserError
from biasbench.pool import WorkerPool
from biasbench.study.gpus import gpu_slots, parse_gpus
from tests.conftest import REPO, one_line_error, run_cli
from tests.gpu_tasks import die_on, seen_device


def test_slots_go_round_the_devices_then_again_for_each_extra_worker():
    assert gpu_slots([0, 1, 2], 2) == [{"CUDA_VISIBLE_DEVICES": d} for d in "012012"]
    # under an inherited CUDA_VISIBLE_DEVICES, device numbers are torch's here: translated
    assert gpu_slots([0, 1], 1, inherited="3,5") == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert parse_gpus("all", 4) == [0, 1, 2, 3] and parse_gpus("2, 0", 4) == [2, 0]


@pytest.mark.parametrize("spec, visible, words", [
    ("all", 0, "no CUDA device"), ("0,0", 2, "twice"), ("1;2", 4, "commas"), ("4", 4, "device 4 does not exist"),
])
def test_bad_device_lists_are_refused(spec, visible, words):
    with pytest.raises(UserError, match=words):
        parse_gpus(spec, visible)


def test_each_worker_runs_with_its_own_device_set_before_cuda_starts():
    slots = gpu_slots([0, 1], 2)  # 4 workers: two per GPU
    with WorkerPool(4, threads=1, slots=slots) as pool:
        events = [e for e in pool.run(seen_device, [(i, (i,)) for i in range(12)]) if e.kind == "finished"]
    assert len(events) == 12
    device_of_pid: dict[int, set[str]] = {}
    for e in events:
        x, pid, seen, cuda_started = e.result
        assert pid == e.pid and not cuda_started
        assert seen == slots[e.slot]["CUDA_VISIBLE_DEVICES"]  # what the worker saw is its place's device
        device_of_pid.setdefault(pid, set()).add(seen)
    assert all(len(devices) == 1 for devices in device_of_pid.values())  # a worker never changes device
    per_device = Counter(next(iter(d)) for d in device_of_pid.values())
    assert per_device == {"0": 2, "1": 2}  # two workers on each GPU


def test_a_dead_workers_replacement_takes_its_device():
    slots = gpu_slots([0, 1], 1)
    with WorkerPool(2, threads=1, slots=slots) as pool:
        events = list(pool.run(die_on, [(i, (i, 3)) for i in range(10)]))
    crashed = [e for e in events if e.kind == "crashed"]
    done = [e for e in events if e.kind == "finished"]
    assert len(crashed) == 1 and len(done) == 9
    lost = slots[crashed[0].slot]["CUDA_VISIBLE_DEVICES"]
    replacements = {e.result[1] for e in done if e.result[2] == lost and e.pid != crashed[0].pid}
    assert replacements  # a new process ran on the lost device afterwards
    assert Counter(e.result[2] for e in done).keys() == {"0", "1"}


@pytest.mark.parametrize("args, words", [
    (["--gpus", "0,x"], "--gpus must be"),
    (["--gpus", "7"], "device 7 does not exist"),
    (["--workers-per-gpu", "2"], "add --gpus"),
    (["--gpus", "0", "--jobs", "2"], "drop --jobs"),
    (["--gpus", "0", "--device", "cpu"], "--device is cpu"),
    (["--backend", "slurm", "--gpus", "0,1"], "number of GPUs per job"),
])
def test_sweep_gpu_options_are_refused_in_one_line(args, words, monkeypatch):
    import biasbench.study.gpus as gpus

    monkeypatch.setattr(gpus, "visible_devices", lambda: 2)
    if "slurm" in args:
        import biasbench.study.runner as runner

        monkeypatch.setattr(runner, "check_slurm", lambda: None)
    code, out, err = run_cli(["sweep", str(REPO / "studies" / "dac_sgemm.yaml"), "--smoke", *args])
    one_line_error(code, err, words)


@pytest.mark.slow
def test_a_sweep_on_pinned_workers_records_each_runs_gpu(tmp_path):
    """run_sweep with two device places (trained on the CPU here: no GPU needed to check who ran
    where): every attempt names its worker's device, each worker one device, both used."""
    import json

    import yaml

    from biasbench.study import load_study
    from biasbench.study.runner import run_sweep
    from tests.conftest import tiny_recipe, write_recipe

    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", "grid": {"optim.lr": [0.05, 0.1]}, "replicates": 2}))
    out = tmp_path / "out"
    run_sweep(load_study(path), out, device="cpu", slots=gpu_slots([0, 1], 1))
    runs = json.loads((out / "study.json").read_text())["runs"]
    attempts = [a for r in runs.values() for a in r["attempts"]]
    assert len(attempts) == 4 and {r["status"] for r in runs.values()} == {"completed"}
    devices_of: dict[int, set[str]] = {}
    for a in attempts:
        devices_of.setdefault(a["worker"], set()).add(a["gpu"])
    assert all(len(d) == 1 for d in devices_of.values()) and set().union(*devices_of.values()) == {"0", "1"}
