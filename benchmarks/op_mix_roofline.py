"""What bounds the dense DAC layer: this core's rate for the kernels' own instruction mix (issue 22).

    python benchmarks/op_mix_roofline.py [--json benchmarks/results/op_mix_roofline.json]

No hardware counters in this VM (`perf stat -e instructions`: "not supported"), so the bound is
a roofline measured on the core itself: a C++ loop (built like the kernels: -O3 -march=native,
AVX-512) runs each pass's vector instructions with the operands in registers and enough
independent chains to hide latency, so its rate is the most this core issues of that mix:

    fma       acc += x * y                                   the plain layer's GEMMs: 1 per multiply-add
    forward   acc += W * max(z, -B)                          DAC forward: 2 per weight and sample
    backward  m = z > -B; dW += m*g*z; s += m*g; dz += m*g*W  DAC backward: 4 (compare + 3 masked)

Then, per dense shape (batch N, in C, out O), the DAC kernels' least time is N*C*O/16 x (2 / forward
rate + 4 / backward rate) and the plain layer's GEMMs' N*C*O/16 x 3 / fma rate; both are set
against the measured layer steps (`dac_layers.py`'s step: forward + backward through the layer,
one thread, CPU clock). `floor ratio` = DAC kernels at this core's peak for their mix over the
plain layer as measured: a DAC / plain target below it cannot be met on this core by any kernel
that issues these instructions. One thread, CPU clock (process_time): about 30 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import describe, kernel_paths, loadavg  # noqa: E402

from biasbench.fsutil import atomic_write_json  # noqa: E402
from biasbench.kernels.build import native_isa  # noqa: E402
from biasbench.layers.dac import DACLinear  # noqa: E402

SCHEMA = "biasbench-op-mix-roofline/1"
SHAPES = [(128, 141, 141), (128, 200, 200), (128, 250, 250), (128, 784, 256), (128, 256, 256)]

# Register-only loops, written out per chain (generated below: arrays made GCC keep the chains in
# memory around the asm). `keep` (an empty asm) tells the compiler a value changed, so nothing is
# hoisted out of the loop or folded, and costs no instruction. 12 chains: 4-cycle latency x 2
# ports needs 8 in flight.
def _loop(name: str, setup: str, body: str, chains: int, finish: str) -> str:
    lines = "\n".join(body.format(k=k) for k in range(chains))
    inits = "\n".join(setup.format(k=k) for k in range(chains))
    keeps = "\n".join(finish.format(k=k) for k in range(chains))
    return f"""
double {name}_loop(int64_t iters) {{
  __m512 x = _mm512_set1_ps(1.0001f), y = _mm512_set1_ps(0.9999f), w = _mm512_set1_ps(0.5f),
         nb = _mm512_set1_ps(-0.1f), g = _mm512_set1_ps(0.25f);
{inits}
  double t0 = cpu_now();
  for (int64_t it = 0; it < iters; ++it) {{
{lines}
  }}
  double sec = cpu_now() - t0;
{keeps}
  keep(x); keep(y); keep(w); keep(nb); keep(g);
  return sec;
}}
"""


SOURCE = r"""
#include <immintrin.h>
#include <cstdint>
#include <ctime>
static inline void keep(__m512& v) { asm volatile("" : "+v"(v)); }
static inline double cpu_now() {  // this thread's CPU time: other processes' turns not counted
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
""" + _loop(  # the plain layer's GEMMs: acc += x * y
    "fma", "  __m512 a{k} = _mm512_set1_ps({k}.0f);", "    keep(x); a{k} = _mm512_fmadd_ps(x, y, a{k});",
    12, "  keep(a{k});") + _loop(  # DAC forward: acc += W * max(z, -B)
    "forward", "  __m512 a{k} = _mm512_setzero_ps(), z{k} = _mm512_set1_ps(0.01f * {k});",
    "    keep(z{k}); a{k} = _mm512_fmadd_ps(w, _mm512_max_ps(z{k}, nb), a{k});", 12, "  keep(a{k});") + _loop(
    # DAC backward, per sample: compare; masked FMA (dW), masked add (sum of s), masked FMA (dz)
    "backward",
    "  __m512 dw{k} = _mm512_setzero_ps(), sb{k} = dw{k}, dz{k} = dw{k}, z{k} = _mm512_set1_ps(0.01f * {k});",
    "    keep(z{k}); {{ __mmask16 m = _mm512_cmp_ps_mask(z{k}, nb, _CMP_GT_OQ);"
    " dw{k} = _mm512_mask3_fmadd_ps(g, z{k}, dw{k}, m); sb{k} = _mm512_mask_add_ps(sb{k}, m, sb{k}, g);"
    " dz{k} = _mm512_mask3_fmadd_ps(g, w, dz{k}, m); }}", 4, "  keep(dw{k}); keep(sb{k}); keep(dz{k});")
# vector instructions per loop iteration, per loop
OPS_PER_ITER = {"fma": 12, "forward": 24, "backward": 16}


def build():
    from torch.utils.cpp_extension import load_inline
    return load_inline(name="biasbench_op_mix_roofline", cpp_sources=[SOURCE],
                       functions=["fma_loop", "forward_loop", "backward_loop"],
                       extra_cflags=["-O3", "-march=native"], verbose=False)


def rates(mod, iters: int, reps: int) -> dict[str, float]:
    """Billions of 512-bit vector instructions per second of each mix, best of `reps`."""
    out = {}
    for name, per in OPS_PER_ITER.items():
        fn = getattr(mod, f"{name}_loop")
        fn(iters // 10)
        out[name] = max(per * iters / fn(iters) for _ in range(reps)) / 1e9
    return out


def layer_step_seconds(n: int, c: int, o: int, dac: bool, reps: int) -> float:
    """Median CPU seconds of forward + backward through the layer (dac_layers.py's step)."""
    torch.manual_seed(0)
    z = torch.randn(n, c, requires_grad=True)
    if dac:
        layer = DACLinear(c, o)
        with torch.no_grad():
            layer.unshared_bias.normal_(0, 0.1)
        fn = layer
    else:
        lin = torch.nn.Linear(c, o)

        def fn(x):
            return lin(torch.relu(x))
    times = []
    for i in range(reps + 5):
        t0 = time.process_time()
        fn(z).backward(torch.ones(n, o))
        if i >= 5:
            times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "op_mix_roofline.json")
    ap.add_argument("--reps", type=int, default=101, help="layer steps per shape (median)")
    args = ap.parse_args()
    if native_isa() != "avx512":
        sys.exit("error: op_mix_roofline.py measures the AVX-512 build's instructions; this CPU has no AVX-512")
    torch.set_num_threads(1)
    load = loadavg()
    r = rates(build(), iters=20_000_000, reps=5)
    print(textwrap.fill(f"machine: {describe(None, kernel_paths())}; one thread, CPU clock; load average {load}",
                        80))
    print(textwrap.fill("512-bit vector instructions per ns, operands in registers: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), 80))
    rows = []
    print("ms per layer step (plain, DAC); least ms at the mix's peak (GEMM pk, DAC pk);\n"
          "floor = DAC pk / plain")
    print(f"{'N x in x out':<16} {'plain':>7} {'DAC':>7} {'ratio':>6} {'GEMM pk':>8} {'DAC pk':>7} {'floor':>6}")
    for n, c, o in SHAPES:
        vec = n * c * o / 16
        gemm_floor = vec * 3 / r["fma"] / 1e6
        dac_floor = vec * (2 / r["forward"] + 4 / r["backward"]) / 1e6
        plain = layer_step_seconds(n, c, o, False, args.reps) * 1e3
        dac = layer_step_seconds(n, c, o, True, args.reps) * 1e3
        rows.append({"shape": [n, c, o], "plain_ms": plain, "dac_ms": dac, "ratio": dac / plain,
                     "gemm_peak_ms": gemm_floor, "dac_peak_ms": dac_floor, "floor_ratio": dac_floor / plain})
        print(f"{f'{n} x {c} x {o}':<16} {plain:7.3f} {dac:7.3f} {dac / plain:5.2f}x {gemm_floor:8.3f} "
              f"{dac_floor:7.3f} {dac_floor / plain:5.2f}x")
    doc = {"schema": SCHEMA, "machine": describe(None, kernel_paths()), "torch": torch.__version__,
           "loadavg_before": load, "loadavg_after": loadavg(), "giga_vector_ops_per_s": r, "rows": rows}
    atomic_write_json(args.json, doc)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
