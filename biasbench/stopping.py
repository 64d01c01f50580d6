"""How a training process stops: signals become a resumable stop; workers end with their parent.

`stop_on_signals()` turns SIGINT (Ctrl-C), SIGTERM (Slurm, `timeout`, container runtimes) and
SIGUSR1 (Slurm's warning before a time limit, `#SBATCH --signal=USR1@120`) into
`StopRequested`, a `KeyboardInterrupt`, raised in the main thread at once: the trainer then
keeps its last checkpoint, writes results marked `interrupted`, and the CLI exits with
128 + the signal's number (130, 143, 138), so a requeued job resumes with `--resume`. Only the
first signal stops; later ones are ignored so that they cannot cut those last writes short
(SIGKILL still ends a process at once, and the atomic writes keep its files whole).

`die_with_parent(pid)` makes a worker process receive SIGTERM when its parent ends, however it
ends (SIGKILL included): PR_SET_PDEATHSIG on Linux, and a watchdog thread that polls the parent
PID (other systems, and a parent that died before the call).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class _BySignal(BaseException):
    """An exception raised for a signal, which it carries (`signum`) and keeps across processes."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self):  # rebuilt from its signal after crossing a process boundary
        return type(self), (self.signum,)


class StopRequested(_BySignal, KeyboardInterrupt):
    """A stop signal arrived; handled wherever Ctrl-C is."""


class StoppedBeforeTraining(_BySignal, Exception):
    """A stop signal before any training began. Not a KeyboardInterrupt on purpose: Typer turns
    those into a silent exit 130 whatever the signal; this one reaches `biasbench.cli.main`,
    which says so and exits with the signal's code."""


class Interrupted(Exception):
    """A run stopped by a signal: its results file says `interrupted`; `checkpoint_epoch` is the
    epoch its checkpoint holds (None: no checkpoint, output.checkpoint was false). Defined here,
    not in the trainer, so the CLI can catch it without importing torch (`biasbench --version`)."""

    def __init__(self, run_dir: Path, signum: int, checkpoint_epoch: int | None, doc: dict[str, Any] | None = None):
        super().__init__(str(run_dir))
        self.run_dir, self.signum, self.checkpoint_epoch, self.doc = run_dir, signum, checkpoint_epoch, doc

    def __reduce__(self):  # rebuilt with its own arguments after crossing a process boundary
        return type(self), (self.run_dir, self.signum, self.checkpoint_epoch, self.doc)


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for a plain Ctrl-C)."""
    return exc.signum if isinstance(exc, StopRequested) else int(signal.SIGINT)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + int(signum)


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None], signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """`handler` receives `signals` inside this block, the previous handlers come back on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Inside this block the first of `signals` raises StopRequested in the main thread; later
    ones are ignored (see `handling`)."""
    stopping = False

    def handler(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise StopRequested(signum)

    with handling(handler, signals):
        yield


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM, poll_s: float = 0.5,
                    grace_s: float = 30.0) -> None:
    """Receive `signum` when the process `parent_pid` (our parent) ends, even when it was
    SIGKILLed: Linux's PR_SET_PDEATHSIG, and a watchdog thread for other systems (or a parent
    that died before the prctl). `signum` is a clean stop (checkpoint, results `interrupted`);
    a worker still alive `grace_s` later, stuck wherever it was, exits hard."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signum), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signum)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="biasbench-parent-watchdog").start()
