"""Fused CPU DAC conv: C++ compiled on first use, pure-PyTorch fallback when that fails.

The source is `dac_cpu.cpp` next to this file. It is compiled with the system C++ compiler the
first time a ReLU DAC conv runs on CPU (about a minute; later processes reuse the build) into
`$BIASBENCH_CACHE_DIR/kernels/<name>` (default `~/.cache/biasbench`). The build name hashes the
source, flags, torch version and CPU model, because `-march=native` code must not be reused on
another CPU. Set `BIASBENCH_DAC_CPP=0` to disable it. Any failure (no compiler, no headers,
compile error) is reported once as a warning and `available()` answers False, so callers fall
back to the chunked path. `build_source` / `load_once` are that machinery for any CPU kernel
of the package (`dac_linear_cpu.py` uses them for the dense layer).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("dac_cpu.cpp")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_model() -> str:
    """The CPU's model name and ISA flags: a -march=native build is only valid where both match
    (a model name alone, e.g. "AMD EPYC" under a hypervisor, can cover CPUs with and without
    AVX-512)."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                found[key] = line
    except OSError:
        pass
    if found:
        return "\n".join(found.values())
    return f"{platform.processor()} {platform.machine()}"


def cache_dir() -> Path:
    root = os.environ.get("BIASBENCH_CACHE_DIR") or Path.home() / ".cache" / "biasbench"
    return Path(root) / "kernels"


def build_source(source_file: Path, prefix: str) -> None:
    """Compile and load `source_file` (a TORCH_LIBRARY operator) into the kernel cache, named
    `prefix` + a hash of the source, flags, torch version and CPU model/flags. Shared by every
    CPU kernel of this package; raises on any failure."""
    # torch logs "No CUDA runtime is found" on importing its extension builder without CUDA:
    # noise for a CPU-only build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    source = source_file.read_text()
    key = "\n".join([source, " ".join(_FLAGS), torch.__version__, _cpu_model()])
    name = prefix + hashlib.sha256(key.encode()).hexdigest()[:12]
    build = cache_dir() / name
    build.mkdir(parents=True, exist_ok=True)
    if shutil.which("ninja") is None:  # the `ninja` wheel puts it beside this Python, maybe not on PATH
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    cpp_extension.load_inline(name=name, cpp_sources=[source], extra_cflags=_FLAGS,
                              build_directory=str(build), is_python_module=False,
                              no_implicit_headers=True, with_cuda=False, verbose=False)


def load_once(state: dict[str, object], build, namespace: str, what: str) -> bool:
    """True once `build()` has registered torch.ops.<namespace>.forward; the first call builds.
    `state` caches the answer (and the error); a failure warns once. `BIASBENCH_DAC_CPP=0`
    answers False without building."""
    if "ok" not in state:
        with _lock:
            if "ok" not in state:
                state["ok"] = False
                if os.environ.get("BIASBENCH_DAC_CPP", "1") == "0":
                    return False
                try:
                    build()
                    state["ok"] = hasattr(getattr(torch.ops, namespace), "forward")
                except Exception as exc:  # no compiler, missing headers, compile error...
                    state["error"] = exc
                    warnings.warn(f"biasbench: {what} C++ kernel unavailable ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); using the "
                                  "slower pure-PyTorch path", RuntimeWarning, stacklevel=3)
    return bool(state["ok"])


def _build() -> None:
    build_source(_SOURCE, "biasbench_dac_cpu_")


def available() -> bool:
    """True once the C++ conv operator is loaded; compiles it on the first call."""
    return load_once(_state, lambda: _build(), "biasbench_dac", "DAC")


class _DACConvCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, unshared_bias, stride, padding):
        z, weight, unshared_bias = z.contiguous(), weight.contiguous(), unshared_bias.contiguous()
        ctx.save_for_backward(z, weight, unshared_bias)  # only the inputs: planes are rebuilt
        ctx.conf = (stride, padding)
        return torch.ops.biasbench_dac.forward(z, weight, unshared_bias, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, weight, unshared_bias = ctx.saved_tensors
        stride, padding = ctx.conf
        gz, gw, gb = torch.ops.biasbench_dac.backward(z, weight, unshared_bias, grad.contiguous(),
                                                       stride, padding)
        return gz, gw, gb, None, None


def dac_conv2d(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor, stride: int,
               padding: int) -> torch.Tensor:
    return _DACConvCPU.apply(z, weight, unshared_bias, stride, padding)
