"""The local backend's overhead per run: a study of many tiny runs swept through the worker pool,
against the same runs trained in one loop in one process.

    python benchmarks/sweep_overhead.py [--runs 200] [--jobs 1 2] [--json out.json]

Each run is a small MLP on 400 synthetic samples, one epoch of a few steps with its checkpoint
and results file (about 20-30 ms in a loop), so the comparison shows what the sweep adds per run:
sending it to a worker and its results back, the manifest and the progress. The loop runs
`runner.train_one` for every run in this process after one warm-up run (imports). The sweep is
timed whole for `--runs` runs and for 10 runs; the difference, divided by the extra runs, is its
cost per run, free of the one-time start of the workers (a fresh interpreter importing torch,
a few seconds, reported as `start s`). Everything runs with one thread per process: tiny runs
gain nothing from more, and a shared machine makes more threads slower. Target: the sweep's cost
per run <= 1.2x the loop's with --jobs 1. With --jobs 2, two workers run at once (the ratio then
says what parallel workers buy on this machine).
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

import torch
import yaml
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from biasbench.study import load_study, runner  # noqa: E402
from biasbench.study.runner import run_sweep, train_one  # noqa: E402
from biasbench.study.schema import with_output_dir  # noqa: E402

SMALL = 10  # the short sweep whose time is the workers' start plus 10 runs
RECIPE = {
    "model": {"name": "mlp", "options": {"depth": 2, "width": 32}},
    "data": {"name": "synthetic", "options": {"num_samples": 400, "features": 16}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 1, "batch_size": 64},  # 4-5 steps per run
    "output": {"checkpoint": True},
}


def write_study(folder: Path, runs: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(RECIPE))
    cells = runs // 5
    study = {"recipe": "tiny.yaml", "grid": {"optim.lr": [round(0.01 + 0.001 * i, 4) for i in range(cells)]},
             "replicates": 5}  # 5 replicates per cell
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def time_loop(study, out: Path) -> float:
    cells = study.cells
    train_one(with_output_dir(cells[0], out / "warmup"), 0, 0, "cpu", False)  # imports, first-run caches
    start = time.perf_counter()
    for cell in cells:
        for replicate, seed in cell.seeds():
            train_one(with_output_dir(cell, out / "loop"), seed, replicate, "cpu", False)
    return time.perf_counter() - start


def time_sweep(study, out: Path, jobs: int) -> float:
    start = time.perf_counter()
    sweep = run_sweep(study, out, jobs=jobs, device="cpu")
    elapsed = time.perf_counter() - start
    assert set(sweep.manifest.counts()) == {"completed"}, sweep.manifest.counts()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runner.worker_threads = lambda jobs: 1  # one thread per process, workers and loop alike
    torch.set_num_threads(1)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = load_study(write_study(folder / "big", args.runs))
        small = load_study(write_study(folder / "small", SMALL))
        n = study.run_count()
        loop = time_loop(study, folder / "loop")
        for jobs in args.jobs:
            sweep = time_sweep(study, folder / f"sweep{jobs}", jobs)
            sweep_small = time_sweep(small, folder / f"small{jobs}", jobs)
            per_run = (sweep - sweep_small) / (n - SMALL)
            result = {"jobs": jobs, "runs": n, "loop_s": loop, "sweep_s": sweep, "sweep_small_s": sweep_small,
                      "loop_per_run_ms": 1e3 * loop / n, "sweep_per_run_ms": 1e3 * per_run,
                      "ratio_per_run": per_run / (loop / n), "start_s": sweep_small - SMALL * per_run,
                      "ratio_whole": sweep / loop}
            results.append(result)
            rows.append([jobs, n, f"{loop:.1f}", f"{sweep:.1f}", f"{result['loop_per_run_ms']:.1f}",
                         f"{result['sweep_per_run_ms']:.1f}", f"{result['ratio_per_run']:.2f}",
                         f"{result['start_s']:.1f}", f"{result['ratio_whole']:.2f}"])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"sweep overhead on {machine}, load {os.getloadavg()[0]:.1f} (target: per-run ratio <= 1.2 at --jobs 1)")
    print(tabulate(rows, headers=["jobs", "runs", "loop s", "sweep s", "loop ms/run", "sweep ms/run", "ratio",
                                  "start s", "whole"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
