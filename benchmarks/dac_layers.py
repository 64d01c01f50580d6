"""DAC layers against plain (ReLU -> conv / ReLU -> Linear) layers, side by side.

Examples:
  python benchmarks/dac_layers.py --threads 1
  python benchmarks/dac_layers.py --threads 1 --clock cpu --isa avx2
  python benchmarks/dac_layers.py --impl chunked --no-memory --reps 3
  python benchmarks/dac_layers.py --preset issue22 --json out.json   # issue 22's dense rows

Conv rows: the CIFAR ResNet20 3x3 shapes at --batch. Dense rows: DACLinear
against ReLU + nn.Linear on the DAC paper's SGEMM MLP shapes (141x141, 200x200,
250x250) at --dense-batch, and on the MNIST MLP's shapes (784x256, 256x256) at
--mnist-batch (issue 22). Whole models: benchmarks/variant_step.py (the one
place the step ratios come from; `--preset mnist_mlp` for the MNIST MLP).

Time: forward + backward of one layer, plain and DAC interleaved run by run so
that load from other processes hits both alike; `time` is the ratio of the
medians, `min` of the fastest runs. `--isa avx2` runs as on a CPU without
AVX-512 (benchmarks/machine.py). The header names the kernel build that ran;
the JSON also records the machine and /proc/loadavg before and after.
`--threads 1,2` measures every case at each thread count; `--only dense` leaves
out the conv rows. `--preset issue22`: the dense rows only, batch 128, 1 and 2
threads, 21 runs, no memory; it ends with issue 22's figures (the SGEMM widths
at 1 thread, 784 inputs at 2 threads; benchmarks/perf_table.py reads them).
Peak memory: in a child process started with MALLOC_MMAP_THRESHOLD_=65536 (every
tensor-sized allocation is its own mmap and goes back to the OS when freed), the
rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over the resident set just before the forward pass: it
counts tensors, saved activations, gradients and kernel scratch. Linux only;
elsewhere it is reported as unavailable.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CLOCKS, ISA_ENV, describe, kernel_paths, loadavg, reexec_for_isa  # noqa: E402  (benchmarks/)
from peak_memory import peak_step_bytes, run_child  # noqa: E402
from perf_table import dense_figures  # noqa: E402  (benchmarks/)

from biasbench.layers import DACConv2d, DACLinear  # noqa: E402

SCHEMA = "biasbench-dac-layers/2"

# (in, out, spatial size, stride) of the 3x3 convs in a CIFAR ResNet20.
LAYERS = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]
# (in, out) of the hidden layers of the DAC paper's SGEMM MLPs.
DENSE = [(141, 141), (200, 200), (250, 250)]
# (in, out) of the first two layers of the MNIST MLP 784-256-256-10 (issue 22).
MNIST_DENSE = [(784, 256), (256, 256)]


# -- the steps measured -------------------------------------------------------------------------

def layer_step(cin: int, cout: int, hw: int, stride: int, batch: int, dac: bool,
               impl: str) -> Callable[[], None]:
    torch.manual_seed(0)
    z = torch.randn(batch, cin, hw, hw, requires_grad=True)
    if dac:
        layer = DACConv2d(cin, cout, 3, stride, 1, impl=impl)
        with torch.no_grad():
            layer.unshared_bias.normal_(0, 0.1)
        fn = layer
    else:
        conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

        def fn(x):
            return conv(torch.relu(x))

    def step():
        out = fn(z)
        out.backward(torch.ones_like(out))
    return step


def dense_step(cin: int, cout: int, batch: int, dac: bool, impl: str) -> Callable[[], None]:
    torch.manual_seed(0)
    z = torch.randn(batch, cin, requires_grad=True)
    if dac:
        # the fused kernels are CPU / ReLU only; "triton" means chunked for DACLinear
        layer = DACLinear(cin, cout, impl="chunked" if impl == "triton" else impl)
        with torch.no_grad():
            layer.unshared_bias.normal_(0, 0.1)
        fn = layer
    else:
        lin = nn.Linear(cin, cout)

        def fn(x):
            return lin(torch.relu(x))

    def step():
        out = fn(z)
        out.backward(torch.ones_like(out))
    return step


def cases(args) -> list[tuple[str, Callable[[bool], Callable[[], None]]]]:
    out = [(f"conv {ci}->{co} {hw}x{hw} s{s}",
            lambda dac, c=(ci, co, hw, s): layer_step(*c, args.batch, dac, args.impl))
           for ci, co, hw, s in LAYERS] if args.only != "dense" else []
    if args.only == "conv":
        return out
    out += [(f"dense {ci}x{co} b{args.dense_batch}",
             lambda dac, c=(ci, co): dense_step(*c, args.dense_batch, dac, args.impl))
            for ci, co in DENSE]
    out += [(f"dense {ci}x{co} b{args.mnist_batch}",
             lambda dac, c=(ci, co): dense_step(*c, args.mnist_batch, dac, args.impl))
            for ci, co in MNIST_DENSE]
    return out


def time_pair(plain: Callable[[], None], dac: Callable[[], None], reps: int,
              clock: str) -> tuple[list[float], list[float]]:
    now = CLOCKS[clock]
    plain(), dac()  # warm-up: lazy init, kernel compilation, allocator
    tp, td = [], []
    for _ in range(reps):
        for fn, acc in ((plain, tp), (dac, td)):
            t = now()
            fn()
            acc.append(now() - t)
    return tp, td


# -- peak memory (child process; benchmarks/peak_memory.py) ------------------------------------

def memory_child(args) -> None:
    res = {}
    for name, make in cases(args):
        res[name] = [peak_step_bytes(lambda m=make: m(False)), peak_step_bytes(lambda m=make: m(True))]
        gc.collect()
    print(json.dumps(res))


def measure_memory(args) -> dict[str, list[int]] | None:
    cmd = ["--memory-child", "--batch", str(args.batch), "--dense-batch", str(args.dense_batch),
           "--mnist-batch", str(args.mnist_batch), "--impl", args.impl] + (["--only", args.only] if args.only else [])
    return run_child(__file__, cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="batch of the conv rows (default 128)")
    ap.add_argument("--dense-batch", type=int, default=256, help="batch of the SGEMM dense rows")
    ap.add_argument("--mnist-batch", type=int, default=128, help="batch of the MNIST dense rows (default 128)")
    ap.add_argument("--reps", type=int, default=9, help="timed runs per case (default 9)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed; cpu: process CPU time, steadier on a shared machine")
    ap.add_argument("--impl", default="auto", choices=["auto", "cpp", "chunked", "triton"],
                    help="DAC implementation (default: the fastest available)")
    ap.add_argument("--threads", help="comma-separated thread counts, each a pass over the cases "
                    "(default: torch's choice)")
    ap.add_argument("--only", choices=["conv", "dense"], help="only the conv or only the dense rows")
    ap.add_argument("--preset", choices=["issue22"], help="issue22: --only dense --dense-batch 128 --threads 1,2 "
                    "--reps 21 --no-memory")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), help="run as on a CPU without AVX-512 (benchmarks/machine.py)")
    ap.add_argument("--json", type=Path, help="write the results and the machine to this file")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory child")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.preset == "issue22":
        args.only, args.dense_batch, args.threads, args.reps, args.memory = "dense", 128, "1,2", 21, False
    reexec_for_isa(args.isa)
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    torch.set_num_threads(thread_counts[0])
    if args.memory_child:
        return memory_child(args)

    from tabulate import tabulate

    from biasbench.kernels import dac_cpu, dac_linear_cpu
    impl = dense_impl = args.impl
    if impl == "auto":
        impl = "cpp" if dac_cpu.available() else "chunked"
        dense_impl = "cpp" if dac_linear_cpu.available() else "chunked"
    load_before = loadavg()
    mem = measure_memory(args) if args.memory else None
    rows, records = [], []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for name, make in cases(args):
            tp, td = time_pair(make(False), make(True), args.reps, args.clock)
            mp_, md_ = statistics.median(tp), statistics.median(td)
            rec = {"case": name, "threads": threads, "plain_s": mp_, "dac_s": md_, "time_ratio": md_ / mp_,
                   "time_ratio_min": min(td) / min(tp)}
            if mem:
                mp, md = mem[name]
                rec.update(plain_peak_bytes=mp, dac_peak_bytes=md, memory_ratio=md / mp if mp else None)
            records.append(rec)
            rows.append([name, str(threads), f"{mp_ * 1e3:.2f}", f"{md_ * 1e3:.2f}", f"{rec['time_ratio']:.2f}x",
                         f"{rec['time_ratio_min']:.2f}x",
                         f"{rec['memory_ratio']:.2f}x" if mem and rec.get("memory_ratio") else "n/a"])
            gc.collect()
    kernels = kernel_paths()
    meta = {"machine": describe(args.isa, kernels), "batch": args.batch, "dense_batch": args.dense_batch,
            "mnist_batch": args.mnist_batch,
            "reps": args.reps, "clock": args.clock, "impl": impl, "dense_impl": dense_impl, "torch": torch.__version__,
            "threads": thread_counts, "device": "cpu", "isa_limit": args.isa, "kernels": kernels,
            "loadavg_before": load_before, "loadavg_after": loadavg()}
    print(textwrap.fill(f"DAC vs ReLU+conv / ReLU+Linear, batch {args.batch} (dense {args.dense_batch}), "
                        f"impl={impl} (dense {dense_impl}), threads {args.threads or thread_counts[0]}, "
                        f"{args.reps} runs, "
                        f"{args.clock} clock; "
                        f"{meta['machine']}", 80, break_on_hyphens=False))
    headers = ["case", "threads", "plain ms", "DAC ms", "time", "min", "memory"]
    if sys.stdout.isatty():
        print(tabulate(rows, headers=headers))
    else:  # one grep-able line per case
        for row in rows:
            print(f"{row[0]} {row[1]}t: plain {row[2]} DAC {row[3]} ms time {row[4]} min {row[5]} mem {row[6]}")
    doc = {"schema": SCHEMA, "meta": meta, "results": records}
    for line in dense_figures(doc):
        print(line)
    if args.json:
        from biasbench.fsutil import atomic_write_json
        atomic_write_json(args.json, doc)


if __name__ == "__main__":
    main()
