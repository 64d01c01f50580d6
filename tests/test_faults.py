"""Faults a hostile user or a full disk brings: exceptions that cross process boundaries, full
and read-only file systems, damaged study folders, path traversal in names, hostile data files."""

from __future__ import annotations

import importlib
import os
import pickle
import pkgutil
from pathlib import Path

import pytest

from biasbench.errors import UserError
from biasbench.fsutil import WriteError
from biasbench.pool import WorkerPool
from biasbench.study.manifest import CorruptManifest
from tests import pool_tasks

# One example per UserError subclass: the arguments its constructor takes.
USER_ERROR_EXAMPLES = {
    UserError: ("recipe key `optim.lr` must be positive, got -1",),
    WriteError: (Path("/full/results.json"), "No space left on device (ENOSPC)", "choose another --out"),
    CorruptManifest: (Path("runs/studies/s/study.json"), "is not valid JSON"),
}


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def test_every_user_error_survives_pickling():
    import biasbench

    for info in pkgutil.walk_packages(biasbench.__path__, "biasbench."):  # every subclass defined
        if not info.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(info.name)
    classes = {UserError, *_subclasses(UserError)}
    missing = [c.__qualname__ for c in classes if c not in USER_ERROR_EXAMPLES]
    assert not missing, f"add an example for {missing}"
    for cls, args in USER_ERROR_EXAMPLES.items():
        error = cls(*args)
        error.note = "kept"  # attributes set after construction travel too
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error) and copy.args == error.args
        assert copy.__dict__ == error.__dict__


def test_full_disk_in_a_sweep_worker_reaches_the_parent_whole():
    with WorkerPool(1) as pool:
        events = [e for e in pool.run(pool_tasks.full_disk, [("run", ("/full/results.json",))])
                  if e.kind != "tick"]
    failed = next(e for e in events if e.kind == "failed")
    assert isinstance(failed.exception, WriteError), failed
    assert failed.exception.path == Path("/full/results.json")
    assert "ENOSPC" in failed.exception.reason and "free some space" in str(failed.exception)


def test_other_exceptions_a_worker_sends_survive_pickling():
    import signal

    import yaml

    from biasbench.recipe import DuplicateKeyError
    from biasbench.stopping import StoppedBeforeTraining, StopRequested
    from biasbench.trainer import Interrupted
    from biasbench.yaml_bound import YamlTooLarge

    mark = yaml.Mark("f", 0, 3, 4, None, None)
    for error in (StopRequested(signal.SIGTERM), StoppedBeforeTraining(signal.SIGUSR1),
                  Interrupted(Path("runs/a"), signal.SIGINT, 3, {"status": "interrupted"}),
                  DuplicateKeyError("lr", mark, mark), YamlTooLarge("too large", mark)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert repr(vars(copy)).split(" at 0x")[0] == repr(vars(error)).split(" at 0x")[0]
        assert set(vars(copy)) == set(vars(error))


# ---------------------------------------------------------------------------------------------
# Real full and read-only file systems (root: mount).
# ---------------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs or a read-only bind mount")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount not permitted here: {proc.stderr.strip().splitlines()[-1:]}")


def _umount(where: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled until writing fails with ENOSPC."""
    where = tmp_path / "full"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where))
    try:
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        yield where
    finally:
        _umount(where)


def _tiny_study(tmp_path: Path, cells: int = 2, epochs: int = 1) -> Path:
    from tests.conftest import tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, train={"epochs": epochs}))
    study = tmp_path / "study.yaml"
    lrs = ", ".join(str(0.05 * (i + 1)) for i in range(cells))
    study.write_text(f"recipe: {recipe}\ngrid: {{optim.lr: [{lrs}]}}\nreplicates: 1\n")
    return study


@pytest.mark.root
def test_train_on_a_full_disk_is_one_line(tmp_path, full_disk):
    from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    code, out, err = run_cli(["train", str(recipe), "--out", str(full_disk / "runs")])
    one_line_error(code, err, ".lock", "ENOSPC", "free some space")
    assert "epoch" not in out


@pytest.mark.root
def test_new_sweep_folder_on_a_full_disk_is_one_line(tmp_path, full_disk):
    from tests.conftest import one_line_error, run_cli

    code, out, err = run_cli(["sweep", str(_tiny_study(tmp_path)), "--out", str(full_disk / "study")])
    one_line_error(code, err, ".study.lock", "ENOSPC", "free some space")
    assert not (full_disk / "study" / ".study.lock").exists()  # no empty lock left behind


@pytest.mark.root
def test_read_only_file_system_under_a_study_is_one_line(tmp_path):
    from biasbench.study.manifest import Manifest
    from biasbench.study.schema import load_study
    from tests.conftest import one_line_error, run_cli

    study, folder = _tiny_study(tmp_path, cells=1), tmp_path / "rw"
    Manifest.for_study(load_study(study), folder / "s", "local").save(force=True)  # as a stopped sweep leaves it
    manifest = (folder / "s" / "study.json").read_bytes()
    view = tmp_path / "ro"
    view.mkdir()
    _mount("--bind", str(folder), str(view))
    try:
        _mount("-o", "remount,bind,ro", str(view))
        code, out, err = run_cli(["sweep", str(study), "--out", str(view / "s")])
    finally:
        _umount(view)
    one_line_error(code, err, ".study.lock", "EROFS", "--out")
    assert (folder / "s" / "study.json").read_bytes() == manifest


# ---------------------------------------------------------------------------------------------
# Damaged study folders: a corrupt manifest, a truncated checkpoint.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished study of two one-replicate cells (one epoch each, checkpoints kept)."""
    from tests.conftest import run_cli

    where = tmp_path_factory.mktemp("swept")
    study = _tiny_study(where, cells=2)
    code, out, err = run_cli(["sweep", str(study), "--out", str(where / "s"), "--device", "cpu"])
    assert code == 0, err
    return study, where / "s"


def _copy_study(swept, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    study, folder = swept
    shutil.copytree(folder, tmp_path / "s")
    return study, tmp_path / "s"


def _results(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/seed*/results.json"))}


@pytest.mark.parametrize("damage", ["", "{\"kind\": \"biasbench-stu", "{}"])
def test_a_corrupt_manifest_says_how_to_rebuild_it_and_the_advice_works(swept, tmp_path, damage):
    import json

    from tests.conftest import one_line_error, run_cli

    study, folder = _copy_study(swept, tmp_path)
    before = _results(folder)
    (folder / "study.json").write_text(damage)
    code, out, err = run_cli(["compare", str(folder)])
    one_line_error(code, err, "study.json", "corrupt", f"biasbench sweep STUDY.yaml --out {folder}")
    # the advice: sweep the study into the folder again
    code, out, err = run_cli(["sweep", str(study), "--out", str(folder), "--device", "cpu"])
    assert code == 0, err
    said = " ".join(out.split())  # unwrapped
    assert "rebuilt from the run folders" in said and "nothing was left to train" in said
    assert _results(folder) == before  # nothing trained again
    assert (folder / "study.json.corrupt").read_text() == damage
    runs = json.loads((folder / "study.json").read_text())["runs"]
    assert len(runs) == 2 and {r["status"] for r in runs.values()} == {"completed"}
    code, out, err = run_cli(["compare", str(folder)])
    assert code == 0 and "lr=0.05" in out and "lr=0.1" in out, err  # both runs read back


def test_a_truncated_checkpoint_errors_its_run_only_and_says_how_to_restart_it(swept, tmp_path, monkeypatch):
    import json
    import shutil

    from tests.conftest import run_cli

    study, folder = _copy_study(swept, tmp_path)
    broken, other = folder / "lr=0.05" / "seed0", folder / "lr=0.1" / "seed0"
    doc = json.loads((broken / "results.json").read_text())
    doc.update(status="interrupted", interrupted_by="SIGKILL")  # killed while writing its checkpoint
    (broken / "results.json").write_text(json.dumps(doc))
    ckpt = broken / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    shutil.rmtree(other)  # not trained yet: the sweep must still train it
    monkeypatch.setenv("COLUMNS", "400")  # long paths on one line
    code, out, err = run_cli(["sweep", str(study), "--out", str(folder), "--device", "cpu"])
    said = " ".join(out.split())
    assert code == 1, err
    assert f"error in lr=0.05/seed0: `{ckpt}` is not a readable checkpoint" in said, said
    assert f"remove its folder `{broken}`" in said
    assert json.loads((other / "results.json").read_text())["status"] == "completed"
    runs = json.loads((folder / "study.json").read_text())["runs"]
    assert runs["lr=0.05/seed0"]["status"] == "error" and str(ckpt) in runs["lr=0.05/seed0"]["error"]
    assert (broken / "error.txt").read_text().startswith(f"`{ckpt}` is not a readable checkpoint")
    # the advice: remove the run's folder, sweep again: only that run is trained
    kept = (other / "results.json").read_bytes()
    shutil.rmtree(broken)
    code, out, err = run_cli(["sweep", str(study), "--out", str(folder), "--device", "cpu"])
    assert code == 0, err
    assert json.loads((broken / "results.json").read_text())["status"] == "completed"
    assert (other / "results.json").read_bytes() == kept


# ---------------------------------------------------------------------------------------------
# Study reports of studies where nothing, or something odd, came back.
# ---------------------------------------------------------------------------------------------

ANALYSED = ("failure: {metric: val_acc, below: 0.01}\n"
            "analysis:\n  table: {rows: [optim.lr], columns: [], metric: test_acc, estimator: final}\n"
            "  failures: {by: optim.lr}\n")


def _analysed_copy(swept, tmp_path: Path) -> Path:
    """The swept runs under a study with a failure rule, a table and failure counts."""
    from biasbench.study.manifest import Manifest
    from biasbench.study.schema import load_study

    study, folder = _copy_study(swept, tmp_path)
    analysed = study.with_name("analysed.yaml")
    analysed.write_text(study.read_text() + ANALYSED)
    (folder / "study.json").unlink()
    Manifest.for_study(load_study(analysed), folder, "local").save(force=True)
    return folder


def _diverge(results: Path) -> None:
    """Rewrite a run as the trainer writes one that diverged in epoch 1 (NaN loss: no evaluation,
    no best epoch, no checkpoint, no predictions)."""
    import json

    doc = json.loads(results.read_text())
    row = {k: doc["history"][0][k] for k in ("epoch", "lr", "seconds", "train_acc")} | {"train_loss": float("nan")}
    doc.update(status="diverged", history=[row], final=row, best={}, checkpoint_epoch=None, predictions=None)
    results.write_text(json.dumps(doc))


def test_report_of_a_study_where_every_run_diverged_counts_them(swept, tmp_path):
    import json

    from tests.conftest import run_cli

    folder = _analysed_copy(swept, tmp_path)
    for results in folder.glob("*/seed0/results.json"):
        _diverge(results)
    code, out, err = run_cli(["report", str(folder), "--out", str(tmp_path / "r")])
    assert code == 0, err
    text = (tmp_path / "r" / "report.md").read_text()
    assert "2 runs in 2 cells: 2 diverged" in text and "**No usable run**" in text
    table = text.split("## Table")[1].split("##")[0]
    assert "Empty: no run completed without failing" in table
    numbers = json.loads((tmp_path / "r" / "study_report.json").read_text())
    assert numbers["table"] is None
    assert [(row["runs"], row["diverged"]) for row in numbers["failures"]] == [(1, 1), (1, 1)]


def test_a_schema_invalid_results_file_in_a_study_is_blamed_on_the_file(swept, tmp_path):
    import json

    from tests.conftest import one_line_error, run_cli

    folder = _analysed_copy(swept, tmp_path)
    results = folder / "lr=0.1" / "seed0" / "results.json"
    doc = json.loads(results.read_text())
    doc["final"] = {}  # a completed run with no final numbers
    results.write_text(json.dumps(doc))
    code, out, err = run_cli(["report", str(folder), "--out", str(tmp_path / "r")])
    one_line_error(code, err, str(results), "`final` is empty")
    assert "failure.metric" not in err


# ---------------------------------------------------------------------------------------------
# output.name cannot climb out of --out.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", ".", "a\\b"])
def test_output_name_that_leaves_the_output_folder_is_refused(tmp_path, monkeypatch, name):
    from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe

    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    for command in (["recipe", "show", str(recipe)], ["train", str(recipe), "--out", "runs"]):
        code, out, err = run_cli([*command, "--set", f"output.name={name}"])
        one_line_error(code, err, "output.name", "one folder name", repr(name))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er", "tiny.yaml"]  # nothing written


def test_output_name_of_one_folder_is_used(tmp_path):
    from tests.conftest import run_cli, tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path))
    code, out, err = run_cli(["recipe", "show", str(recipe), "--set", "output.name=a..b c", "--json"])
    assert code == 0, err
    assert '"name": "a..b c"' in out


# ---------------------------------------------------------------------------------------------
# Data files never run code.
# ---------------------------------------------------------------------------------------------


class _Payload:
    """Unpickled, calls os.system to create `marker` (what a crafted batches.meta does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_crafted_cifar_pickle_does_not_run_code(tmp_path, protocol):
    from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe
    from tests.test_data_formats import write_cifar10

    write_cifar10(tmp_path / "c")
    marker = tmp_path / "ran"
    meta = tmp_path / "c" / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": _Payload(marker)}, protocol=protocol))
    pickle.loads(meta.read_bytes())  # the file does run code when unpickled plainly
    assert marker.exists()
    marker.unlink()
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data={"name": "cifar10",
                                                                           "root": str(tmp_path / "c")}))
    code, out, err = run_cli(["train", str(recipe), "--out", str(tmp_path / "runs")])
    one_line_error(code, err, str(meta), "`posix.system`", "download the data set again")
    assert not marker.exists()


def test_the_official_cifar_formats_still_load(tmp_path):
    # Python 3 pickles of protocols 2 and 5 (the tests' writers use 2), arrays from numpy 2;
    # the official files are Python 2 pickles naming numpy.core.multiarray._reconstruct
    import numpy as np

    from biasbench.data.torchvision_sets import _unpickle

    entry = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "labels": [3, 4],
             "batch_label": "training batch 1 of 5", "filenames": ["a.png", "b.png"]}
    for protocol in (2, 5):
        path = tmp_path / f"batch{protocol}"
        path.write_bytes(pickle.dumps(entry, protocol=protocol))
        back = _unpickle(path)
        assert np.array_equal(back["data"], entry["data"]) and back["labels"] == [3, 4]
    py2 = tmp_path / "py2"  # as Python 2's cPickle wrote it: module numpy.core.multiarray, str data
    py2.write_bytes(pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert np.array_equal(_unpickle(py2)["data"], entry["data"])
