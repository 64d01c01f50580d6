"""Running a study: plan every run from what is on disk, train what is missing, record it all.

`train_one` is the one place a sweep calls the trainer (recipe, seed, replicate, device, resume
-> results document), in a local worker or in a Slurm job alike. `plan` looks at every run's
folder before anything trains: a finished run (completed or diverged) is skipped, an interrupted
one resumes from its checkpoint (exactly: the trainer's resume), a run of other settings is
refused. `Sweep` turns what the backend reports into manifest records and progress.

The local backend (a worker pool) lives here; a backend that runs elsewhere (Slurm, in
`study/slurm.py`, with its optional dependency submitit) is handed to `run_sweep` by its caller
as a `RemoteBackend`, so this module never imports it and it imports this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_text
from biasbench.recipe import Recipe
from biasbench.study.manifest import COMPLETED, ERROR, INTERRUPTED, PENDING, RUNNING, Manifest, run_key
from biasbench.study.schema import Study, with_output_dir

if TYPE_CHECKING:
    from biasbench.distributed import DistContext


def train_one(recipe: Recipe, seed: int, replicate: int, device: str, resume: bool,
              ctx: DistContext | None = None) -> dict[str, Any]:
    """Train (or resume) one run and return its results document, also when it was interrupted.
    `ctx`: this process's rank of a data-parallel run (a Slurm task of several); on CUDA each
    rank trains on the device of its local rank."""
    import torch

    from biasbench import trainer
    from biasbench.env import resolve_device
    from biasbench.results import load_results

    dev = resolve_device(device)
    if ctx is not None and ctx.enabled and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
    try:
        return trainer.train_run(recipe, seed, replicate, dev, resume=resume, ctx=ctx)
    except trainer.Interrupted as e:
        return e.doc if e.doc is not None else load_results(trainer.run_paths(recipe, seed).results)


@dataclass(frozen=True)
class RunTask:
    key: str  # cell/seedS, the run's folder under DIR
    cell: str
    replicate: int
    seed: int
    recipe: Recipe  # placed under DIR
    start_epoch: int  # epochs already in its checkpoint (0: a fresh run)

    @property
    def args(self) -> tuple:
        return (self.recipe, self.seed, self.replicate)


# ---------------------------------------------------------------------------------------------
# The plan: what is finished, what resumes, what starts.
# ---------------------------------------------------------------------------------------------


class Plan(NamedTuple):
    tasks: list[RunTask]  # to train, in replicate-major order
    finished: dict[str, dict[str, Any]]  # results of the finished runs by key
    unreadable: dict[str, str]  # runs whose checkpoint cannot be read: the line that says how to restart


def plan(study: Study, out: Path) -> Plan:
    """What the sweep does with each run. Each run folder is judged as `train --resume` judges it
    (`runfolder.inspect_start`); a run whose checkpoint is unreadable (truncated by a crash) is
    set apart, so the others go on; a folder of another experiment stops the sweep."""
    from biasbench.runfolder import inspect_start, run_paths

    todo: list[tuple[int, RunTask]] = []
    finished: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for index, cell in enumerate(study.cells):
        recipe = with_output_dir(cell, out)
        for replicate, seed in cell.seeds():
            key, paths = run_key(cell.name, seed), run_paths(recipe, seed)
            try:
                start = inspect_start(paths, recipe, seed, resume=True, overwrite=False)
            except UserError as e:
                problem = checkpoint_problem(paths.checkpoint)
                if problem:
                    unreadable[key] = (f"{problem}; to train this run again from epoch 1, remove its folder "
                                       f"`{paths.dir}` and run the sweep again")
                    continue
                text = str(e).split("; resume with")[0]  # a sweep has no --overwrite to offer
                raise UserError(f"{text}; run the study that wrote it, or give this one another --out") from None
            if start.action == "skip":
                finished[key] = start.results or {}
                continue
            task = RunTask(key, cell.name, replicate, seed, recipe, start.epoch)
            todo.append((replicate * len(study.cells) + index, task))
    return Plan([t for _, t in sorted(todo, key=lambda p: p[0])], finished, unreadable)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (None: absent, or readable)."""
    from biasbench.checkpoint import load_checkpoint

    if not path.exists():
        return None
    try:
        load_checkpoint(path)
    except UserError as e:
        return str(e).split("; give a checkpoint.pt")[0]
    return None


# ---------------------------------------------------------------------------------------------
# Recording what the backend reports.
# ---------------------------------------------------------------------------------------------


class Sweep:
    """What a backend reports (started / finished / error) -> manifest, progress, outcome."""

    def __init__(self, study: Study, out: Path, manifest: Manifest, progress: Any):
        self.study, self.out, self.manifest, self.progress = study, out, manifest, progress
        self.errors: list[str] = []
        self.done_before = 0  # runs found finished on disk: not trained by this sweep
        self.user_error: UserError | None = None
        self.notes: list[str] = []

    def judge(self, doc: dict[str, Any]) -> bool | None:
        """The study's failure criterion on a results document (None without one)."""
        if self.study.failure is None:
            return None
        try:
            return self.study.failure.failed(doc)
        except UserError as e:
            if str(e) not in self.notes:
                self.notes.append(str(e))
            return None

    def record_finished(self, docs: dict[str, dict[str, Any]]) -> None:
        """Runs found finished on disk (by the plan): the manifest agrees with their results,
        attempts included (a killed sweep may not have recorded how, or that, one ran)."""
        for key, doc in docs.items():
            run = self.manifest.runs[key]
            if run["status"] != doc["status"] or run.get("failed") is None:
                self.manifest.update(key, status=doc["status"], failed=self.judge(doc), error=None)
            self.manifest.attempt_from_results(key, doc)

    def set_apart(self, unreadable: dict[str, str]) -> None:
        """Runs the plan could not resume (an unreadable checkpoint): errored, with the line that
        says how to restart them, beside the run and in the manifest; the others go on."""
        for key, message in unreadable.items():
            attempts = self.manifest.runs[key]["attempts"]
            if attempts and "ended" not in attempts[-1]:  # a killed sweep's attempt: it wrote the bad file
                self.manifest.end_attempt(key, "lost", error=message)
            self.manifest.update(key, status=ERROR, error=message)
            atomic_write_text(self.out / key / "error.txt", f"{message}\n")
            self.errors.append(f"{key}: {message}")

    def started(self, task: RunTask, **where: Any) -> None:
        self.manifest.update(task.key, status=RUNNING, error=None)
        self.manifest.attempt(task.key, start_epoch=task.start_epoch, **where)
        self.manifest.save()
        self.progress.started(task)

    def finished(self, task: RunTask, doc: dict[str, Any]) -> None:
        status = doc["status"]
        failed = self.judge(doc) if status == COMPLETED else None
        self.manifest.update(task.key, status=status, failed=failed, error=None)
        self.manifest.end_attempt(task.key, status, epochs=doc.get("epochs_completed"))
        self.manifest.save()
        self.progress.finished(task, status, doc, failed=bool(failed))

    def errored(self, task: RunTask, line: str, text: str = "", exception: BaseException | None = None) -> None:
        """A run raised (or its worker died). Bad input (UserError) stops the sweep; anything else
        is recorded, its traceback kept beside the run, and the other runs go on."""
        status = INTERRUPTED if line.startswith("KeyboardInterrupt") else ERROR
        message = str(exception) if isinstance(exception, UserError) else line
        if status == INTERRUPTED and self.user_error is not None:  # stopped by us, not by a Ctrl-C
            message = "stopped: another run's bad input ended the sweep; the same command resumes it"
        self.manifest.update(task.key, status=status, error=None if status == INTERRUPTED else message)
        self.manifest.end_attempt(task.key, status, error=message)
        self.manifest.save()
        if status == ERROR:
            # Bad input needs its line, not a traceback; a worker that died raised nothing, so its
            # file says how it ended (the outcome points every error at this file).
            body = f"{message}\n" if isinstance(exception, UserError) else text or (
                f"{message}\nno traceback: the worker process ended without raising (killed, out of memory, or a "
                "crash in native code); run the same command again to resume this run from its checkpoint\n")
            atomic_write_text(self.out / task.key / "error.txt", body)
            if isinstance(exception, UserError) and self.user_error is None:
                self.user_error = exception
            self.errors.append(f"{task.key}: {message}")
        self.progress.finished(task, status, None, error=message)


def check_slurm() -> None:
    """`--backend slurm` needs submitit, sbatch and srun: say which one is missing (before anything runs)."""
    import shutil

    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("--backend slurm needs submitit, which is not installed: pip install 'biasbench[slurm]'") \
            from None
    # submitit submits with sbatch and runs each task through srun; its executor refuses to be built without srun
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        names = " and ".join(f"`{tool}`" for tool in missing)
        raise UserError(f"--backend slurm needs Slurm's {names} on PATH, and this machine has "
                        f"{'neither' if len(missing) > 1 else 'no ' + missing[0]}; run the sweep on the cluster's "
                        "login node, or use --backend local")


def worker_threads(jobs: int) -> int:
    """Threads per worker: the cores this process may use, shared out (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def run_local(sweep: Sweep, tasks: list[RunTask], jobs: int, device: str,
              slots: list[dict[str, str]] | None = None) -> None:
    """The local backend: a pool of `jobs` workers (with `slots`: one per environment, each
    pinned to its GPU, biasbench.study.gpus); raises KeyboardInterrupt when stopped."""
    from biasbench.pool import WorkerPool

    by_key = {t.key: t for t in tasks}
    if slots is not None:
        jobs = len(slots)
    workers = min(jobs, max(1, len(tasks)))
    with WorkerPool(workers, threads=worker_threads(jobs), slots=slots[:workers] if slots else None) as pool:
        # resume=True always: the trainer continues from a checkpoint when there is one, else starts.
        work = [(t.key, (*t.args, device, True)) for t in tasks]
        for event in pool.run(train_one, work):
            if event.kind == "tick":
                sweep.manifest.save()
                continue
            task = by_key[event.key]
            if event.kind == "started":
                pinned = {"gpu": pool.slots[event.slot]["CUDA_VISIBLE_DEVICES"]} if slots else {}
                sweep.started(task, worker=event.pid, **pinned)
            elif event.kind == "finished":
                sweep.finished(task, event.result)
            else:
                sweep.errored(task, event.error, event.traceback, event.exception)
                if sweep.user_error is not None:
                    pool.stop()  # bad input: no new runs; the busy ones finish their epoch and stop



# ---------------------------------------------------------------------------------------------
# The whole sweep.
# ---------------------------------------------------------------------------------------------


class RemoteBackend(Protocol):
    """A backend whose runs go on outside this process (Slurm: `study.slurm.SlurmBackend`)."""

    name: str  # recorded in the manifest

    def still_queued(self, manifest: Manifest, tasks: list[RunTask]) -> dict[str, str]:
        """Runs an earlier sweep submitted that are still queued or running (key -> job id)."""

    def run(self, sweep: Sweep, tasks: list[RunTask], device: str, queued: dict[str, str]) -> None:
        """Submit what is not `queued`, then follow every run until it ends."""


def run_sweep(study: Study, out: Path, *, backend: RemoteBackend | None = None, jobs: int = 1, device: str = "cpu",
              console: Any = None, slots: list[dict[str, str]] | None = None,
              after: Callable[[Manifest], None] | None = None) -> Sweep:
    """Lock DIR, reconcile the manifest with the run folders, train what is missing (on `jobs`
    local workers, or through `backend`); then, still under the lock, `after(manifest)` (a
    sequential study's decisions) unless a run's bad input stopped the sweep.

    Raises KeyboardInterrupt when stopped (every busy run checkpointed, the manifest written),
    and the first UserError a run raised (bad input: the sweep stops starting runs)."""
    from rich.console import Console

    from biasbench.study.manifest import StudyLock
    from biasbench.study.progress import StudyProgress

    console = console or Console(quiet=True)
    with StudyLock(out):
        manifest = Manifest.for_study(study, out, backend.name if backend is not None else "local")
        tasks, finished, unreadable = plan(study, out)
        queued: dict[str, str] = {}
        if backend is not None:
            queued = backend.still_queued(manifest, tasks)  # submitted by an earlier sweep: follow, not resubmit
        _reset_stale(manifest, [t for t in tasks if t.key not in queued])
        sweep = Sweep(study, out, manifest, progress=None)
        if manifest.rebuilt:
            sweep.notes.append(manifest.rebuilt)
        sweep.record_finished(finished)
        sweep.done_before = len(finished)
        sweep.set_apart(unreadable)
        failed_before = sum(1 for doc in finished.values() if doc["status"] != COMPLETED or sweep.judge(doc))
        progress = sweep.progress = StudyProgress(console, study.name, study.run_count(),
                                                  len(finished) + len(unreadable), failed_before + len(unreadable))
        manifest.save(force=True)
        try:
            with progress:
                if backend is not None:
                    backend.run(sweep, tasks, device, queued)
                elif tasks:
                    run_local(sweep, tasks, jobs, device, slots)
        finally:
            manifest.save(force=True)
        if sweep.user_error is not None:
            raise sweep.user_error
        if after is not None:
            after(manifest)
    return sweep


def _reset_stale(manifest: Manifest, tasks: list[RunTask]) -> None:
    """Runs a killed sweep left `running` are not running now: their last attempt is closed as
    lost, their status says what is on disk (a checkpoint to resume from, or nothing)."""
    for task in tasks:
        run = manifest.runs[task.key]
        if run["status"] not in (ERROR, PENDING):
            manifest.update(task.key, status=INTERRUPTED if task.start_epoch else PENDING)
        if run["attempts"] and "ended" not in run["attempts"][-1]:
            manifest.end_attempt(task.key, "lost", checkpoint_epoch=task.start_epoch)
