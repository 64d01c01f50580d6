"""A pool of long-lived worker processes, each with its own thread count, that die with their parent.

    with WorkerPool(jobs=2, threads=1) as pool:
        for event in pool.run(train_one, [(key, (recipe, seed)), ...]):
            ...  # Started / Finished / Failed / Crashed, in the order they happen

Why not `concurrent.futures.ProcessPoolExecutor`: a sweep needs to know which task a worker is
running when it starts (the manifest says "running"), to lose one task, not the pool, when a
worker dies (out of memory, a segfault), and to stop cleanly on Ctrl-C or SIGTERM with every
busy worker leaving a resumable checkpoint.

Workers are started once (`spawn`: a fresh interpreter, no inherited locks or thread pools) and
run many tasks, so a short task does not pay interpreter and torch start-up. They end with the
parent even when it is SIGKILLed: Linux's PR_SET_PDEATHSIG sends them SIGTERM, and a watchdog
thread checks the parent's pid every second (other systems, or a parent that died before the
prctl). In a worker, SIGINT, SIGTERM and SIGUSR1 (Slurm's warning before a time limit, sent to the
job's processes) raise KeyboardInterrupt once (the trainer's Ctrl-C path: checkpoint kept,
results `interrupted`); the worker then reports and exits.

In the parent, `run` turns SIGINT, SIGTERM and SIGUSR1 into a stop: no new tasks, busy workers
are interrupted, their results are still yielded, then `run` raises KeyboardInterrupt.

`slots`: one environment per worker place (`CUDA_VISIBLE_DEVICES` for `sweep --gpus`), set in
the worker before anything else runs there, so CUDA, initialised later, sees only its device. A
worker that dies is replaced in its own place.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from biasbench.stopping import STOP_SIGNALS, die_with_parent, handling

_interrupted = False  # in a worker: a stop signal (SIGINT, SIGTERM, SIGUSR1) arrived


@dataclass(frozen=True)
class Event:
    """`started` (a worker took the task), `finished` (result), `failed` (the task raised:
    `error` is its one-line summary, `traceback` the rest, `exception` the exception when it
    could be pickled), `crashed` (the worker process died: `error` says how), or `tick` (half a
    second without news: a chance to flush state)."""

    kind: str
    key: Any
    pid: int
    slot: int = 0  # the worker's place (its environment: `WorkerPool.slots[slot]`)
    result: Any = None
    error: str = ""
    traceback: str = ""
    exception: BaseException | None = None


# ---------------------------------------------------------------------------------------------
# The worker side.
# ---------------------------------------------------------------------------------------------


def _interrupt_once(signum: int, frame: Any) -> None:
    # Later signals must not break the checkpoint: they return here. Setting them to SIG_IGN
    # instead turns one already pending (the parent's SIGINT after the OS's SIGTERM to the whole
    # job) into an "OSError: Signal N ignored due to race condition" traceback.
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise KeyboardInterrupt


def _worker_main(conn: Connection, parent_pid: int, threads: int | None, env: dict[str, str]) -> None:
    os.environ.update(env)  # first: CUDA reads CUDA_VISIBLE_DEVICES when it initialises
    die_with_parent(parent_pid)
    for s in STOP_SIGNALS:
        signal.signal(s, _interrupt_once)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
    try:
        while not _interrupted:
            task = conn.recv()
            if task is None:
                break
            key, fn, args = task
            try:
                _send(conn, ("started", key, None))
                message = ("finished", key, fn(*args))
            except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
                message = ("failed", key, _failure(e))
            _send(conn, message)
    except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionResetError):
        pass  # interrupted while idle, or the parent is gone


def _send(conn: Connection, message: tuple) -> None:
    """Send whole: a signal arriving mid-message would leave the parent half a message."""
    signals = set(STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        conn.send(message)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _failure(e: BaseException) -> tuple[str, str, BaseException | None]:
    summary = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{type(e).__name__}: {summary}" if summary else type(e).__name__
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        import pickle

        pickle.loads(pickle.dumps(e))  # the parent must be able to rebuild it, not only receive it
        exc: BaseException | None = e
    except Exception:  # noqa: BLE001 - some exceptions do not pickle or rebuild; the text still goes back
        exc = None
    return line, text, exc


# ---------------------------------------------------------------------------------------------
# The parent side.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: Any
    conn: Connection
    slot: int = 0  # its place among the pool's `slots`
    key: Any = None  # the task it was given
    busy: bool = False  # it has a task
    running: bool = False  # the task has started (the worker said so)


class WorkerPool:
    def __init__(self, jobs: int, threads: int | None = None, start_method: str = "spawn",
                 slots: list[dict[str, str]] | None = None):
        if jobs < 1:
            raise ValueError("a pool needs at least one worker")
        if slots is not None and len(slots) != jobs:
            raise ValueError(f"{len(slots)} worker environments for {jobs} workers")
        self.jobs, self.threads = jobs, threads
        self.slots = slots if slots is not None else [{} for _ in range(jobs)]
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._stopping = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start_worker(self) -> _Worker:
        taken = {w.slot for w in self._workers if w.process.is_alive()}
        slot = min(set(range(self.jobs)) - taken)  # a dead worker's place is free again
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main,
                                    args=(child_conn, os.getpid(), self.threads, self.slots[slot]),
                                    name="biasbench-worker", daemon=True)
        # The child starts with SIGINT ignored (inherited), so a Ctrl-C while it boots cannot kill
        # it half-way; it installs its own handler once it is ready to run tasks.
        with _sigint_ignored():
            process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn, slot)
        self._workers.append(worker)
        return worker

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.is_alive()]

    def stop(self) -> None:
        """Start no new task; interrupt the busy workers (they checkpoint and report)."""
        self._stopping = True
        for w in self._workers:
            if w.running and w.process.is_alive():  # the others are told when their task starts
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, signal.SIGINT)

    def run(self, fn: Callable[..., Any], tasks: Iterable[tuple[Any, tuple]]) -> Iterator[Event]:
        """Run `fn(*args)` for every `(key, args)`; yield events as they happen. Raises
        KeyboardInterrupt after the busy workers have reported, when stopped by a signal."""
        pending = deque(tasks)
        interrupted = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal interrupted
            interrupted = True
            self.stop()

        with handling(on_signal):
            while True:
                self._dispatch(fn, pending)
                busy = [w for w in self._workers if w.busy]
                if not busy:
                    break
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                if not ready:
                    yield Event("tick", None, 0)  # nothing happened for half a second
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        yield from self._collect(w)
        if interrupted:
            raise KeyboardInterrupt

    def _dispatch(self, fn: Callable[..., Any], pending: deque) -> None:
        if self._stopping:
            return
        while pending:
            idle = [w for w in self._workers if not w.busy and w.process.is_alive()]
            if not idle and len([w for w in self._workers if w.process.is_alive()]) < self.jobs:
                idle = [self._start_worker()]
            if not idle:
                return
            key, args = pending.popleft()
            worker = idle[0]
            worker.key, worker.busy = key, True
            worker.conn.send((key, fn, args))

    def _collect(self, w: _Worker) -> Iterator[Event]:
        """Read what a worker sent; a dead worker's task becomes a `crashed` event."""
        pid = w.process.pid
        try:
            while w.conn.poll():
                kind, key, payload = w.conn.recv()
                if kind == "started":
                    w.running = True
                    if self._stopping:  # stopped while this worker was on its way to the task
                        os.kill(pid, signal.SIGINT)
                    yield Event("started", key, pid, w.slot)
                    continue
                w.busy, w.running, w.key = False, False, None
                if kind == "finished":
                    yield Event("finished", key, pid, w.slot, result=payload)
                else:
                    line, text, exc = payload
                    yield Event("failed", key, pid, w.slot, error=line, traceback=text, exception=exc)
                return
        except (EOFError, ConnectionResetError, OSError):
            pass
        if w.busy and not w.process.is_alive():
            w.process.join()
            code = w.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            key = w.key
            w.busy, w.running, w.key = False, False, None
            self._workers.remove(w)
            yield Event("crashed", key, pid, w.slot, error=f"worker process died ({how})")
        elif not w.busy and not w.process.is_alive():
            self._workers.remove(w)  # it finished its last task and left (after an interrupt)

    def close(self, timeout: float = 10.0) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                w.conn.send(None)
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers.clear()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


