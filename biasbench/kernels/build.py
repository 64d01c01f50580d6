"""Build, cache and load the package's C++ CPU kernels, one build per vector width.

A kernel is a `.cpp` file next to this module (plus the shared `simd.h`) that registers a
TORCH_LIBRARY operator namespace. It is compiled with the system C++ compiler the first time it
is needed (10-20 s; later processes reuse the build) into `$BIASBENCH_CACHE_DIR/kernels/<name>`
(default `~/.cache/biasbench`). The build name hashes the sources, flags, torch version and the
CPU's model name and ISA flags, because `-march=native` code must not run on another CPU.

Instruction set (`ISAS`): `avx512` (64-byte vectors) where the CPU has AVX-512F/BW/VL/DQ,
`avx2` (32-byte vectors, compiled with `-mno-avx512f`) where it has AVX2 and FMA, `portable`
(32-byte GCC vectors, whatever -march=native gives) elsewhere. `BIASBENCH_CPU_ISA=avx2` forces
the 256-bit build on an AVX-512 machine: it is exactly what a CPU without AVX-512 runs, and the
tests compare both builds. Each ISA's build registers its own namespace (`<prefix>_<isa>`), so
both can be loaded in one process.

`BIASBENCH_DAC_CPP=0` disables every C++ kernel. Any build failure (no compiler, no headers,
compile error) is reported once as a RuntimeWarning and `available()` answers False, so callers
fall back to their pure-PyTorch paths.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from biasbench.errors import UserError

HERE = Path(__file__).resolve().parent
HEADERS = [HERE / "simd.h"]
BASE_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]


@dataclass(frozen=True)
class Isa:
    name: str
    vector_bits: int
    flags: tuple[str, ...]  # on top of BASE_FLAGS
    needs: tuple[str, ...]  # /proc/cpuinfo flags the CPU must have
    about: str


ISAS = {
    "avx512": Isa("avx512", 512, ("-DBIASBENCH_VEC_BYTES=64",),
                  ("avx512f", "avx512bw", "avx512vl", "avx512dq"), "AVX-512, 16 float lanes"),
    "avx2": Isa("avx2", 256, ("-mno-avx512f", "-DBIASBENCH_VEC_BYTES=32"), ("avx2", "fma"),
                "AVX2, 8 float lanes"),
    "portable": Isa("portable", 256, ("-DBIASBENCH_VEC_BYTES=32",), (),
                    "portable 32-byte vectors, 8 float lanes"),
}
ISA_ENV = "BIASBENCH_CPU_ISA"
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def cpu_info() -> str:
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


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    for line in cpu_info().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_isa() -> str:
    """The widest ISA this CPU runs."""
    flags = cpu_flags()
    for name in ("avx512", "avx2"):
        if all(f in flags for f in ISAS[name].needs):
            return name
    return "portable"


def supported_isas() -> list[str]:
    """Every ISA whose build runs on this CPU, widest first."""
    flags = cpu_flags()
    return [name for name, isa in ISAS.items() if all(f in flags for f in isa.needs)]


def selected_isa() -> str:
    """`BIASBENCH_CPU_ISA` if set (refused when this CPU cannot run it), else `native_isa()`."""
    wanted = os.environ.get(ISA_ENV, "").strip()
    if not wanted:
        return native_isa()
    if wanted not in ISAS:
        raise UserError(f"{ISA_ENV}={wanted!r} is not an instruction set the kernels know; "
                        f"use one of {', '.join(ISAS)} or unset it")
    if wanted not in supported_isas():
        raise UserError(f"{ISA_ENV}={wanted} needs CPU flags {', '.join(ISAS[wanted].needs)}, which "
                        f"this CPU lacks; use one of {', '.join(supported_isas())} or unset it")
    return wanted


def cache_dir() -> Path:
    root = os.environ.get("BIASBENCH_CACHE_DIR") or Path.home() / ".cache" / "biasbench"
    return Path(root) / "kernels"


def _flags(namespace: str, isa: str) -> list[str]:
    return [*BASE_FLAGS, *ISAS[isa].flags, f"-DBIASBENCH_NS={namespace}"]


def build_name(source_file: Path, namespace: str, isa: str) -> str:
    """The cache entry of one build: the namespace and a hash of everything the binary depends
    on (sources, flags, torch version, CPU model and flags)."""
    # The include path too: torch's JIT builder rebuilds an entry whose build arguments changed,
    # so two checkouts sharing one cache would rebuild each other's kernels on every switch.
    key = "\n".join([source_file.read_text(), *(h.read_text() for h in HEADERS), str(HERE),
                     " ".join(_flags(namespace, isa)), torch.__version__, cpu_info()])
    return namespace + "_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def build_source(source_file: Path, namespace: str, isa: str) -> None:
    """Compile and load `source_file` for `isa`, registering torch.ops.<namespace>; raises on
    any failure."""
    # torch logs "No CUDA runtime is found" on importing its extension builder without CUDA:
    # noise for a CPU-only build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    name = build_name(source_file, namespace, isa)
    build = cache_dir() / name
    build.mkdir(parents=True, exist_ok=True)
    if shutil.which("ninja") is None:  # the `ninja` wheel puts it beside this Python, maybe not on PATH
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    cpp_extension.load_inline(name=name, cpp_sources=[source_file.read_text()],
                              extra_cflags=_flags(namespace, isa), extra_include_paths=[str(HERE)],
                              build_directory=str(build), is_python_module=False,
                              no_implicit_headers=True, with_cuda=False, verbose=False)


@dataclass
class CpuKernel:
    """One C++ kernel file, built and loaded at most once per ISA per process."""

    source: str  # file name next to this module
    prefix: str  # operator namespace prefix; the ISA's name is appended
    what: str  # for messages
    state: dict[str, dict[str, object]] = field(default_factory=dict)

    def build(self, isa: str) -> None:
        build_source(HERE / self.source, self.namespace(isa), isa)

    def namespace(self, isa: str) -> str:
        return f"{self.prefix}_{isa}"

    def available(self, isa: str | None = None) -> bool:
        """True once the `isa` build (default: `selected_isa()`) is loaded; the first call
        builds. A failure warns once and answers False; `BIASBENCH_DAC_CPP=0` answers False."""
        isa = isa or selected_isa()
        st = self.state.setdefault(isa, {})
        if "ok" not in st:
            with _lock:
                if "ok" not in st:
                    st["ok"] = False
                    if os.environ.get("BIASBENCH_DAC_CPP", "1") == "0":
                        return False
                    try:
                        self.build(isa)
                        st["ok"] = hasattr(getattr(torch.ops, self.namespace(isa)), "forward")
                    except Exception as exc:  # no compiler, missing headers, compile error...
                        st["error"] = exc
                        first = str(exc).splitlines()[0] if str(exc) else ""
                        warnings.warn(f"biasbench: {self.what} C++ kernel ({isa}) unavailable "
                                      f"({type(exc).__name__}: {first}); using the slower "
                                      "pure-PyTorch path", RuntimeWarning, stacklevel=3)
        return bool(st["ok"])

    def error(self, isa: str | None = None) -> object:
        return self.state.get(isa or selected_isa(), {}).get("error")

    def ops(self, isa: str | None = None):
        """torch.ops.<prefix>_<isa>, built if need be; raises when that build is unavailable."""
        isa = isa or selected_isa()
        if not self.available(isa):
            raise RuntimeError(f"the {self.what} C++ kernel ({isa}) is unavailable: {self.error(isa)}")
        st = self.state[isa]
        if "ops" not in st:  # (looked up once: layers call this on every forward)
            st["ops"] = getattr(torch.ops, self.namespace(isa))
        return st["ops"]


def library_path(kernel: CpuKernel, isa: str) -> Path:
    """The shared library of `kernel`'s `isa` build (built or not)."""
    name = build_name(HERE / kernel.source, kernel.namespace(isa), isa)
    return cache_dir() / name / f"{name}.so"


def describe(kernel: CpuKernel, isa: str | None = None) -> str:
    """Which path a kernel takes here, for benchmark headers: 'C++ avx512 (AVX-512, 16 float
    lanes)' or 'pure PyTorch (...)'."""
    isa = isa or selected_isa()
    if kernel.available(isa):
        return f"C++ {isa} ({ISAS[isa].about})"
    if os.environ.get("BIASBENCH_DAC_CPP", "1") == "0":
        return "pure PyTorch (BIASBENCH_DAC_CPP=0)"
    return f"pure PyTorch (C++ {isa} build failed: {kernel.error(isa)})"
