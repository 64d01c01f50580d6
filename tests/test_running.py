"""Concurrent biasbench runs that oversubscribe the cores: one warning line (issue 22).

Real processes register through the per-user registry file (biasbench.running); the core count
is pinned by monkeypatching so the outcome does not depend on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from biasbench import running
from tests.conftest import REPO, one_line_error, run_cli, tiny_recipe, write_recipe

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from biasbench.running import registered
    with registered(int(sys.argv[1]), "train other.yaml", Path(sys.argv[2])):
        print("registered", flush=True)
        sys.stdin.readline()  # hold the registration until the test closes stdin
""")


@pytest.fixture
def registry(tmp_path):
    return tmp_path / "reg" / "running.json"


def start_holder(threads: int, path) -> subprocess.Popen:
    """Another process that registers `threads` threads and keeps running."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(threads), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)  # this checkout's biasbench
    assert proc.stdout.readline().strip() == "registered"
    return proc


def finish(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_two_processes_over_the_cores_warn_once(registry, monkeypatch):
    monkeypatch.setattr(running, "usable_cores", lambda: 2)
    other = start_holder(2, registry)
    try:
        with running.registered(2, "train mine.yaml", registry) as line:
            assert line is not None and "\n" not in line
            assert line.startswith("warning: 4 threads now share 2 cores")
            assert f"PID {other.pid}: 2 threads, train other.yaml" in line
            assert "sweep" in line and "--jobs" in line and "--threads" in line
            assert set(json.loads(registry.read_text())) == {str(other.pid), str(os.getpid())}
    finally:
        finish(other)
    assert json.loads(registry.read_text()) == {}  # each took its entry away on the way out


def test_runs_that_fit_the_cores_say_nothing(registry, monkeypatch):
    monkeypatch.setattr(running, "usable_cores", lambda: 4)
    other = start_holder(2, registry)
    try:
        with running.registered(2, "train mine.yaml", registry) as line:
            assert line is None
        with running.registered(3, "train mine.yaml", registry) as line:  # 5 > 4
            assert line is not None and "5 threads now share 4 cores" in line
    finally:
        finish(other)


def test_a_killed_run_is_dropped_from_the_registry(registry, monkeypatch):
    monkeypatch.setattr(running, "usable_cores", lambda: 2)
    other = start_holder(2, registry)
    other.send_signal(signal.SIGKILL)  # no chance to deregister
    other.wait(timeout=60)
    assert str(other.pid) in json.loads(registry.read_text())
    with running.registered(2, "train mine.yaml", registry) as line:
        assert line is None
        assert set(json.loads(registry.read_text())) == {str(os.getpid())}


def test_a_damaged_registry_counts_as_empty(registry, monkeypatch):
    monkeypatch.setattr(running, "usable_cores", lambda: 1)
    registry.parent.mkdir()
    registry.write_text('{"12')  # a writer killed mid-write
    with running.registered(1, "train mine.yaml", registry) as line:
        assert line is None
    assert json.loads(registry.read_text()) == {}


def test_train_prints_the_warning_on_stderr(tmp_path, monkeypatch):
    """`biasbench train --threads 1` beside another run holding every core: one warning on
    stderr, wrapped at 80 columns (the registry is the one conftest points XDG_RUNTIME_DIR at)."""
    monkeypatch.setattr(running, "usable_cores", lambda: 2)
    other = start_holder(2, running.registry_path())
    try:
        recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
        code, out, err = run_cli(["train", str(recipe), "--device", "cpu", "--threads", "1", "-q"])
    finally:
        finish(other)
    assert code == 0, err
    assert err.count("warning:") == 1 and max(map(len, err.splitlines())) <= 80, err
    said = " ".join(err.split())
    assert "warning: 3 threads now share 2 cores" in said and f"PID {other.pid}: 2 threads" in said


def test_a_refused_train_prints_its_error_and_no_warning(tmp_path, monkeypatch):
    """A second `train` into a run folder in use is refused before it trains: its stderr is the
    one error line, even where the two runs' threads exceed the cores (make test on one core
    printed the warning first)."""
    from biasbench.fsutil import hold_lock

    monkeypatch.setattr(running, "usable_cores", lambda: 1)
    other = start_holder(2, running.registry_path())
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    run_dir = tmp_path / "runs" / "r" / "seed0"
    run_dir.mkdir(parents=True)
    try:
        with hold_lock(run_dir / ".lock", "the run folder"):
            code, _, err = run_cli(["train", str(recipe), "--device", "cpu", "--threads", "1"])
    finally:
        finish(other)
    one_line_error(code, err, "in use")
