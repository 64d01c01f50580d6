"""Tasks for the worker-pool tests (importable by spawned workers), and a parent process that
the tests SIGKILL or SIGTERM: `python -m tests.pool_tasks N` starts N sleeping tasks, prints
`pids <parent> <worker> ...` and then every event it gets."""

from __future__ import annotations

import os
import sys
import time


def whoami(x: int) -> tuple[int, int, int]:
    import torch

    return x, os.getpid(), torch.get_num_threads()


def fail(x: int) -> None:
    raise ValueError(f"task {x} is bad")


def full_disk(path: str) -> None:
    from pathlib import Path

    from biasbench.fsutil import WriteError

    raise WriteError(Path(path), "No space left on device (ENOSPC)")


def die(code: int) -> None:
    os._exit(code)


def sleep_until_interrupted(seconds: float) -> str:
    # Short naps, like a training's steps: a signal the kernel hands to another thread (the
    # parent watchdog) reaches the main thread's handler at once, not after one long sleep.
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return "slept"
    except KeyboardInterrupt:
        return "interrupted"


def main(n: int) -> None:
    from biasbench.pool import WorkerPool

    with WorkerPool(n) as pool:
        events = pool.run(sleep_until_interrupted, [(i, (120.0,)) for i in range(n)])
        started = set()
        try:
            for event in events:
                started.add(event.key) if event.kind == "started" else None
                if event.kind == "started" and len(started) == n:  # every worker is in its task
                    print("pids", os.getpid(), *pool.pids, flush=True)
                elif event.kind not in ("started", "tick"):
                    print(event.kind, event.key, event.result or event.error, flush=True)
        except KeyboardInterrupt:
            print("stopped", flush=True)
            sys.exit(130)


if __name__ == "__main__":
    main(int(sys.argv[1]))
