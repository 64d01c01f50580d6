"""Running `tune:`'s searches: Optuna asks, a worker pool or a remote backend (Slurm job arrays)
trains the trials (ordinary runs, as `runner.train_one`), Optuna is told each trial's validation
value. Only this process (the sweep) writes the journal: a Slurm job trains its trial and writes
its results.json; the sweep reads it and tells Optuna. The settings, the plan and what the
report says live in tune.py; this module is what only `sweep` needs."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_text, ensure_dir
from biasbench.pool import WorkerPool
from biasbench.recipe import Recipe
from biasbench.results import higher_is_better
from biasbench.study.manifest import RUNNING, StudyLock
from biasbench.study.runner import RemoteBackend, RunTask, train_one, worker_threads
from biasbench.study.tune import (
    JOURNAL,
    LINE_WIDTH,
    TUNE_DIR,
    TuneSpec,
    distribution,
    grid_values,
    journal_path,
    short_key,
    trial_recipe,
    value_text,
    with_values,
)

if TYPE_CHECKING:
    from biasbench.study.schema import Cell, Study
    from biasbench.study.specs import LauncherSpec

SLURM_BATCH = 8  # trials per job array without launcher.array_parallelism
JOBS_FILE = "jobs.json"  # DIR/tune/jobs.json: each submitted trial's Slurm job


@dataclass(frozen=True)
class Trial:
    cell: str
    number: int
    params: dict[str, Any]
    recipe: Recipe

    @property
    def key(self) -> str:
        return f"{self.cell}/trial_{self.number:03d}"


def _storage(out: Path) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    ensure_dir(Path(out) / TUNE_DIR)
    return optuna.storages.JournalStorage(JournalFileBackend(str(journal_path(out))))


def _sampler(spec: TuneSpec, done: int) -> Any:
    """The sampler, seeded by `seed` and the trials already stored: a resumed search does not
    draw again the values its first trials drew."""
    seed = int(hashlib.sha256(f"{spec.seed}/{done}".encode()).hexdigest()[:8], 16)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(spec), seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _search(storage: Any, cell: Cell, spec: TuneSpec, out: Path) -> Any:
    """The cell's Optuna study in the journal, created or continued (same settings only)."""
    direction = "maximize" if higher_is_better(spec.metric) else "minimize"
    names = {s.study_name for s in storage.get_all_studies()}
    if cell.name in names:
        search = optuna.load_study(study_name=cell.name, storage=storage,
                                   sampler=_sampler(spec, len(storage.get_all_trials(
                                       storage.get_study_id_from_name(cell.name), deepcopy=False))))
        stored = search.user_attrs.get("tune")
        if stored != json.loads(json.dumps(spec.identity())):
            raise UserError(f"`{journal_path(out)}` holds a tuning of cell `{cell.name}` with other settings "
                            f"({stored}); run the study that wrote it, or give this one another --out")
        if len(search.trials) > spec.trials:
            raise UserError(f"`{journal_path(out)}` holds {len(search.trials)} trials of cell `{cell.name}`, and "
                            f"`tune.trials` is {spec.trials}: trials can grow, not shrink; give this study another "
                            "--out")
        return search
    search = optuna.create_study(study_name=cell.name, storage=storage, direction=direction,
                                 sampler=_sampler(spec, 0))
    search.set_user_attr("tune", spec.identity())
    return search


def trial_line(trial: Trial, trials: int, metric: str, value: float | None, best: float | None) -> str:
    """One line per finished trial, at most LINE_WIDTH characters."""
    got = "diverged" if value is None else f"{metric} {value:.4g}"
    shown = "" if best is None else ", the best" if value == best else f", best {best:.4g}"
    params = " ".join(f"{short_key(k)}={value_text(v)}" for k, v in trial.params.items())
    line = f"tune {trial.cell} {trial.number + 1}/{trials}: {got}{shown}; {params}"
    return line if len(line) <= LINE_WIDTH else line[: LINE_WIDTH - 3] + "..."


def trial_value(doc: dict[str, Any], metric: str) -> float | None:
    """A finished trial's best value of `metric` over its epochs (None: diverged, no value)."""
    if doc.get("status") != "completed":
        return None
    rows = [h[metric] for h in doc.get("history", []) if h.get(metric) is not None and math.isfinite(h[metric])]
    if not rows:
        recorded = sorted(k for h in doc.get("history", [])[:1] for k in h if k.startswith(("val_", "ema_val_")))
        raise UserError(f"`tune.metric` `{metric}` is not in the trials' results (they record "
                        f"{', '.join(recorded) or 'no validation metric'}); fix `tune.metric`")
    return max(rows) if higher_is_better(metric) else min(rows)


def slurm_batch(launcher: LauncherSpec) -> int:
    """Trials asked per job array on Slurm: as many as the array runs at once."""
    return launcher.array_parallelism or SLURM_BATCH


def run_tuning(study: Study, out: Path, console: Any, jobs: int = 1, device: str = "cpu",
               slots: list[dict[str, str]] | None = None, backend: RemoteBackend | None = None,
               batch: int = SLURM_BATCH) -> Study:
    """Run every cell's search to `tune.trials` (under the study lock), record it, and return
    the study with each cell's best values in its recipe. With `backend` (Slurm) the trials go
    in job arrays of `batch` trials; else on `jobs` local workers (or one per slot)."""
    spec = study.tune
    assert spec is not None
    with StudyLock(out):
        storage = _storage(out)
        searches = {cell.name: _search(storage, cell, spec, out) for cell in study.cells}
        if backend is not None:
            _run_remote_trials(study, searches, out, console, backend, device, batch)
        else:
            _run_trials(study, searches, out, console, jobs, device, slots)
        record = tuning_record(study, searches)
    best = {name: c["params"] for name, c in record["cells"].items()}
    cells = [with_values(c, best[c.name]) for c in study.cells]
    return replace(study, cells=cells, tuned=record)


def _pending(study: Study, searches: dict[str, Any], out: Path, size: int) -> list[Trial]:
    """The next batch: trials a stopped sweep left running first (they resume from their
    checkpoints), then new ones asked of each cell's search in turn, up to `size`."""
    spec = study.tune
    batch: list[Trial] = []
    for cell in study.cells:
        for t in searches[cell.name].get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            batch.append(Trial(cell.name, t.number, dict(t.params), trial_recipe(cell, t.params, spec, out, t.number)))
    dists = {key: distribution(key, raw) for key, raw in spec.space.items()}
    asked = True
    while len(batch) < size and asked:
        asked = False
        # The searches with the fewest trials first: one worker alternates between the arms, so a
        # stopped tuning leaves them with (nearly) as many trials each.
        for cell in sorted(study.cells, key=lambda c: len(searches[c.name].get_trials(deepcopy=False))):
            search = searches[cell.name]
            if len(batch) < size and len(search.get_trials(deepcopy=False)) < spec.trials:
                t = search.ask(fixed_distributions=dists)
                batch.append(Trial(cell.name, t.number, dict(t.params),
                                   trial_recipe(cell, t.params, spec, out, t.number)))
                asked = True
    return batch


def _run_trials(study: Study, searches: dict[str, Any], out: Path, console: Any, jobs: int, device: str,
                slots: list[dict[str, str]] | None) -> None:
    """Batches of trials on a worker pool until every search has its trials; Optuna is told each
    result as it comes. Raises KeyboardInterrupt when stopped (the busy trials checkpointed)."""
    spec = study.tune
    workers = len(slots) if slots else jobs
    stop: UserError | None = None
    with WorkerPool(workers, threads=worker_threads(workers), slots=slots) as pool:
        while stop is None:
            batch = _pending(study, searches, out, workers)
            if not batch:
                return
            by_key = {t.key: t for t in batch}
            work = [(t.key, (t.recipe, t.recipe.train.seed, 0, device, True)) for t in batch]
            for event in pool.run(train_one, work):
                if event.kind in ("tick", "started"):
                    continue
                trial = by_key[event.key]
                search = searches[trial.cell]
                if event.kind != "finished":
                    error = _trial_error(trial, event.error, event.traceback, event.exception)
                    stop = stop or error  # every error beside its trial; the first one said
                    pool.stop()
                    continue
                if event.result["status"] == "interrupted":
                    continue  # stays running in the journal: the next sweep resumes it
                _tell(trial, event.result, search, spec, console)
    raise stop


def _trial_error(trial: Trial, line: str, text: str, exception: BaseException | None) -> UserError:
    """A trial that raised: its traceback beside it, and the line that stops the tuning."""
    folder = Path(trial.recipe.output.dir) / trial.recipe.output.name
    atomic_write_text(ensure_dir(folder) / "error.txt", f"{line}\n{text}")
    if isinstance(exception, UserError):
        return exception
    return UserError(f"tuning trial {trial.key}: {line}; traceback in {folder / 'error.txt'}; run the same command "
                     "again to retry it")


def _tell(trial: Trial, doc: dict[str, Any], search: Any, spec: TuneSpec, console: Any) -> None:
    """Tell Optuna a finished trial's value (a diverged one: failed) and print its line."""
    value = trial_value(doc, spec.metric)
    if value is None:
        search.tell(trial.number, state=TrialState.FAIL)
    else:
        search.tell(trial.number, value)
    done = [t.value for t in search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = (max if higher_is_better(spec.metric) else min)(done) if done else None
    console.print(trial_line(trial, spec.trials, spec.metric, value, best), markup=False, highlight=False,
                  crop=False, overflow="ignore", soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# The trials on a remote backend (Slurm): job arrays of asked trials, told as they finish.
# ---------------------------------------------------------------------------------------------


def _run_remote_trials(study: Study, searches: dict[str, Any], out: Path, console: Any, backend: RemoteBackend,
                       device: str, batch: int) -> None:
    """Batches of `batch` trials, each batch one job array through `backend`, until every search
    has its trials. A trial an earlier sweep submitted whose job is still queued or running is
    followed, not submitted again; one whose job is gone is submitted again with its values
    (it resumes from its checkpoint). Raises KeyboardInterrupt when stopped (the jobs go on)."""
    jobs = TrialJobs(out)
    while True:
        trials = _pending(study, searches, out, batch)
        if not trials:
            return
        tasks = [RunTask(t.key, t.cell, 0, t.recipe.train.seed, t.recipe, 0) for t in trials]
        queued = backend.still_queued(jobs, tasks)
        told = TrialSweep(study, out, jobs, console, {t.key: t for t in trials}, searches)
        backend.run(told, tasks, device, queued)
        if told.stop is not None:
            raise told.stop


class TrialJobs:
    """DIR/tune/jobs.json: the Slurm job of every submitted trial (trial key -> {job, status}),
    so that a sweep run again follows a trial still in the queue instead of submitting it twice.
    It has the part of a study `Manifest` a remote backend reads and writes (`runs`, `update`,
    `end_attempt`, `save`); attempts are not recorded (the journal records the trials)."""

    def __init__(self, out: Path):
        self.path = Path(out) / TUNE_DIR / JOBS_FILE
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.runs: dict[str, dict[str, Any]] = _AnyKey(stored)
        self._saved = json.dumps(stored, indent=1)

    def update(self, key: str, **fields: Any) -> None:
        self.runs[key].update(fields)

    def end_attempt(self, key: str, status: str, **fields: Any) -> None:
        self.runs[key]["status"] = status

    def save(self, force: bool = False) -> None:
        """Write what changed (the backend saves at every look at the queue)."""
        text = json.dumps(dict(self.runs), indent=1)
        if text != self._saved or force:
            atomic_write_text(ensure_dir(self.path.parent) / self.path.name, text)
            self._saved = text


class _AnyKey(dict):
    """A dict that gives an empty record for a trial not yet submitted (`runs[key]`)."""

    def __missing__(self, key: str) -> dict[str, Any]:
        self[key] = {}
        return self[key]


class TrialSweep:
    """What a remote backend reports about a batch of trials (as it reports runs to a
    `runner.Sweep`): a finished trial is told to Optuna at once, by this process; an error
    stops the tuning after the batch (`stop`). The job logs go to DIR/tune/slurm."""

    def __init__(self, study: Study, out: Path, jobs: TrialJobs, console: Any, trials: dict[str, Trial],
                 searches: dict[str, Any]):
        self.study, self.out, self.manifest, self.console = study, Path(out) / TUNE_DIR, jobs, console
        self.trials, self.searches = trials, searches
        self.progress = TrialNotes(console)
        self.stop: UserError | None = None

    def started(self, task: RunTask, **where: Any) -> None:
        self.manifest.update(task.key, status=RUNNING, **where)

    def finished(self, task: RunTask, doc: dict[str, Any]) -> None:
        trial = self.trials[task.key]
        self.manifest.update(task.key, status=doc["status"])
        self.manifest.save()
        if doc["status"] == "interrupted":  # stopped without a requeue (cancelled): not told, resumed next time
            self.stop = self.stop or UserError(
                f"tuning trial {task.key} was stopped before it finished (its job cancelled?); run the same "
                "command again to resume it from its checkpoint")
            return
        _tell(trial, doc, self.searches[trial.cell], self.study.tune, self.console)

    def errored(self, task: RunTask, line: str, text: str = "", exception: BaseException | None = None) -> None:
        self.manifest.update(task.key, status="error")
        self.manifest.save()
        error = _trial_error(self.trials[task.key], line, text, exception)
        self.stop = self.stop or error  # every error beside its trial; the first one said


class TrialNotes:
    """The backend's progress calls (`StudyProgress.note`, `.finished` of a requeued job) as lines:
    the trials have their own line each when told, not a progress bar."""

    def __init__(self, console: Any):
        self.console = console

    def note(self, text: str) -> None:
        self.console.print(f"tune: {text}", markup=False, highlight=False, crop=False, overflow="ignore",
                           soft_wrap=True)

    def finished(self, task: RunTask, status: str, doc: dict[str, Any] | None, **_: Any) -> None:
        self.note(f"trial {task.key} {status} (requeued by Slurm): it resumes from its checkpoint")


def tuning_record(study: Study, searches: dict[str, Any]) -> dict[str, Any]:
    """What DIR/study.json records (`tune`): the settings and, per cell, its best values and
    every trial in order (the report's best-so-far curves)."""
    spec = study.tune
    pick = max if higher_is_better(spec.metric) else min
    cells = {}
    for cell in study.cells:
        trials = sorted(searches[cell.name].get_trials(deepcopy=False), key=lambda t: t.number)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise UserError(f"every tuning trial of cell `{cell.name}` diverged ({len(trials)} trials); narrow "
                            "`tune.space` (smaller learning rates) and give the study another --out")
        best_value = pick(t.value for t in complete)
        best = min((t for t in complete if t.value == best_value), key=lambda t: t.number)  # ties: the first
        cells[cell.name] = {
            "arm": cell.values.get(spec.arms), "params": dict(best.params), "value": best.value,
            "trial": best.number,
            "trials": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params)}
                       for t in trials]}
    return {"spec": asdict(spec), "journal": f"{TUNE_DIR}/{JOURNAL}", "cells": cells}


