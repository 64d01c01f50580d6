"""The worker pool under the local backend: long-lived workers with their own thread count, one
lost task (not a lost pool) when a worker dies, and workers that end with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from biasbench.pool import WorkerPool
from tests import pool_tasks
from tests.conftest import REPO


def _events(pool, fn, tasks):
    return [e for e in pool.run(fn, tasks) if e.kind != "tick"]


def test_workers_are_reused_and_run_with_their_thread_count():
    with WorkerPool(2, threads=1) as pool:
        events = _events(pool, pool_tasks.whoami, [(i, (i,)) for i in range(6)])
    finished = [e.result for e in events if e.kind == "finished"]
    assert sorted(x for x, _, _ in finished) == list(range(6))
    assert len({pid for _, pid, _ in finished}) <= 2  # six tasks, two interpreters
    assert {threads for _, _, threads in finished} == {1}
    started = {e.key for e in events if e.kind == "started"}
    assert started == set(range(6))


def test_a_failing_task_is_reported_and_the_others_run():
    with WorkerPool(1) as pool:
        events = _events(pool, pool_tasks.fail, [("bad", (3,))])
        events += _events(pool, pool_tasks.whoami, [("good", (4,))])
    failed = next(e for e in events if e.kind == "failed")
    assert failed.key == "bad" and failed.error == "ValueError: task 3 is bad"
    assert isinstance(failed.exception, ValueError) and "Traceback" in failed.traceback
    assert any(e.kind == "finished" and e.key == "good" for e in events)


def test_a_dead_worker_loses_its_task_not_the_pool():
    with WorkerPool(1) as pool:
        events = _events(pool, pool_tasks.die, [("dies", (7,))])
        events += _events(pool, pool_tasks.whoami, [("next", (1,))])
    crashed = next(e for e in events if e.kind == "crashed")
    assert crashed.key == "dies" and "exit code 7" in crashed.error
    assert any(e.kind == "finished" and e.key == "next" for e in events)


def _start_parent(n: int) -> tuple[subprocess.Popen, int, list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.pool_tasks", str(n)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline().split()
    assert line and line[0] == "pids", line
    return proc, int(line[1]), [int(p) for p in line[2:]]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_end_with_a_sigkilled_parent():
    proc, parent, workers = _start_parent(2)
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    os.kill(parent, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


# Slurm signals the batch shell (`--signal=B:USR1`) or every process of the job (time limit,
# scancel, `--signal=USR1`): the sweep alone, or the sweep and its workers at once.
@pytest.mark.parametrize("sig, to_workers", [(signal.SIGTERM, False), (signal.SIGUSR1, False),
                                             (signal.SIGTERM, True), (signal.SIGUSR1, True)])
def test_sigterm_or_sigusr1_stops_the_pool_after_busy_workers_report(sig, to_workers):
    proc, parent, workers = _start_parent(2)
    for pid in [parent, *(workers if to_workers else [])]:
        os.kill(pid, sig)
    out, err = proc.communicate(timeout=60)
    lines = out.splitlines()
    assert proc.returncode == 130 and lines[-1] == "stopped", (out, err)
    assert "Traceback" not in err, err  # was: "OSError: Signal 15 ignored due to race condition"
    # Both busy tasks got KeyboardInterrupt (the trainer's Ctrl-C path) and were reported before
    # the stop: inside the task ("finished ... interrupted") or as it began ("failed ...").
    reported = {line.split()[1]: line for line in lines if line.startswith(("finished", "failed"))}
    assert set(reported) == {"0", "1"}
    assert all(line.endswith(" interrupted") or "KeyboardInterrupt" in line for line in reported.values())
    assert not any(_alive(p) for p in workers)
