"""How long `biasbench compare` takes to read, group and summarise many results files, and what
its test over examples and seeds costs per comparison.

    .venv/bin/python benchmarks/compare_read.py [--files 1000] [--epochs 30] [--json out.json]

Writes `--files` synthetic but schema-valid results files (4 variants of one recipe, one seed
each, `--epochs` epochs of history, like a real 30-epoch run) into a temporary folder, then times
the phases `compare` runs: finding the files, loading and checking them, grouping, and the
summaries with the estimator and the comparisons against the baseline. The target is under 5
seconds for 1,000 files. The best of `--repeats` timings is reported (the first read also pays
the file-system cache).

Then it times `stats.example_bootstrap` (10,000 resamples) for one comparison of CIFAR-10 size:
10,000 test examples, 5 seeds a side, two models near 93% that disagree on a few hundred
examples, scored at one epoch (`final`, `min_mean`) and averaged over a 5-epoch window (`robust`,
where an example's score takes more distinct values). Targets: under 1 s per comparison at one
epoch (the default `final`), under 3 s over a window (more distinct columns to resample). The
machine and its load average are printed with the numbers: on a shared machine they scale with it.
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
from typing import Any

import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from biasbench import stats  # noqa: E402
from biasbench.compare import find_results, group_runs, load_runs, summarize_runs  # noqa: E402
from biasbench.recipe import Recipe  # noqa: E402
from biasbench.results import KIND, SCHEMA_VERSION  # noqa: E402

VARIANTS = ("baseline", "dac", "mba", "abn")


def synthetic_doc(variant: str, seed: int, epochs: int, rng: np.random.Generator) -> dict[str, Any]:
    """A results document shaped like the trainer's, with a plausible learning curve."""
    recipe = Recipe().to_dict()
    recipe.pop("source", None)
    recipe.pop("smoke", None)
    recipe["model"].update(name="cnn", variant=variant)
    recipe["train"].update(epochs=epochs, seed=seed)
    recipe["output"]["name"] = "bench"
    level = 0.9 + 0.01 * VARIANTS.index(variant)
    history = []
    for e in range(epochs):
        acc = level * (1 - np.exp(-(e + 1) / 4)) + rng.normal(0, 0.005)
        history.append(
            {
                "epoch": e + 1,
                "lr": 0.1,
                "seconds": 1.0,
                "train_loss": 1 - acc,
                "train_acc": acc + 0.02,
                "val_loss": 1 - acc,
                "val_acc": acc + rng.normal(0, 0.005),
                "test_loss": 1 - acc,
                "test_acc": acc + rng.normal(0, 0.005),
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "name": "bench",
        "status": "completed",
        "interrupted_by": None,
        "checkpoint_epoch": None,
        "seed": seed,
        "replicate": seed,
        "recipe": recipe,
        "recipe_path": "recipes/bench.yaml",
        "task": "classification",
        "epochs_completed": epochs,
        "history": history,
        "final": history[-1],
        "best": {},
        "params": {"total": 100_000, "trainable": 100_000},
        "complexity": {"macs": 5e6, "flops": 1e7},
        "wall_time_s": 30.0,
        "images_per_second": 5000.0,
        "warmup_s": 0.0,
        "predictions": None,
        "data": {},
        "environment": {"torch": "x"},
        "created": "2026-01-01T00:00:00+00:00",
    }


def write_files(root: Path, n: int, epochs: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        variant = VARIANTS[i % len(VARIANTS)]
        path = root / variant / f"seed{i // len(VARIANTS)}" / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(synthetic_doc(variant, i // len(VARIANTS), epochs, rng), indent=1))


def time_phases(root: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    files = find_results([root])
    t1 = time.perf_counter()
    runs = load_runs([root])  # finds again, then reads and checks every file
    t2 = time.perf_counter()
    group_runs(runs)
    t3 = time.perf_counter()
    result = summarize_runs(runs, baseline="baseline")  # groups again, then every summary and comparison
    t4 = time.perf_counter()
    assert len(files) == len(runs) and len(result.groups) == len(VARIANTS)
    return {
        "find": t1 - t0,
        "find + load": t2 - t1,
        "group": t3 - t2,
        "group + summarise + compare": t4 - t3,
        "total (load + summarise)": (t2 - t1) + (t4 - t3),
    }


def correlated_scores(rng: np.random.Generator, seeds: int, n: int, epochs: int, accuracy: float) -> np.ndarray:
    """(seeds, n) scores averaged over `epochs`: examples have a difficulty shared by every seed
    and epoch, so most are always right, a few always wrong, some flip (as in real runs)."""
    difficulty = rng.beta(0.3, 4.0, n)  # mostly easy
    p_right = np.clip(1 - difficulty * (1 - accuracy) / difficulty.mean(), 0, 1)
    return (rng.random((seeds, epochs, n)) < p_right).mean(axis=1)


def time_bootstrap(repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for name, epochs in (("final / min_mean (1 epoch)", 1), ("robust (5-epoch window)", 5)):
        a = correlated_scores(rng, 5, 10_000, epochs, 0.93)
        b = correlated_scores(rng, 5, 10_000, epochs, 0.935)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            stats.example_bootstrap(a, b, paired=True)
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the timings as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_files(root, args.files, args.epochs)
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("results.json"))
        timings = [time_phases(root) for _ in range(args.repeats)]
    best = {k: min(t[k] for t in timings) for k in timings[0]}
    first = timings[0]["total (load + summarise)"]
    rows = [[k, f"{v:.3f}"] for k, v in best.items()]
    rows.append(["total, first (cold-ish) read", f"{first:.3f}"])
    print(
        f"{args.files} results files, {args.epochs} epochs each, {size / 1e6:.1f} MB "
        f"(written in {written:.1f} s)"
    )
    print(tabulate(rows, headers=["phase", f"seconds (best of {args.repeats})"], tablefmt="github"))
    verdict = "PASS" if best["total (load + summarise)"] < 5.0 else "SLOW"
    print(f"target: under 5 s for 1,000 files -> {verdict}")
    boot = time_bootstrap(args.repeats)
    print()
    print(tabulate([[k, f"{v:.3f}"] for k, v in boot.items()],
                   headers=["bootstrap, 10,000 test examples x 5 seeds", f"seconds (best of {args.repeats})"],
                   tablefmt="github"))
    one, window = boot.values()
    print(f"targets: under 1 s at one epoch, 3 s over a window -> "
          f"{'PASS' if one < 1.0 and window < 3.0 else 'SLOW'}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "files": args.files,
                    "epochs": args.epochs,
                    "bytes": size,
                    "seconds_best": best,
                    "seconds_first_total": first,
                    "target_s": 5.0,
                    "bootstrap_seconds_best": boot,
                    "bootstrap_target_s": {"one epoch": 1.0, "window": 3.0},
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()[0],
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
