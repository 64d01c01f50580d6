"""A model too large for the machine is refused before it is allocated.

The model is first built on the meta device (no memory, no initialisation), its parameters and
buffers are summed, and the total is compared with the memory free on the device it will train
on: a too-wide model is one line with both sizes, not the allocator's traceback (or minutes of
swapping). Training needs more than the weights (gradients, optimiser state, activations), so
passing this check does not promise the run fits; failing it proves the run cannot.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import torch
from torch import nn

from biasbench.errors import UserError


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (works on the meta device)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device`: the GPU's free memory, or the host's available
    memory (MemAvailable: free plus what the kernel can reclaim); None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(n: int) -> str:
    """4,194,304 -> '4.0 MiB'; under a KiB in bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def build_within_memory(build: Callable[[], nn.Module], device: torch.device, what: str) -> nn.Module:
    """`build()` (a model on the CPU, then moved to `device`), refused in one line when its
    weights alone exceed the memory free on the CPU or on `device`. `what` names the model."""
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the real build draws the same numbers
            need: int | None = model_bytes(build())
    except (NotImplementedError, RuntimeError):  # an op with no meta kernel (a library model's init):
        need = None  # no estimate first; an allocation that fails is still caught below
    random.setstate(state)
    for where in dict.fromkeys([torch.device("cpu"), device]):
        free = free_bytes(where)
        if need is not None and free is not None and need > free:
            raise _too_large(what, need, where, free)
    try:
        return build()
    except (torch.OutOfMemoryError, MemoryError):
        raise _too_large(what, need, torch.device("cpu"), free_bytes(torch.device("cpu"))) from None
    except RuntimeError as e:
        if "can't allocate" not in str(e):
            raise
        raise _too_large(what, need, torch.device("cpu"), free_bytes(torch.device("cpu"))) from None


def _too_large(what: str, need: int | None, where: torch.device, free: int | None) -> UserError:
    free_text = f"has {size_text(free)} free" if free is not None else "could not hold them"
    size = size_text(need) if need is not None else "more memory than is free"
    return UserError(f"{what} needs {size} for its weights alone, and {where.type} memory {free_text}; "
                     "make the model smaller (model.options)")
