"""Faults a hostile user or a full disk brings: exceptions that cross process boundaries, full
and read-only file systems, damaged study folders, path traversal in names, hostile data files."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
from pathlib import Path

import pytest

from biasbench.errors import UserError
from biasbench.fsutil import WriteError
from biasbench.pool import WorkerPool
from tests import pool_tasks

# One example per UserError subclass: the arguments its constructor takes.
USER_ERROR_EXAMPLES = {
    UserError: ("recipe key `optim.lr` must be positive, got -1",),
    WriteError: (Path("/full/results.json"), "No space left on device (ENOSPC)", "choose another --out"),
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
