"""Tasks for the `sweep --gpus` tests, importable by spawned workers."""

from __future__ import annotations

import os


def seen_device(x: int) -> tuple[int, int, str | None, bool]:
    """(task, worker pid, the worker's CUDA_VISIBLE_DEVICES, whether CUDA was initialised before
    the task: it must not be, or the variable would have come too late)."""
    import torch

    return x, os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_initialized()


def die_on(x: int, victim: int) -> tuple[int, int, str | None, bool]:
    """Task `victim` kills its worker; the others take a while, so that the surviving worker is
    busy when the pool sees the death and must start a replacement for the next task."""
    import time

    if x == victim:
        os._exit(3)
    time.sleep(0.5)
    return seen_device(x)
