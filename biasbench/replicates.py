"""`train --jobs N`: replicates trained side by side in worker processes that end with their parent.

Each replicate runs in its own spawned process (`jobs` at a time, CPU threads split between
them), which prints one line per finished epoch prefixed with its seed and sends its results
document back through a pipe. Workers receive SIGTERM when the parent ends, however it ends
(`stopping.die_with_parent`), and stop like Ctrl-C: checkpoint kept, results `interrupted`.
A stop signal to the parent is passed on to the running workers; the parent waits for their
results, then raises `Interrupted`. Every worker is joined: none outlives a normal end.

The trainer hands in the function that trains one replicate (`train_one`, the trainer's
`train_run`), so this module does not import the trainer that imports it. The function crosses
to the spawned workers by its qualified name, as any picklable top-level function does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
from rich.console import Console

from biasbench.errors import UserError
from biasbench.recipe import Recipe
from biasbench.runfolder import run_paths
from biasbench.runlog import say
from biasbench.running import usable_cores
from biasbench.stopping import Interrupted, die_with_parent, signal_of, stop_on_signals

STOP_WAIT_S = 120.0  # how long a stopped parent waits for its workers' last writes


# train_run's signature: (recipe, seed, replicate, device, *, resume, fresh, stop_after, console, label)
TrainOne = Callable[..., dict[str, Any]]


def _worker(conn: Connection, parent_pid: int, train_one: TrainOne, recipe: Recipe, r: int, seed: int, device: str,
            resume: bool, fresh: bool, stop_after: int | None, threads: int, quiet: bool) -> None:
    """A worker process: train one replicate and send ("done" | "interrupted" | "error", payload)."""
    die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    console = Console(quiet=quiet, highlight=False, force_terminal=False, soft_wrap=True)
    with stop_on_signals():
        try:
            msg = ("done", train_one(recipe, seed, r, torch.device(device), resume=resume, fresh=fresh,
                                     stop_after=stop_after, console=console, label=f"seed {seed}"))
        except Interrupted as e:
            msg = ("interrupted", e.doc)
        except UserError as e:
            msg = ("error", str(e))
        except KeyboardInterrupt:  # stopped before training began
            msg = ("interrupted", None)
        except Exception:
            msg = ("error", f"replicate {r + 1} (seed {seed}) failed:\n{traceback.format_exc()}")
    try:
        conn.send(msg)
    except OSError:
        pass  # the parent is gone: the results file on disk says it all


def worker_threads(jobs: int, threads: int | None = None) -> int:
    """Threads per worker: `threads` when given, else the usable cores shared out (at least one)."""
    return threads if threads is not None else max(1, usable_cores() // jobs)


def train_parallel(train_one: TrainOne, recipe: Recipe, todo: list[tuple[int, int]], device: torch.device, *,
                   resume: bool, fresh: bool, stop_after: int | None, jobs: int, console: Console,
                   threads: int | None = None) -> dict[int, dict[str, Any]]:
    """Train replicates (r, seed) with `train_one` in up to `jobs` worker processes with `threads`
    each (None: the cores shared out); {r: results document}."""
    threads = worker_threads(jobs, threads)
    each = f"{threads} thread{'s' if threads > 1 else ''} each"
    say(console, f"training {len(todo)} replicates, {jobs} at a time ({each})")
    context = mp.get_context("spawn")
    pending, running, docs, errors = list(todo), {}, {}, []
    try:
        while pending or running:
            while pending and len(running) < jobs and not errors:
                r, seed = pending.pop(0)
                reader, writer = context.Pipe(duplex=False)
                proc = context.Process(target=_worker, daemon=True, name=f"biasbench-seed{seed}",
                                       args=(writer, os.getpid(), train_one, recipe, r, seed, str(device), resume,
                                             fresh, stop_after, threads, console.quiet))
                proc.start()
                writer.close()  # the parent keeps only the reading end: EOF when the worker ends
                running[r] = (seed, proc, reader)
            _collect(running, docs, errors, console, timeout=None)
            if errors:
                pending.clear()  # let running replicates finish; start no more
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGUSR1 to the parent
        signum = signal_of(stop)
        for _, proc, _ in running.values():
            if proc.is_alive():
                os.kill(proc.pid, signum)
        while running:
            if not _collect(running, docs, errors, console, timeout=STOP_WAIT_S):
                break
        for _, proc, _ in running.values():  # a worker that did not end in time
            proc.kill()
            proc.join()
        raise Interrupted(run_paths(recipe, todo[0][1]).dir.parent, signum, None) from None
    if errors:
        raise UserError(errors[0])
    if stop_after is None and any(d["status"] == "interrupted" for d in docs.values()):
        raise Interrupted(run_paths(recipe, todo[0][1]).dir.parent, signal.SIGINT, None)
    return docs


def _collect(running: dict, docs: dict, errors: list, console: Console, timeout: float | None) -> bool:
    """Wait for workers to report or end; record what they sent. False when nothing came in time."""
    ready = wait([reader for _, _, reader in running.values()], timeout=timeout)
    if not ready:
        return False
    for r, (seed, proc, reader) in list(running.items()):
        if reader not in ready:
            continue
        try:
            kind, payload = reader.recv()
        except (EOFError, OSError):
            kind, payload = "lost", None
        proc.join()
        reader.close()
        del running[r]
        if kind in ("done", "interrupted") and payload is not None:
            docs[r] = payload
            say(console, f"seed {seed}: {payload['status']} after {payload['epochs_completed']} epochs")
        elif kind == "error":
            errors.append(payload)
        elif kind == "lost":
            errors.append(f"the worker training seed {seed} ended without a result (exit code {proc.exitcode}: "
                          "killed, or out of memory?); rerun with --resume to continue it")
    sys.stdout.flush()
    return True
