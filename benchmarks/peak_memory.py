"""Peak memory of one step, shared by the benchmarks (Linux only).

A step's peak is the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over the resident set just before the step. It is measured in a child
process started with MALLOC_MMAP_THRESHOLD_=65536 (every tensor-sized allocation is its own mmap
and goes back to the OS when freed), so it counts everything the step touches: tensors, saved
activations, gradients, optimiser state created in the step and kernel scratch buffers.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def supported() -> bool:
    return Path("/proc/self/clear_refs").exists()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_step_bytes(make: Callable[[], Callable[[], None]]) -> int:
    """Build a step with make(), run it once to warm up, then measure one more run."""
    step = make()
    step()  # warm-up, so one-off allocations are not counted
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    step()
    return (_rss_kib("VmHWM") - before) * 1024


def run_child(script: str, args: list[str]) -> dict | None:
    """Run `python script *args` with the malloc settings above; its last stdout line is JSON.

    Returns None where memory cannot be measured (not Linux) or the child failed.
    """
    if not supported():
        return None
    env = dict(os.environ, **CHILD_ENV)
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
