"""Epoch time of the MNIST MLP on the real MNIST: baseline against DAC, 1 and 2 threads (issue 22).

    python benchmarks/mnist_epoch.py [--runs 5] [--json benchmarks/results/mnist_epoch.json] [--quick]

The model is recipes/real/mnist_mlp.yaml's (MLP 784-256-256-10 with BN; the DAC variant as
`biasbench train` builds it, hidden layers narrowed by sqrt(2)), on its training split (54,000
images), batch 128, the recipe's SGD (momentum, Nesterov, weight decay). An epoch is every
training step of one pass: uint8 batch -> float, normalised, forward, cross-entropy, backward,
SGD step; no evaluation, no checkpoint (the trainer's own overhead is trainer_overhead.py's).
`--runs` runs in a row, each timing one epoch of every (threads, variant). Within a run the four
epochs advance together in turns of 25 steps (about 50 ms), each on its own model, so that a slow
phase of the machine falls on all four alike. On this workplace's 2-vCPU VM the two-thread
steps (baseline and DAC alike, their data and optimiser parts too) ran about 1.6x slower for
seconds to minutes at a time, while one-thread steps did not change; with whole epochs in turn,
such a phase landed on one configuration's epoch and decided its DAC / baseline ratio. (It still
moves the 2 / 1 thread ratios of both variants: compare DAC's with the baseline's in the same run.)
Printed: seconds per epoch (min / median / max over the runs) and the ratios per run: DAC /
baseline at 1 and 2 threads, 2-thread / 1-thread time per variant, with the targets (DAC /
baseline <= 1.15, DAC 2 / 1 threads <= 0.75, in every run).
Wall clock: two threads are about latency. The machine must be quiet for a verdict.
`--quick`: 2 runs on a sixth of the epoch (a check that it runs, not a measurement).
Needs the real data (`make real-data`); refuses in one line without it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import describe, kernel_paths, loadavg  # noqa: E402  (benchmarks/)

from biasbench.data import build_data  # noqa: E402
from biasbench.fsutil import atomic_write_json  # noqa: E402
from biasbench.models import build_model  # noqa: E402
from biasbench.optim import build_optimizer  # noqa: E402
from biasbench.recipe import load_recipe  # noqa: E402

RECIPE = REPO / "recipes" / "real" / "mnist_mlp.yaml"
SCHEMA = "biasbench-mnist-epoch/2"
VARIANTS = ("baseline", "dac")
THREADS = (1, 2)
TARGET_DAC_OVER_BASELINE = 1.15
TARGET_TWO_OVER_ONE = 0.75
WARMUP_STEPS = 20
TURN_STEPS = 25  # steps each configuration trains in its turn


class Epoch:
    """One variant's model, optimiser (biasbench's: `build_optimizer`) and data; `run` trains
    batches of an epoch's shuffled order."""

    def __init__(self, variant: str, recipe, data) -> None:
        torch.manual_seed(0)
        shape = data.input_shape
        self.model = build_model(recipe.model.name, variant, num_classes=data.num_outputs, in_channels=shape[0],
                                 input_shape=shape, **recipe.model.options)
        self.opt, self.l2 = build_optimizer(self.model, recipe.optim)
        self.x, self.y = data.train.x, data.train.y
        self.mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std).view(1, -1, 1, 1)
        self.batch = recipe.train.batch_size

    def run(self, steps: int, epoch: int, first: int = 0) -> float:
        """Seconds (wall) for training steps first..first + steps of epoch `epoch`'s shuffled order."""
        self.model.train()
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(epoch))
        start = time.perf_counter()
        for i in range(first, first + steps):
            idx = order[i * self.batch:(i + 1) * self.batch]
            x = (self.x[idx].float().div_(255) - self.mean) / self.std
            loss = F.cross_entropy(self.model(x), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.l2.apply()  # (as the trainer's step: L2 in the loss where the recipe sets it)
            self.opt.step()
        return time.perf_counter() - start


def measure(recipe, data, runs: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """{f"{threads}t": {variant: [seconds per run]}}, every run timing every pair once."""
    configs = [(t, v) for t in THREADS for v in VARIANTS]
    epochs = {c: Epoch(c[1], recipe, data) for c in configs}
    for (t, _), e in epochs.items():  # warm-up: kernel builds, allocator, thread pools
        torch.set_num_threads(t)
        e.run(WARMUP_STEPS, epoch=-1)
    times: dict[str, dict[str, list[float]]] = {f"{t}t": {v: [] for v in VARIANTS} for t in THREADS}
    for r in range(runs):
        spent = dict.fromkeys(configs, 0.0)
        for k, first in enumerate(range(0, steps, TURN_STEPS)):
            n = min(TURN_STEPS, steps - first)
            for c in configs[k % 4:] + configs[:k % 4]:  # who goes first rotates
                torch.set_num_threads(c[0])
                spent[c] += epochs[c].run(n, epoch=r, first=first)
        for (t, v), seconds in spent.items():
            times[f"{t}t"][v].append(seconds)
        print(f"run {r + 1}/{runs}: " + ", ".join(f"{v} {t} {s[-1]:.2f} s" for t, row in times.items()
                                                   for v, s in row.items()), flush=True)
    return times


def ratios(times: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per run: DAC / baseline at each thread count, 2-thread / 1-thread time of each variant."""
    out = {f"dac/baseline {t}t": [d / b for d, b in zip(times[f"{t}t"]["dac"], times[f"{t}t"]["baseline"])]
           for t in THREADS}
    for v in VARIANTS:
        out[f"{v} 2t/1t"] = [two / one for two, one in zip(times["2t"][v], times["1t"][v])]
    return out


def verdicts(r: dict[str, list[float]]) -> dict[str, bool]:
    """Issue 22's targets, each held in every run."""
    out = {f"dac/baseline {t}t <= {TARGET_DAC_OVER_BASELINE}": max(r[f"dac/baseline {t}t"]) <= TARGET_DAC_OVER_BASELINE
           for t in THREADS}
    out[f"dac 2t/1t <= {TARGET_TWO_OVER_ONE}"] = max(r["dac 2t/1t"]) <= TARGET_TWO_OVER_ONE
    return out


def spread(values: list[float], fmt: str) -> str:
    return " / ".join(format(x, fmt) for x in (min(values), statistics.median(values), max(values)))


def print_report(doc: dict) -> None:
    for line in (f"machine: {doc['machine']}",
                 f"MNIST MLP 784-256-256-10 (DAC: hidden {doc['dac_hidden']}), batch {doc['batch']}, "
                 f"{doc['steps']} steps = {doc['images']:,} images per epoch, {doc['runs']} runs, wall clock",
                 f"a run: the four epochs in turns of {doc['turn_steps']} steps each; "
                 f"load average {doc['loadavg_before']} -> {doc['loadavg_after']}"):
        print(textwrap.fill(line, 80))
    print(f"{'variant':<9} {'threads':>7}  {'s / epoch (min / median / max)':>30}")
    for t in THREADS:
        for v in VARIANTS:
            print(f"{v:<9} {t:>7}  {spread(doc['seconds'][f'{t}t'][v], '.3f'):>30}")
    print(f"{'ratio':<18} {'min / median / max':>20}  {'every run':>9}")
    for name, values in doc["ratios"].items():
        print(f"{name:<18} {spread(values, '.3f'):>20}  {' '.join(f'{x:.2f}' for x in values)}")
    for target, met in doc["targets"].items():
        print(f"target {target} in every run: {'met' if met else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs in a row (default 5)")
    ap.add_argument("--root", type=Path, default=REPO / "data" / "mnist", help="the real MNIST (make real-data)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "mnist_epoch.json")
    ap.add_argument("--quick", action="store_true", help="2 runs of a sixth of an epoch: checks that it runs")
    args = ap.parse_args()
    if not any((args.root / f"train-images-idx3-ubyte{gz}").is_file() for gz in (".gz", "")):
        sys.exit(f"error: the real MNIST is not under {args.root}; run `make real-data` (or pass --root)")
    recipe = load_recipe(RECIPE, overrides=[f"data.root={args.root}"])
    data = build_data(recipe.data)
    runs = 2 if args.quick else args.runs
    full = len(data.train.y) // recipe.train.batch_size  # the trainer drops the last partial batch
    steps = math.ceil(full / 6) if args.quick else full
    load_before = loadavg()
    times = measure(recipe, data, runs, steps)
    r = ratios(times)
    dac = build_model("mlp", "dac", num_classes=10, in_channels=1, input_shape=(1, 28, 28), **recipe.model.options)
    doc = {"schema": SCHEMA, "machine": describe(None, kernel_paths()), "torch": torch.__version__,
           "quick": args.quick, "runs": runs, "turn_steps": TURN_STEPS, "batch": recipe.train.batch_size,
           "steps": steps,
           "images": steps * recipe.train.batch_size, "full_epoch_steps": full,
           "dac_hidden": [m.out_features for m in dac.modules() if hasattr(m, "out_features")][:-1],
           "loadavg_before": load_before, "loadavg_after": loadavg(), "seconds": times, "ratios": r,
           "targets": verdicts(r)}
    print_report(doc)
    atomic_write_json(args.json, doc)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
