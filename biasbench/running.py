"""The biasbench trainings running on this machine for this user, and the CPU threads each uses.

Two `biasbench train` commands started side by side each take every core; their thread pools
then spin against each other and an epoch takes 4-18x longer (issue 22, measured on 2 cores).
`sweep` and `train --jobs` share the cores out; separate commands cannot know of each other, so
each registers (PID, threads, command) in one small JSON file, per user, while it trains:
`$XDG_RUNTIME_DIR/biasbench/running.json`, else `TMPDIR/biasbench-UID/running.json`. A run that
starts reads the others (dropping PIDs that have ended, or been reused: the start time is kept)
and warns in one line when all their threads exceed the cores. The file is read and written
under an exclusive `flock`, in place.

The registry is advice: when its folder cannot be written, training goes on without it (a
read-only /tmp must not stop a run), and a damaged file counts as empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def registry_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "biasbench" / "running.json"
    return Path(tempfile.gettempdir()) / f"biasbench-{os.getuid()}" / "running.json"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as `sweep` counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's (a shared TMPDIR)
    return started is None or _start_time(pid) in (None, started)


@contextlib.contextmanager
def _locked_registry(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read-modify-write of a few hundred bytes
        raw = os.pread(fd, 1 << 20, 0)
        try:
            runs = json.loads(raw) if raw.strip() else {}
        except ValueError:
            runs = {}  # a writer killed mid-write: the live runs register again next time
        yield fd, runs if isinstance(runs, dict) else {}
    finally:
        os.close(fd)


def _write(fd: int, runs: dict[str, Any]) -> None:
    data = json.dumps(runs, indent=1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def others_alive(runs: dict[str, Any]) -> dict[str, Any]:
    return {pid: r for pid, r in runs.items()
            if pid.isdigit() and int(pid) != os.getpid() and isinstance(r, dict)
            and _alive(int(pid), r.get("started"))}


def oversubscription_line(others: dict[str, Any], threads: int, cores: int) -> str | None:
    """The warning, or None when every run's threads fit on the cores."""
    total = threads + sum(int(r.get("threads", 1)) for r in others.values())
    if not others or total <= cores:
        return None
    listed = "; ".join(f"PID {pid}: {r.get('threads')} threads, {r.get('command', '?')}"
                       for pid, r in sorted(others.items()))
    return (f"warning: {total} threads now share {cores} cores with the other biasbench "
            f"run{'s' if len(others) > 1 else ''} here ({listed}); runs that oversubscribe the cores slow "
            "each other several-fold: run them through one `biasbench sweep` or `train --jobs N`, or give each "
            "`train --threads` so that the threads add up to the cores (README: several runs at once)")


@contextlib.contextmanager
def registered(threads: int, command: str, path: Path | None = None) -> Iterator[str | None]:
    """Register this process's `threads` while the block runs; yields the oversubscription
    warning (or None). Dead entries are dropped on the way in and out."""
    path = path or registry_path()
    try:
        with _locked_registry(path) as (fd, runs):
            others = others_alive(runs)
            line = oversubscription_line(others, threads, usable_cores())
            _write(fd, {**others, str(os.getpid()): {"threads": threads, "command": command,
                                                     "started": _start_time(os.getpid())}})
    except OSError:
        yield None  # (see the module's docstring: advice only)
        return
    try:
        yield line
    finally:
        with contextlib.suppress(OSError), _locked_registry(path) as (fd, runs):
            _write(fd, others_alive(runs))
