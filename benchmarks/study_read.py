"""How long the study report takes to read and summarise a study folder of many results files.

    python benchmarks/study_read.py [--runs 10000] [--epochs 30] [--json out.json]

Writes a study manifest and `--runs` synthetic but schema-valid results files (cells of a
depth x width grid with a baseline/DAC pair, 5 replicates each, `--epochs` epochs of history,
like a real 30-epoch run) into a temporary folder, then times the phases of `biasbench report
DIR`: reading the manifest and every results file, then summarising: every cell's robust and
minimum-over-epochs estimates, the failure counts with their Fisher tests and every
baseline-against-DAC comparison with the Holm adjustment. Figures are not drawn (their time
does not grow with the number of files). Target: under 10 s for 10,000 files. The best of
`--repeats` timings is reported (the first read also pays the file-system cache).
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

import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from biasbench.recipe import Recipe  # noqa: E402
from biasbench.results import KIND, SCHEMA_VERSION  # noqa: E402
from biasbench.study import analysis as an  # noqa: E402
from biasbench.study.manifest import KIND as STUDY_KIND  # noqa: E402
from biasbench.study.manifest import MANIFEST  # noqa: E402
from biasbench.study.manifest import SCHEMA_VERSION as STUDY_VERSION  # noqa: E402

REPLICATES = 5


def synthetic_doc(cell: str, values: dict, seed: int, epochs: int, rng: np.random.Generator) -> dict:
    recipe = Recipe().to_dict()
    recipe.pop("source", None)
    recipe["model"].update(name="mlp", variant=values["model.variant"],
                           options={"depth": values["model.options.depth"], "width": values["model.options.width"]})
    recipe["output"]["name"] = cell
    level = 0.9 + (0.01 if values["model.variant"] == "dac" else 0.0)
    history = []
    for e in range(epochs):
        acc = level * (1 - np.exp(-(e + 1) / 4)) + rng.normal(0, 0.005)
        history.append({"epoch": e + 1, "lr": 0.1, "seconds": 1.0, "train_loss": 1 - acc, "train_acc": acc,
                        "val_loss": 1 - acc, "val_acc": acc + rng.normal(0, 0.005), "test_loss": 1 - acc,
                        "test_acc": acc + rng.normal(0, 0.005)})
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "name": cell, "status": "completed", "seed": seed,
            "replicate": seed, "recipe": recipe, "task": "classification", "epochs_completed": epochs,
            "history": history, "final": history[-1], "best": max(history, key=lambda h: h["val_acc"]),
            "params": {"total": 1000}, "complexity": {"flops": 1e6}, "wall_time_s": 1.0}


def write_study(folder: Path, runs: int, epochs: int) -> None:
    rng = np.random.default_rng(0)
    cells_n = runs // REPLICATES
    widths = list(range(8, 8 + cells_n // 20))
    cells, manifest_runs = [], {}
    for depth in range(1, 11):
        for width in widths:
            for variant in ("baseline", "dac"):
                values = {"model.options.depth": depth, "model.options.width": width, "model.variant": variant}
                name = f"depth={depth},width={width},variant={variant}"
                cells.append({"name": name, "values": values, "replicates": REPLICATES})
                for seed in range(REPLICATES):
                    doc = synthetic_doc(name, values, seed, epochs, rng)
                    path = folder / name / f"seed{seed}" / "results.json"
                    path.parent.mkdir(parents=True)
                    path.write_text(json.dumps(doc, indent=1))
                    manifest_runs[f"{name}/seed{seed}"] = {"cell": name, "replicate": seed, "seed": seed,
                                                           "status": "completed", "attempts": []}
    keys = ["model.options.depth", "model.options.width", "model.variant"]
    document = {"failure": {"metric": "val_acc", "below": 0.5},
                "analysis": {"failures": {"by": "model.variant", "baseline": "baseline"},
                             "pairs": {"by": "model.variant", "baseline": "baseline", "estimator": "robust"}}}
    (folder / MANIFEST).write_text(json.dumps({
        "kind": STUDY_KIND, "schema_version": STUDY_VERSION, "created": "", "updated": "", "backend": "local",
        "study": {"path": "bench.yaml", "name": "bench", "smoke": False, "document": document, "keys": keys,
                  "varying": keys, "naming": keys, "labels": [], "zip_groups": []},
        "cells": cells, "runs": manifest_runs}))


def timed(folder: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    runs = an.load_study_runs(folder)
    t1 = time.perf_counter()
    for cell in runs.cells:
        an.estimate(cell, "test_acc", "robust")
        an.estimate(cell, "test_acc", "min_mean")
    an.failures(runs, runs.analyses["failures"])
    results, _ = an.pairs(runs, runs.analyses["pairs"])
    t2 = time.perf_counter()
    assert len(results) == len(runs.cells) // 2
    return {"read": t1 - t0, "summarise": t2 - t1, "total": t2 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_study(folder, args.runs, args.epochs)
        files = len(list(folder.rglob("results.json")))
        times = [timed(folder) for _ in range(args.repeats)]
    best = {phase: min(t[phase] for t in times) for phase in times[0]}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
              f"Python {platform.python_version()}"
    print(f"reading a study of {files:,} results files ({args.epochs} epochs each) on {machine}; target < 10 s")
    print(tabulate([[phase, f"{seconds:.2f}"] for phase, seconds in best.items()], headers=["phase", "best s"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "files": files, "epochs": args.epochs, "best_s": best,
                                         "all_s": times}, indent=1) + "\n")


if __name__ == "__main__":
    main()
