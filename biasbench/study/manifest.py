"""DIR/study.json: every cell and run of a study with its status, and the lock on DIR.

The manifest is written atomically (temporary file, then rename) and at most every half second
while runs stream in (plus at every stop), so a sweep of short runs does not spend its time
writing it. What ran is recorded twice on purpose: each run's own results file and checkpoint
are the truth about its training (a sweep killed between two manifest writes loses nothing), and
the manifest adds what a results file cannot say: runs not started yet, runs that raised an
error, and every attempt (when it started, from which epoch, on which worker or Slurm job).

One sweep at a time per DIR: `StudyLock` holds an exclusive `flock` on DIR/.study.lock for the
whole sweep; a second sweep on the same DIR is refused with the first one's pid.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from biasbench.errors import UserError
from biasbench.fsutil import WriteError, atomic_write_json, ensure_dir, os_reason, write_lock_pid

KIND = "biasbench-study"
SCHEMA_VERSION = 1
MANIFEST = "study.json"
LOCK = ".study.lock"
SAVE_EVERY_S = 0.5

# Run statuses: the trainer's three, plus the sweep's own.
PENDING, QUEUED, RUNNING, COMPLETED, DIVERGED, INTERRUPTED, ERROR = (
    "pending", "queued", "running", "completed", "diverged", "interrupted", "error")
FINISHED = (COMPLETED, DIVERGED)  # a finished run is never trained again


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def is_study_folder(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def run_key(cell: str, seed: int) -> str:
    return f"{cell}/seed{seed}"


class StudyLock:
    """An exclusive lock on a study folder for the life of one sweep (released when the process
    ends, however it ends: the kernel drops flock locks of a dead process)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> StudyLock:
        ensure_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # permission denied, a read-only file system (EROFS), a full disk
            raise WriteError(self.path, os_reason(e), "choose another --out or make it writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another sweep (pid {holder}) is running in `{self.path.parent}`; wait for it to "
                            "finish, or give this one another --out") from None
        write_lock_pid(fd, self.path)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class CorruptManifest(UserError):
    """DIR/study.json cannot be read (a truncated or emptied file): the sweep rebuilds it from the
    run folders, which hold every run's recipe, results and checkpoint; readers say how."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"`{path}` {problem} (a corrupt study manifest); rebuild it from the run folders with "
                         f"`biasbench sweep STUDY.yaml --out {path.parent}`, STUDY.yaml being the study that wrote "
                         "it: finished runs are not trained again")
        self.path, self.problem = path, problem


def set_aside(corrupt: CorruptManifest, cells: set[str]) -> str:
    """Keep the unreadable manifest as study.json.corrupt so the sweep can write a new one, after
    checking that every run folder in DIR belongs to one of this study's `cells`."""
    out = corrupt.path.parent
    foreign = sorted(d.name for d in out.iterdir()
                     if d.is_dir() and d.name not in cells and any(d.glob("seed*/results.json")))
    if foreign:
        listed = ", ".join(f"`{name}`" for name in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UserError(f"`{corrupt.path}` {corrupt.problem}, and `{out}` holds runs of cells this study does not "
                        f"have ({listed}): it is another study's folder; sweep that study into it, or give this "
                        "one another --out")
    kept = corrupt.path.with_name(MANIFEST + ".corrupt")
    try:
        os.replace(corrupt.path, kept)
    except OSError as e:
        raise WriteError(kept, os_reason(e), "choose another --out or make it writable") from None
    return (f"`{corrupt.path.name}` {corrupt.problem}: kept as `{kept.name}` and rebuilt from the run folders "
            "(finished runs kept; the earlier attempts' history is lost)")


def _check_grown(old: Manifest, current: dict[str, int], out: Path) -> None:
    """A study folder takes a grown study: new cells, and more replicates of a cell (its new
    seeds train; the finished ones are kept, as a grown grid keeps its finished cells). A cell
    dropped, or fewer replicates, would leave runs the report no longer reads: refused."""
    where = old.doc["study"]["path"]
    for name, n in ((c["name"], c["replicates"]) for c in old.doc["cells"]):
        if name not in current:
            raise UserError(f"`{out}` holds a sweep of other cells or replicates ({where}; cell `{name}` is not in "
                            "this study); give this study another --out, or run the study that wrote it")
        if current[name] < n:
            raise UserError(f"`{out}` holds a sweep of other cells or replicates ({where}; cell `{name}` has {n} "
                            f"replicates there, {current[name]} here: replicates can grow, not shrink); give this "
                            "study another --out, or run the study that wrote it")


class Manifest:
    """The study manifest document, with the run records keyed by `cell/seedS`."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path = path
        self.doc = doc
        self._saved_at = 0.0
        self._dirty = False
        self.rebuilt: str | None = None  # why a corrupt manifest was rebuilt from the run folders

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.doc["runs"]

    @classmethod
    def read(cls, out: Path) -> Manifest:
        """Read and check DIR/study.json; problems are one `UserError` line."""
        path = Path(out) / MANIFEST
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"`{out}` holds no study manifest ({MANIFEST}); run `biasbench sweep` into it") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptManifest(path, "is not valid JSON") from None
        if not isinstance(doc, dict) or not doc:
            raise CorruptManifest(path, "holds no study manifest (" + ("an empty mapping)" if doc == {} else
                                                                      f"a JSON {type(doc).__name__})"))
        if doc.get("kind") != KIND:
            raise UserError(f"`{path}` is not a biasbench study manifest (no `kind: {KIND}`)")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise UserError(f"`{path}` has study manifest version {doc.get('schema_version')!r}; this biasbench "
                            f"reads version {SCHEMA_VERSION}: read it with the release that wrote it")
        return cls(path, doc)

    @classmethod
    def for_study(cls, study: Any, out: Path, backend: str) -> Manifest:
        """A fresh manifest for `study`, or the one in `out` when the study holds its cells (the
        runs' history carries over; new cells may join); a folder of another study is refused."""
        cells = [{"name": c.name, "values": c.values, "replicates": c.recipe.train.replicates} for c in study.cells]
        old: Manifest | None = None
        rebuilt = None
        if (Path(out) / MANIFEST).exists():
            try:
                old = cls.read(out)
            except CorruptManifest as e:
                rebuilt = set_aside(e, {c.name for c in study.cells})
        if old is not None:
            _check_grown(old, {c["name"]: c["replicates"] for c in cells}, out)
        runs = {}
        for cell in study.cells:
            for replicate, seed in cell.seeds():
                key = run_key(cell.name, seed)
                runs[key] = (old.runs.get(key) if old else None) or {
                    "cell": cell.name, "replicate": replicate, "seed": seed, "status": PENDING,
                    "failed": None, "error": None, "attempts": []}
        doc = {
            "kind": KIND, "schema_version": SCHEMA_VERSION,
            "study": {"path": str(study.path), "name": study.name, "smoke": study.smoke, "document": study.doc,
                      "keys": study.keys, "varying": study.varying, "naming": study.naming, "labels": study.labels,
                      "zip_groups": study.zip_groups,
                      "matches": [{"cell": m.cell_name, "reference": m.reference_name, "key": m.key, "value": m.value,
                                   "by": m.by, "tolerance": m.tolerance, "mismatch": m.mismatch}
                                  for m in study.matches]},
            "backend": backend,
            "created": old.doc["created"] if old else now(),
            "updated": now(),
            "cells": cells,
            "runs": runs,
        }
        if old is not None and "sequential" in old.doc:  # the last round's decisions, until the next
            doc["sequential"] = old.doc["sequential"]
        if getattr(study, "tuned", None) is not None:  # `tune:`: each cell's best values and every trial
            doc["tune"] = study.tuned
        manifest = cls(Path(out) / MANIFEST, doc)
        manifest.rebuilt = rebuilt
        return manifest

    def update(self, key: str, **fields: Any) -> None:
        self.runs[key].update(fields)
        self._dirty = True

    def attempt(self, key: str, **fields: Any) -> None:
        self.runs[key]["attempts"].append({"started": now(), **fields})
        self._dirty = True

    def end_attempt(self, key: str, status: str, **fields: Any) -> None:
        attempts = self.runs[key]["attempts"]
        if attempts:
            attempts[-1].update(ended=now(), status=status, **fields)
        self._dirty = True

    def attempt_from_results(self, key: str, doc: dict[str, Any]) -> None:
        """Make the run's last attempt say how its results file says it ended. A sweep killed
        between two saves can leave that attempt open (started, not ended) or unrecorded (the
        run started and finished in between); the epoch it started from is then unknown."""
        attempts = self.runs[key]["attempts"]
        ended = {"ended": doc.get("created"), "status": doc["status"], "epochs": doc.get("epochs_completed"),
                 "recorded_from": "results.json"}
        if attempts and "ended" not in attempts[-1]:
            attempts[-1].update(ended)
        elif not attempts or attempts[-1].get("status") != doc["status"]:
            attempts.append({"started": None, **ended})
        else:
            return
        self._dirty = True

    def save(self, force: bool = False) -> None:
        """Write it atomically; without `force`, at most every SAVE_EVERY_S seconds."""
        if not force and (not self._dirty or time.monotonic() - self._saved_at < SAVE_EVERY_S):
            return
        self.doc["updated"] = now()
        atomic_write_json(self.path, self.doc)
        self._saved_at, self._dirty = time.monotonic(), False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs.values():
            out[run["status"]] = out.get(run["status"], 0) + 1
        return out
