"""How a training step's work splits over two threads: the bound on 2-thread / 1-thread time.

    python benchmarks/thread_split.py [--steps 200] [--json out.json]

Each thread's CPU time is read from the kernel (/proc/self/task/TID/schedstat, nanoseconds)
around `--steps` training steps of the MNIST MLP 784-256-256-10 (baseline and DAC, batch 128,
SGD), with OpenMP threads that sleep instead of spinning while they wait
(OMP_WAIT_POLICY=PASSIVE, set by restarting the script), so a thread's CPU time is the work it
did, not its waiting. Work, unlike wall time, is not stretched by other processes on a shared
machine, so this measures on a loaded machine what a quiet one would need for the 2-thread time:
with total work T2 spread as main + helpers, the step cannot take less than the larger of the
main thread's share and T2 / 2, and 2-thread / 1-thread time is at least that over T1 (the
1-thread work). Printed per variant: 1-thread work, 2-thread work (main, helper), the serial
share (work only the main thread did) and the bound max(main, T2 / 2) / T1.
Linux only (schedstat).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":  # before torch loads OpenMP
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from biasbench.models import build_model  # noqa: E402
from biasbench.optim import build_optimizer  # noqa: E402
from biasbench.recipe import OptimConfig  # noqa: E402


def thread_ns() -> dict[int, int]:
    """CPU nanoseconds of every thread of this process (schedstat's first field)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def make_step(variant: str):
    torch.manual_seed(0)
    model = build_model("mlp", variant, num_classes=10, in_channels=1, input_shape=(1, 28, 28), depth=2, width=256)
    opt, _ = build_optimizer(model, OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                                bias_weight_decay=5e-4))  # the trainer's (fused) SGD
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def work(step, steps: int, threads: int) -> dict[str, float]:
    """Milliseconds of CPU per step: the calling thread's and the others' (OpenMP helpers)."""
    torch.set_num_threads(threads)
    for _ in range(10):
        step()
    main = threading.get_native_id()
    before = thread_ns()
    for _ in range(steps):
        step()
    after = thread_ns()
    spent = {tid: after[tid] - before.get(tid, 0) for tid in after}
    mine = spent.pop(main, 0)
    return {"main_ms": mine / steps / 1e6, "helpers_ms": sum(spent.values()) / steps / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    load_before = Path("/proc/loadavg").read_text().strip()
    for variant in ("baseline", "dac"):
        step = make_step(variant)
        one, two = work(step, args.steps, 1), work(step, args.steps, 2)
        t1, t2 = one["main_ms"] + one["helpers_ms"], two["main_ms"] + two["helpers_ms"]
        bound = max(two["main_ms"], t2 / 2) / t1
        rows.append({"variant": variant, "work_1t_ms": t1, "work_2t_ms": t2, "main_2t_ms": two["main_ms"],
                     "helper_2t_ms": two["helpers_ms"], "serial_share": (two["main_ms"] - two["helpers_ms"]) / t2,
                     "bound_2t_over_1t": bound})
        print(f"{variant:<9} 1 thread {t1:6.2f} ms; 2 threads {t2:6.2f} ms (main {two['main_ms']:.2f}, helper "
              f"{two['helpers_ms']:.2f}); main-only share {rows[-1]['serial_share']:.2f}; "
              f"2t/1t >= {bound:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"schema": "biasbench-thread-split/1", "steps": args.steps,
                                         "loadavg_before": load_before, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
