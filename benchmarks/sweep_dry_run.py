"""How long `biasbench sweep STUDY --dry-run` takes to count a study of many cells.

    python benchmarks/sweep_dry_run.py [--cells 100000] [--repeats 3] [--json out.json]

Writes a study over the quick-start recipe whose grid has `--cells` cells (learning rate x
weight decay x epochs x seed x a label, 10 values each but the label), then times, in one
process: the fixed cost a study of one cell pays too (imports, building the data set to count
its samples, counting the model's FLOPs), and reading, checking and counting the large study
(`load_study(plan_over=...)` and the cost of every cell, as the command does). The command
prints at most 100 cells, so printing does not grow with the study. Target: the large study
counted in under 5 s. The best of `--repeats` timings is reported; `os.getloadavg()` is recorded
because on a shared machine other processes stretch the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from biasbench.cli.sweep_cmd import PLANNED_OVER  # noqa: E402
from biasbench.study import load_study  # noqa: E402
from biasbench.study.cost import planned, summary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def write_study(path: Path, cells: int) -> None:
    if cells % 10_000:
        raise SystemExit("--cells must be a multiple of 10,000 (four axes of 10 values and a label)")
    lines = [f"recipe: {REPO / 'recipes' / 'quickstart.yaml'}", "grid:",
             "  optim.lr: [" + ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(10)) + "]",
             "  optim.weight_decay: [" + ", ".join(f"{0.0001 * i:.4f}" for i in range(10)) + "]",
             "  train.epochs: [" + ", ".join(str(i + 1) for i in range(10)) + "]",
             "  train.seed: [" + ", ".join(str(i) for i in range(10)) + "]",
             "  trial: [" + ", ".join(str(i) for i in range(cells // 10_000)) + "]"]
    path.write_text("\n".join(lines) + "\n")


def count(path: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    study = load_study(path, plan_over=PLANNED_OVER)
    total = summary(planned(study))
    return time.perf_counter() - started, total["cells"], total["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "one_cell.yaml", Path(tmp) / "large.yaml"
        small.write_text(f"recipe: {REPO / 'recipes' / 'quickstart.yaml'}\n")
        started = time.perf_counter()
        count(small)
        fixed = time.perf_counter() - started
        write_study(large, args.cells)
        times, cells, runs = [], 0, 0
        for _ in range(args.repeats):
            seconds, cells, runs = count(large)
            times.append(seconds)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
              f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    print(f"sweep --dry-run on {machine}")
    print(f"fixed cost (any study: imports, data set, FLOP count): {fixed:.2f} s")
    print(f"{cells:,} cells ({runs:,} runs) counted in {min(times):.2f} s (best of {len(times)}; "
          f"target < 5 s)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "cells": cells, "runs": runs, "fixed_s": fixed,
                                         "best_s": min(times), "all_s": times}, indent=1) + "\n")


if __name__ == "__main__":
    main()
