"""The Slurm backend: the runs of a study as one job array, through submitit.

Each array task trains one run through `runner.train_one` with `resume=True`. A task that is
preempted or reaches its time limit gets submitit's signal (USR2, 90 s ahead), and
`SlurmRun.checkpoint` asks for the same call again: Slurm requeues it and the trainer resumes
from its last epoch checkpoint, exactly (at most `launcher.max_num_timeout` times after time
limits). A task requeued by Slurm itself (`scontrol requeue`, a node failure) reruns the same
call and resumes the same way. Completed epochs are never trained twice.

The sweep that submitted the array waits and shows progress, reading job states with `squeue`
(no Slurm accounting needed) and results from the run folders (a shared file system). Stopping
the sweep leaves the jobs running; running the same command again follows them instead of
submitting them twice, and submits only runs that are neither finished nor queued.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from biasbench.errors import UserError
from biasbench.study.manifest import FINISHED, INTERRUPTED, QUEUED, RUNNING, Manifest
from biasbench.study.runner import RunTask, Sweep, train_one
from biasbench.study.specs import LauncherSpec, tasks_per_run, time_minutes

POLL_S = 5.0


class SlurmRun(submitit.helpers.Checkpointable):
    """One array task: one run, on one Slurm task or on several (`launcher.nodes` x
    `tasks_per_node`: the ranks of one data-parallel run). `checkpoint()` (inherited; submitit
    calls it in task 0 only) resubmits the same call: every rank resumes from the checkpoint."""

    def __call__(self, recipe: Any, seed: int, replicate: int, device: str, threads: int | None) -> dict[str, Any]:
        import torch

        from biasbench.runfolder import run_paths

        if threads:
            torch.set_num_threads(threads)
        ctx = _join_ranks(device)
        if ctx is None or ctx.is_main:
            ckpt = run_paths(recipe, seed).checkpoint
            start = _checkpoint_epoch(ckpt) if ckpt.exists() else 0
            ranks = f" on {ctx.world} tasks" if ctx is not None else ""
            print(f"biasbench: {recipe.output.name}/seed{seed} starts at epoch {start}{ranks}", flush=True)
        return train_one(recipe, seed, replicate, device, True, ctx)


def _join_ranks(device: str) -> Any:
    """With several tasks in this job: the rendezvous submitit describes (MASTER_ADDR/PORT,
    RANK, WORLD_SIZE, LOCAL_RANK from Slurm's variables, `TorchDistributedEnvironment`), joined
    like torchrun's; None for a one-task job. Devices stay as Slurm gave them: rank r of a node
    uses its GPU `LOCAL_RANK`."""
    from biasbench.distributed import from_environment
    from biasbench.env import resolve_device

    if submitit.JobEnvironment().num_tasks <= 1:
        return None
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return from_environment(resolve_device(device).type)


def _checkpoint_epoch(path: Path) -> int:
    from biasbench.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["epoch"])


def executor_for(launcher: LauncherSpec, folder: Path, name: str) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=launcher.max_num_timeout)
    params: dict[str, Any] = {"job_name": name, "time": time_minutes(launcher.time)}  # None: the partition's
    nodes, tasks = tasks_per_run(launcher)
    if nodes > 1 or tasks > 1:  # one run's ranks: one task per device, or as many as asked
        params.update(nodes=nodes, ntasks_per_node=tasks)
    for key in ("partition", "gpus_per_node", "cpus_per_task", "account", "qos", "constraint",
                "array_parallelism"):
        value = getattr(launcher, key)
        if value is not None:
            params[key] = value
    if launcher.mem_gb is not None:
        params["mem"] = f"{launcher.mem_gb:g}GB"
    if launcher.setup:
        params["setup"] = list(launcher.setup)
    if launcher.additional:
        params["additional_parameters"] = dict(launcher.additional)
    executor.update_parameters(**params)
    return executor


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Job id (array task `123_4`) -> Slurm state, for the jobs still in the queue."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot read the Slurm queue (squeue: {e}); run the same command again later") from None
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        first = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"squeue failed ({first}); run the same command again when Slurm answers")
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _outcome(task: RunTask, job_folder: Path, job_id: str) -> tuple[str, Any]:
    """What a job that left the queue produced: ("finished", doc) or ("error", (line, text))."""
    from biasbench.results import load_results
    from biasbench.runfolder import run_paths

    results = run_paths(task.recipe, task.seed).results
    if results.exists():
        doc = load_results(results)
        if doc["status"] in FINISHED:
            return "finished", doc
    paths = submitit.core.utils.JobPaths(job_folder / "%j", job_id=job_id)
    if paths.result_pickle.exists():
        outcome, value = submitit.core.utils.pickle_load(paths.result_pickle)
        if outcome == "success":
            return "finished", value
        text = str(value)
        last = [line for line in text.strip().splitlines() if line.strip()]
        return "error", (last[-1] if last else "the job raised", text)
    if results.exists() and load_results(results)["status"] == INTERRUPTED:
        return "error", ("KeyboardInterrupt: the job stopped before the run finished (cancelled?)", "")
    return "error", (f"job {job_id} left the queue without a result (cancelled, out of memory or killed?); see "
                     f"{paths.stderr}", "")


def run_slurm(sweep: Sweep, tasks: list[RunTask], launcher: LauncherSpec, device: str, queued: dict[str, str],
              poll_s: float = POLL_S) -> None:
    """Submit what is neither finished nor `queued` (key -> job id of an earlier sweep), then
    follow every job until it leaves the queue."""
    folder = sweep.out / "slurm"
    watched = dict(queued)
    if queued:
        sweep.progress.note(f"{len(queued)} runs are still queued or running from an earlier sweep; following them")
    submit = [t for t in tasks if t.key not in watched]
    if submit:
        executor = executor_for(launcher, folder, sweep.study.name)
        before = set(folder.glob("*.pkl"))  # submitit pickles every call here before sbatch runs
        try:  # submitit also prints sbatch's complaint: the error line below carries it instead
            with contextlib.redirect_stderr(io.StringIO()):
                jobs = executor.map_array(SlurmRun(), [t.recipe for t in submit], [t.seed for t in submit],
                                          [t.replicate for t in submit], [device] * len(submit),
                                          [launcher.cpus_per_task] * len(submit))
        except submitit.core.utils.FailedJobError as e:  # sbatch refused: its last line says why
            said = [line.strip() for line in str(e).splitlines() if line.strip()]
            for pickled in set(folder.glob("*.pkl")) - before:  # calls no job will ever read
                pickled.unlink(missing_ok=True)
            raise UserError(f"sbatch could not submit the job array ({said[-1] if said else 'no reason given'}); "
                            "check the cluster (`sinfo`) and the launcher options, then run the same command "
                            "again") from None
        for task, job in zip(submit, jobs):
            sweep.manifest.update(task.key, job=job.job_id, status=QUEUED)
            watched[task.key] = job.job_id
        sweep.manifest.save(force=True)
        sweep.progress.note(f"submitted {len(submit)} runs as Slurm job array {jobs[0].job_id.split('_')[0]}; "
                            f"logs in {folder}")
    by_key = {t.key: t for t in tasks}
    running: set[str] = set()
    while watched:
        states = queue_states(list(watched.values()))
        for key, job_id in list(watched.items()):
            state, task = states.get(job_id), by_key[key]
            if state == "RUNNING" and key not in running:
                running.add(key)
                sweep.started(task, job=job_id)
            elif state is not None and state != "RUNNING" and key in running:
                running.discard(key)  # requeued (preempted, time limit): pending again
                sweep.manifest.end_attempt(key, "requeued")
                sweep.progress.finished(task, INTERRUPTED, None)
            elif state is None:
                if key not in running:
                    sweep.started(task, job=job_id)  # it ran between two looks at the queue
                running.discard(key)
                del watched[key]
                kind, value = _outcome(task, folder, job_id)
                if kind == "finished":
                    sweep.finished(task, value)
                else:
                    sweep.errored(task, *value)
        if watched:
            sweep.manifest.save()
            time.sleep(poll_s)


@dataclass(frozen=True)
class SlurmBackend:
    """`runner.run_sweep`'s backend for `--backend slurm` (a `runner.RemoteBackend`)."""

    launcher: LauncherSpec
    name: str = "slurm"

    def still_queued(self, manifest: Manifest, tasks: list[RunTask]) -> dict[str, str]:
        return still_queued(manifest, tasks)

    def run(self, sweep: Sweep, tasks: list[RunTask], device: str, queued: dict[str, str]) -> None:
        run_slurm(sweep, tasks, self.launcher, device, queued)


def still_queued(manifest: Manifest, tasks: list[RunTask]) -> dict[str, str]:
    """Runs an earlier sweep submitted whose jobs are still queued or running (key -> job id)."""
    previous = {t.key: manifest.runs[t.key].get("job") for t in tasks}
    previous = {k: j for k, j in previous.items() if j}
    alive = queue_states(list(previous.values())) if previous else {}
    watched = {k: j for k, j in previous.items() if j in alive}
    for key, job in watched.items():
        manifest.update(key, status=RUNNING if alive[job] == "RUNNING" else QUEUED)
    return watched
