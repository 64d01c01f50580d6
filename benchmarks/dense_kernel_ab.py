"""The dense DAC kernel against an earlier revision of itself and the plain layer, side by side.

Examples:
  python benchmarks/dense_kernel_ab.py --against a3f7b05            # 1 and 2 threads
  python benchmarks/dense_kernel_ab.py --against a3f7b05 --clock cpu --threads 1

Builds `biasbench/kernels/dac_linear_cpu.cpp` as it was at git revision --against (under
another operator namespace, so both load in one process) and times, interleaved rep by rep,
forward + backward of: the plain layer (ReLU then nn.functional.linear, autograd), the earlier
kernel and the current one, on the MNIST MLP's shapes at batch 128 (issue 22). Prints medians
and minima and the ratios; the machine and /proc/loadavg head the output. On a loaded machine
use the minima at 2 threads (a descheduled thread stalls the whole parallel region) and
`--clock cpu` at 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import CLOCKS, describe, kernel_paths, loadavg  # noqa: E402

from biasbench.kernels import build  # noqa: E402
from biasbench.kernels.dac_linear_cpu import KERNEL  # noqa: E402

SHAPES = "784x256,256x256,256x10"  # the MNIST MLP's layers; SGEMM MLPs: 141x141,200x200,250x250 at batch 256


def earlier_kernel(rev: str) -> build.CpuKernel:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:biasbench/kernels/dac_linear_cpu.cpp"],
                            capture_output=True, text=True, check=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="dac_linear_ab_"))
    (folder / "dac_linear_cpu.cpp").write_text(source)
    return build.CpuKernel(str(folder / "dac_linear_cpu.cpp"), f"ab_{rev[:12]}_dac_linear", f"dense DAC at {rev}")


def steps(kernels: dict, cin: int, cout: int, batch: int) -> dict:
    torch.manual_seed(0)
    z, g = torch.rand(batch, cin), torch.randn(batch, cout)
    w, b = torch.randn(cout, cin) / cin ** 0.5, torch.randn(cout, cin) * 0.1
    zp, wp = z.clone().requires_grad_(), w.clone().requires_grad_()

    def plain():
        torch.nn.functional.linear(torch.relu(zp), wp).backward(g)

    def fused(ops):
        return lambda: (ops.forward(z, w, b), ops.backward(z, w, b, g))

    return {"plain": plain, **{name: fused(ops) for name, ops in kernels.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="git revision of the earlier kernel")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--reps", type=int, default=200, help="timed runs of each (default 200)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--shapes", default=SHAPES, help=f"comma-separated INxOUT (default {SHAPES})")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = ap.parse_args()
    isa = build.selected_isa()
    kernels = {"earlier": earlier_kernel(args.against).ops(isa), "current": KERNEL.ops(isa)}
    now = CLOCKS[args.clock]
    print(f"{describe(None, kernel_paths())}; loadavg {loadavg()}; {args.clock} clock, {args.reps} runs, "
          f"batch {args.batch}, earlier = {args.against}")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for cin, cout in (map(int, shape.split("x")) for shape in args.shapes.split(",")):
            fns = steps(kernels, cin, cout, args.batch)
            for fn in fns.values():  # warm-up
                fn(), fn()
            times = {name: [] for name in fns}
            for _ in range(args.reps):
                for name, fn in fns.items():
                    t = now()
                    fn()
                    times[name].append(now() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            low = {k: min(v) for k, v in times.items()}
            print(f"{threads}t {cin}x{cout}: median ms plain {med['plain'] * 1e3:.3f} earlier "
                  f"{med['earlier'] * 1e3:.3f} current {med['current'] * 1e3:.3f}; min ms plain "
                  f"{low['plain'] * 1e3:.3f} earlier {low['earlier'] * 1e3:.3f} current {low['current'] * 1e3:.3f}; "
                  f"current/plain {med['current'] / med['plain']:.2f}x (min {low['current'] / low['plain']:.2f}x), "
                  f"earlier/plain {med['earlier'] / med['plain']:.2f}x (min {low['earlier'] / low['plain']:.2f}x)",
                  flush=True)
    print(f"loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
