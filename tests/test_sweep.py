"""`biasbench sweep` on the local backend: every run trained once, a manifest that says so, and a
stopped or killed sweep finished by running it again, to the numbers of an uninterrupted one."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from biasbench.study import load_study
from biasbench.study import runner as study_runner
from biasbench.study.manifest import StudyLock
from biasbench.study.progress import StudyProgress
from biasbench.study.schema import with_output_dir
from tests.conftest import REPO, assert_fits, one_line_error, run_cli, tiny_recipe, write_recipe


def tiny_study(tmp_path: Path, epochs: int = 1, widths=(8, 16), replicates: int = 2, **extra) -> Path:
    """2 variants x len(widths) x replicates runs of a small MLP on digits."""
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": epochs, "batch_size": 32}))
    doc = {"recipe": "r.yaml", "grid": {"model.variant": ["baseline", "dac"], "model.options.width": list(widths)},
           "replicates": replicates, **extra}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


def histories(out: Path) -> dict[str, list[dict]]:
    """Every run's per-epoch numbers, without the wall-clock seconds."""
    return {str(p.parent.relative_to(out)): [{k: v for k, v in row.items() if k != "seconds"}
                                              for row in json.loads(p.read_text())["history"]]
            for p in sorted(out.rglob("results.json"))}


@pytest.fixture
def one_thread_workers(monkeypatch):
    # Workers with the test process's thread count: CPU results are then bit-identical.
    monkeypatch.setattr(study_runner, "worker_threads", lambda jobs: 1)


def test_sweep_trains_every_run_once_and_a_second_sweep_trains_nothing(tmp_path, one_thread_workers):
    path, out = tiny_study(tmp_path, widths=(8,)), tmp_path / "out"
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--jobs", "2", "--device", "cpu"])
    assert code == 0, err
    doc = manifest(out)
    assert len(doc["cells"]) == 2 and len(doc["runs"]) == 4
    assert {r["status"] for r in doc["runs"].values()} == {"completed"}
    assert all(len(r["attempts"]) == 1 and r["attempts"][0]["start_epoch"] == 0 for r in doc["runs"].values())
    for key in doc["runs"]:
        assert json.loads((out / key / "results.json").read_text())["status"] == "completed"
    # Not a terminal: one plain line per finished run, and the outcome.
    assert len(re.findall(r"^\[\d/4\] completed ", text, re.M)) == 4 and "4 runs: 4 completed" in text
    before = {p: p.read_bytes() for p in out.rglob("results.json")}
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--jobs", "2", "--device", "cpu"])
    assert code == 0, err
    assert {p: p.read_bytes() for p in out.rglob("results.json")} == before  # nothing trained again
    assert "4 of them were finished before this sweep and not trained again; nothing was left to train" in \
        " ".join(text.split())
    assert all(len(r["attempts"]) == 1 for r in manifest(out)["runs"].values())
    # compare reads the study folder like any folder of runs
    code, text, err = run_cli(["compare", str(out), "--json", str(tmp_path / "c.json")])
    assert code == 0, err


@pytest.mark.parametrize("left", ["open", "unrecorded"])
def test_a_run_that_finished_just_before_a_kill_is_recorded_from_its_results_not_retrained(tmp_path, left,
                                                                                           one_thread_workers):
    # SIGKILL between two saves of the manifest: a run wrote its results, the manifest still
    # shows it running with its attempt open, or (started and finished in between) shows no
    # attempt at all. The next sweep must not train it again and must record one completed
    # attempt from the results (the acceptance test counts one completed attempt per run).
    path, out = tiny_study(tmp_path, widths=(8,), replicates=1), tmp_path / "out"
    assert run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])[0] == 0
    doc = manifest(out)
    key = sorted(doc["runs"])[0]
    run = doc["runs"][key]
    run["status"] = "running" if left == "open" else "pending"
    if left == "open":
        for field in ("ended", "status", "epochs"):
            run["attempts"][-1].pop(field)
    else:
        run["attempts"] = []
    (out / "study.json").write_text(json.dumps(doc))
    before = (out / key / "results.json").read_bytes()
    code, _, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    assert (out / key / "results.json").read_bytes() == before  # not trained again
    run = manifest(out)["runs"][key]
    assert run["status"] == "completed" and len(run["attempts"]) == 1
    attempt = run["attempts"][0]
    assert (attempt["status"], attempt["epochs"], attempt["recorded_from"]) == ("completed", 1, "results.json")
    assert attempt["ended"] == json.loads(before)["created"]
    assert ("start_epoch" in attempt) == (left == "open")  # unknown when the start was never recorded
    # a third sweep changes nothing more
    assert run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])[0] == 0
    assert manifest(out)["runs"][key]["attempts"] == run["attempts"]


def _interrupt_when(predicate, timeout: float = 120.0) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow  # 15.6 s of CPU with its workers, 44.4 s at load 8.3 (2026-12-05)
def test_ctrl_c_then_the_same_sweep_resumes_exactly(tmp_path, one_thread_workers):
    path = tiny_study(tmp_path, epochs=3, widths=(32,))
    out = tmp_path / "out"
    study = load_study(path)
    finished = lambda: [p for p in out.rglob("results.json")]  # noqa: E731
    thread = _interrupt_when(lambda: finished() and any(p.with_name("results.json") not in finished()
                                                        for p in out.rglob("checkpoint.pt")))
    with pytest.raises(KeyboardInterrupt):
        study_runner.run_sweep(study, out, jobs=1, device="cpu")
    thread.join()
    done = {p: p.read_bytes() for p in out.rglob("results.json") if json.loads(p.read_text())["status"] == "completed"}
    ckpts = {str(p.parent.relative_to(out)): torch.load(p, weights_only=True)["epoch"]
             for p in out.rglob("checkpoint.pt") if p.with_name("results.json") not in done}
    statuses = {k: r["status"] for k, r in manifest(out)["runs"].items()}
    assert 0 < len(done) < 4 and ckpts
    assert all(statuses[k] == "interrupted" for k in ckpts)

    sweep = study_runner.run_sweep(study, out, jobs=1, device="cpu")
    runs = sweep.manifest.runs
    assert {r["status"] for r in runs.values()} == {"completed"}
    assert all(p.read_bytes() == b for p, b in done.items())  # finished runs were not trained again
    for key, epoch in ckpts.items():  # interrupted runs went on from their checkpoint
        assert runs[key]["attempts"][-1]["start_epoch"] == epoch > 0

    reference = tmp_path / "reference"
    for cell in study.cells:
        for replicate, seed in cell.seeds():
            study_runner.train_one(with_output_dir(cell, reference), seed, replicate, "cpu", False)
    assert histories(out) == histories(reference)


def test_one_sweep_per_folder_and_a_folder_of_another_study_is_refused(tmp_path):
    path, out = tiny_study(tmp_path, widths=(8,), replicates=1), tmp_path / "out"
    with StudyLock(out):
        one_line_error(*run_cli(["sweep", str(path), "--out", str(out)])[::2], "another sweep", str(os.getpid()))
    assert not (out / "study.json").exists()
    other = {"kind": "biasbench-study", "schema_version": 1, "created": "x", "study": {"path": "other.yaml"},
             "cells": [{"name": "lr=1", "replicates": 1}], "runs": {}}
    (out / "study.json").write_text(json.dumps(other))
    one_line_error(*run_cli(["sweep", str(path), "--out", str(out)])[::2], "other cells", "other.yaml")
    # a corrupt manifest is rebuilt from the run folders (tests/test_faults.py), but not over
    # another study's runs
    (out / "lr=1" / "seed0").mkdir(parents=True)
    (out / "lr=1" / "seed0" / "results.json").write_text("{}")
    (out / "study.json").write_text("{not json")
    one_line_error(*run_cli(["sweep", str(path), "--out", str(out)])[::2], "not valid JSON", "`lr=1`",
                   "another study's folder")
    assert (out / "study.json").read_text() == "{not json"


def test_bad_input_in_a_run_stops_the_sweep_with_one_line(tmp_path):
    # a data root that does not exist: refused before the sweep starts, nothing written
    path = tiny_study(tmp_path, widths=(8,), replicates=1, set={"data.name": "cifar10", "data.root": "nowhere"})
    out = tmp_path / "out"
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    one_line_error(code, err, "cell `", "data.root `nowhere` does not exist")
    assert not out.exists()
    # a root that exists but lacks the files: found by a run, which stops the sweep; the error
    # file beside the run holds the line, not a traceback
    (tmp_path / "empty").mkdir()
    path = tiny_study(tmp_path, widths=(8,), replicates=1, set={"data.name": "cifar10",
                                                                "data.root": str(tmp_path / "empty")})
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    one_line_error(code, err, "lacks")
    runs = manifest(out)["runs"]
    failed = [k for k, r in runs.items() if r["status"] == "error" and "lacks" in r["error"]]
    assert failed and "Traceback" not in (out / failed[0] / "error.txt").read_text()


def test_progress_on_a_terminal_fits_80_columns():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)

    class Task:
        key, cell, seed = "depth=16,shape=pyramidal,arm=dac,units=177/seed4", "depth=16,shape=pyramidal,arm=dac", 4

    with StudyProgress(console, "dac_sgemm_with_a_long_name", 720, 100, 3) as progress:
        progress.started(Task)
        progress.finished(Task, "diverged", None)
        progress.started(Task)
        progress.finished(Task, "error", None, error="RuntimeError: " + "x" * 200)
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in re.split(r"[\r\n]", buf.getvalue())]
    assert max(len(line) for line in lines) <= 80
    assert any("done" in line and "running" in line and "failed" in line for line in lines)


def test_plain_progress_lines_fit_80_columns_without_breaking_a_cell_name():
    class Task:  # the SGEMM smoke study's longest line: 81 characters unwrapped
        cell, seed = "depth=2,shape=rectangular,arm=base,units=23", 0
        key = f"{cell}/seed{seed}"

    def lines(width):
        buf = io.StringIO()
        with StudyProgress(Console(file=buf, width=width, force_terminal=False), "dac_sgemm_smoke", 40, 2) as progress:
            progress.started(Task)
            progress.finished(Task, "completed", None)
            progress.started(Task)
            progress.finished(Task, "error", None, error="RuntimeError: a long message " + "word " * 30)
        return buf.getvalue()

    assert_fits(lines(80), wide=lines(400))
    assert lines(80).splitlines()[0].startswith("[ 3/40] completed")  # grep still finds the status


@pytest.mark.slow
def test_sigkill_part_way_then_the_same_command_finishes_the_sgemm_smoke_study(tmp_path):
    """The acceptance test: the SGEMM study's smoke form (40 runs), --jobs 2, the sweep process
    SIGKILLed part-way and run again: every run completed, none trained twice, and the numbers
    of an uninterrupted sweep."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "biasbench", "sweep", str(REPO / "studies/dac_sgemm.yaml"), "--smoke",
               "--jobs", "2", "--device", "cpu", "--out"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen([*command, str(killed)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(list(killed.rglob("results.json"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
               .stdout.split()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30  # the workers end with their parent
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    done = {p: p.read_bytes() for p in killed.rglob("results.json") if b'"status": "completed"' in p.read_bytes()}
    ckpts = {str(p.parent.relative_to(killed)): torch.load(p, weights_only=True)["epoch"]
             for p in killed.rglob("checkpoint.pt") if p.with_name("results.json") not in done}
    assert 10 <= len(done) < 40
    done_keys = {str(p.parent.relative_to(killed)) for p in done}
    subprocess.run([*command, str(killed)], cwd=tmp_path, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*command, str(whole)], cwd=tmp_path, env=env, check=True, stdout=subprocess.DEVNULL)
    runs = manifest(killed)["runs"]
    assert len(runs) == 40 and {r["status"] for r in runs.values()} == {"completed"}
    assert all(p.read_bytes() == b for p, b in done.items())  # finished before the kill: not trained again
    for key, run in runs.items():  # one attempt completed each; the unfinished went on from their checkpoint
        assert [a.get("status") for a in run["attempts"]].count("completed") == 1
        if key not in done_keys:  # (one that ended between two saves of the manifest has no start_epoch)
            assert run["attempts"][-1]["start_epoch"] == ckpts.get(key, 0)
    assert histories(killed) == histories(whole)


@pytest.mark.slow  # 13.9 s of CPU with its workers, 30.7 s at load 7.6 (2026-12-05)
def test_more_replicates_of_a_finished_study_train_only_the_new_seeds(tmp_path, one_thread_workers):
    # Growing `replicates` is growing the study, as a grown grid is: the finished seeds stay,
    # only the new ones train (issue 25, item 16: it was refused as "other cells or replicates").
    out = tmp_path / "out"
    path = tiny_study(tmp_path, widths=(8,), replicates=1)
    assert run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("results.json")}
    assert len(before) == 2
    path = tiny_study(tmp_path, widths=(8,), replicates=3)
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    assert all(p.read_bytes() == b for p, b in before.items())  # not trained again
    runs = manifest(out)["runs"]
    assert sorted(runs) == [f"variant={v},width=8/seed{s}" for v in ("baseline", "dac") for s in (0, 1, 2)]
    assert {r["status"] for r in runs.values()} == {"completed"}
    assert all(len(r["attempts"]) == 1 for r in runs.values())
    assert len(re.findall(r"^\[\d/6\] completed ", text, re.M)) == 4  # the 4 new seeds, no others
    assert "2 of them were finished before this sweep" in " ".join(text.split())
    # fewer replicates would leave runs the report no longer reads: refused in one line
    code, text, err = run_cli(["sweep", str(tiny_study(tmp_path, widths=(8,), replicates=2)), "--out", str(out),
                               "--device", "cpu"])
    one_line_error(code, err, "3 replicates there, 2 here: replicates can grow, not shrink")


def test_a_grown_grid_keeps_its_folder_and_a_shrunk_one_is_refused(tmp_path):
    from biasbench.errors import UserError
    from biasbench.study.manifest import Manifest

    out = tmp_path / "out"
    small = load_study(tiny_study(tmp_path, widths=(8,)))
    manifest = Manifest.for_study(small, out, "local")
    manifest.update("variant=baseline,width=8/seed0", status="completed")
    manifest.save(force=True)
    grown = Manifest.for_study(load_study(tiny_study(tmp_path, widths=(8, 16))), out, "local")
    assert len(grown.runs) == 8 and grown.runs["variant=baseline,width=8/seed0"]["status"] == "completed"
    grown.save(force=True)
    with pytest.raises(UserError, match="other cells or replicates"):
        Manifest.for_study(load_study(tiny_study(tmp_path, widths=(16,))), out, "local")
