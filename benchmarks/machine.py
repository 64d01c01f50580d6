"""What a benchmark records about the machine it ran on, and `--isa avx2` (benchmarks/).

`--isa avx2` on an AVX-512 CPU restarts the script with every library that picks its code from
the CPU limited to AVX2: our kernels (BIASBENCH_CPU_ISA), oneDNN's convolutions
(ONEDNN_MAX_CPU_ISA), ATen's own kernels (ATEN_CPU_CAPABILITY) and MKL
(MKL_ENABLE_INSTRUCTIONS). The same cores and caches then stand in for a CPU without AVX-512,
baseline and DAC alike; each library reads its variable once, at start-up, hence the restart.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

ISA_ENV = {"avx2": {"BIASBENCH_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def reexec_for_isa(isa: str | None) -> None:
    """Restart this process with ISA_ENV[isa] set, unless it already is (or isa is None)."""
    if isa is None or all(os.environ.get(k) == v for k, v in ISA_ENV[isa].items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ISA_ENV[isa]})


# --clock: `wall` (perf_counter, what a user waits) or `cpu` (process_time: CPU seconds of all
# this process's threads). On a shared machine another process's load stretches wall time but
# not CPU time; with one thread, CPU time is the step's own work. With several threads it sums
# them (spin-waits at barriers included), so it measures work, not latency.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def cpu_name() -> str:
    from biasbench.kernels.build import cpu_info
    for line in cpu_info().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def kernel_paths() -> dict[str, str]:
    """Which implementation each fused layer takes here (C++ with its ISA, or why not)."""
    from biasbench.kernels import build, dac_cpu, dac_linear_cpu, raa_cpu
    return {"dac_conv": build.describe(dac_cpu.KERNEL), "dac_linear": build.describe(dac_linear_cpu.KERNEL),
            "raa": build.describe(raa_cpu.KERNEL)}


def describe(isa_limit: str | None, kernels: dict[str, str], gpu: str | None = None) -> str:
    """One sentence: the CPU, torch, the ISA limit, the kernels (and the GPU)."""
    import torch
    limit = f", oneDNN / ATen / MKL and our kernels limited to {isa_limit.upper()}" if isa_limit else ""
    on_gpu = f", {gpu}" if gpu else ""
    return (f"{cpu_name()} ({os.cpu_count()} cores{on_gpu}), torch {torch.__version__}{limit}; DAC kernel "
            f"{kernels['dac_conv']}, dense {kernels['dac_linear']}, RAA {kernels['raa']}")
