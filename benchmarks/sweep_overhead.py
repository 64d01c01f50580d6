"""The local backend's overhead per run: a study of many tiny runs swept through the worker pool,
against the same runs trained in one loop in one process.

    python benchmarks/sweep_overhead.py [--runs 200] [--jobs 1] [--json out.json]

Each run is a small MLP on 400 synthetic samples, one epoch of a few steps (the study's grid is
`train.seed`-free: 40 cells x 5 replicates for 200 runs), so the comparison shows what the sweep
adds: starting the workers (once, not per run), sending each run to a worker and its results
back, the manifest and the progress lines. The loop runs `runner.train_one` for every run in
this process, after one warm-up run (imports); the sweep is timed whole, worker start-up
included. Both use the same thread count (cores / jobs). Target: sweep / loop <= 1.2 with
--jobs 1. With --jobs 2 the sweep also runs two at a time (the ratio then says what parallel
workers buy on this machine).
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

from biasbench.study import load_study  # noqa: E402
from biasbench.study.runner import run_sweep, train_one, worker_threads  # noqa: E402
from biasbench.study.schema import with_output_dir  # noqa: E402

RECIPE = {
    "model": {"name": "mlp", "options": {"depth": 2, "width": 32}},
    "data": {"name": "synthetic", "options": {"num_samples": 400, "features": 16}},
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 1, "batch_size": 64},  # 4-5 steps per run
    "output": {"checkpoint": True},
}


def write_study(folder: Path, runs: int) -> Path:
    (folder / "tiny.yaml").write_text(yaml.safe_dump(RECIPE))
    cells = runs // 5
    study = {"recipe": "tiny.yaml", "grid": {"optim.lr": [round(0.01 + 0.001 * i, 4) for i in range(cells)]},
             "replicates": 5}
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
    sweep = run_sweep(study, out / f"sweep{jobs}", jobs=jobs, device="cpu")
    elapsed = time.perf_counter() - start
    assert set(sweep.manifest.counts()) == {"completed"}, sweep.manifest.counts()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = load_study(write_study(folder, args.runs))
        rows, results = [], []
        for jobs in args.jobs:
            torch.set_num_threads(worker_threads(jobs))  # the loop gets the threads one worker gets
            loop = time_loop(study, folder / f"loop{jobs}")
            sweep = time_sweep(study, folder, jobs)
            n = study.run_count()
            result = {"jobs": jobs, "threads_per_worker": worker_threads(jobs), "runs": n, "loop_s": loop,
                      "sweep_s": sweep, "ratio": sweep / loop, "overhead_per_run_ms": 1e3 * (sweep - loop) / n}
            results.append(result)
            rows.append([jobs, result["threads_per_worker"], n, f"{loop:.1f}", f"{sweep:.1f}", f"{result['ratio']:.2f}",
                         f"{result['overhead_per_run_ms']:+.0f}"])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"sweep overhead on {machine} (target: ratio <= 1.2 at --jobs 1)")
    print(tabulate(rows, headers=["jobs", "threads", "runs", "loop s", "sweep s", "ratio", "ms/run"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
