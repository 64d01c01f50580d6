"""Every figure of issue 22 in one command, then the README's performance table (`make bench-perf`).

    python benchmarks/perf_all.py [--results benchmarks/results] [--no-readme]
    python benchmarks/perf_all.py --quick      # a check that every part runs (minutes; no README)

Runs, one after another, each writing its JSON under --results:
  1. the CLI's start-up: `biasbench --version`, `--help`, `list` (cache warm), median of 7 fresh
     processes each (cli_startup.json);
  2. benchmarks/mnist_epoch.py: the real MNIST MLP's epoch, baseline and DAC, 1 and 2 threads,
     5 runs in a row (mnist_epoch.json);
  3. benchmarks/dac_layers.py --preset issue22: the dense layers at batch 128 (dac_layers_issue22.json);
  4. benchmarks/variant_step.py --preset issue22: ResNet20 v1 DAC, RAA on ResNet20 and ViT-Tiny,
     the MNIST MLP step, against their baselines (variant_step_issue22.json);
  5. benchmarks/trainer_overhead.py on the real MNIST MLP and Fashion-MNIST CNN (trainer_overhead_real.json);
  6. benchmarks/op_mix_roofline.py: this core's rate for the dense DAC kernels' instruction mix,
     the bound it sets on the dense layer ratios (op_mix_roofline.json);
then benchmarks/perf_table.py writes the table into README.md between its markers. Measured: 261 s
on a quiet 2-core AMD EPYC VM (2026-12-05; each part's time is printed), plus the kernels' first
build; run it on a quiet machine, since
two threads on shared cores measure the other processes. Needs the real data (`make real-data`).
`--quick` runs every part briefly into a temporary folder and prints the table without writing
the README: for checking that everything runs, not for figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
CLI_COMMANDS = (("--version",), ("--help",), ("list",))
CLI_RUNS = 7


def child_env() -> dict[str, str]:
    """This checkout's biasbench first, whatever is installed; every script picks its own threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def cli_startup(out: Path, runs: int) -> None:
    """Median wall seconds of fresh `python -m biasbench ARGS` processes, after one warm-up each
    (which also writes `list`'s cache)."""
    env = child_env()
    times: dict[str, list[float]] = {}
    for args in CLI_COMMANDS:
        cmd = [sys.executable, "-m", "biasbench", *args]
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
            times.setdefault(" ".join(["biasbench", *args]), []).append(time.perf_counter() - start)
    doc = {"schema": "biasbench-cli-startup/1", "runs": runs, "python": sys.version.split()[0],
           "loadavg_before": Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else None,
           "seconds": times, "median_s": {k: statistics.median(v) for k, v in times.items()}}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for cmd, s in doc["median_s"].items():
        print(f"{cmd}: {s:.3f} s (median of {runs})")


def parts(results: Path, quick: bool) -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [
        ("mnist_epoch", [py, str(BENCH / "mnist_epoch.py"), "--json", str(results / "mnist_epoch.json")]
         + (["--quick"] if quick else [])),
        ("dac_layers", [py, str(BENCH / "dac_layers.py"), "--preset", "issue22",
                        "--json", str(results / "dac_layers_issue22.json")] + (["--reps", "3"] if quick else [])),
        ("variant_step", [py, str(BENCH / "variant_step.py"), "--preset", "issue22", "--no-memory",
                          "--reps", "2" if quick else "15", "--json", str(results / "variant_step_issue22.json")]),
        ("trainer_overhead", [py, str(BENCH / "trainer_overhead.py"), "--cases", "mlp/mnist",
                              *([] if quick else ["cnn/fashion"]), "--repeats", "1" if quick else "3", "--json",
                              str(results / "trainer_overhead_real.json")]),
        ("op_mix_roofline", [py, str(BENCH / "op_mix_roofline.py"), "--reps", "11" if quick else "101",
                             "--json", str(results / "op_mix_roofline.json")]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, help="where the JSON files go (default benchmarks/results; "
                    "--quick: a temporary folder)")
    ap.add_argument("--no-readme", action="store_true", help="print the table; leave README.md alone")
    ap.add_argument("--quick", action="store_true", help="every part briefly: checks that it all runs")
    args = ap.parse_args()
    missing = [d for d in ("mnist", "fashion_mnist") if not (REPO / "data" / d).is_dir()]
    if missing:
        sys.exit(f"error: the real data are missing under {REPO / 'data'} ({', '.join(missing)}); "
                 "run `make real-data` first")
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results or (Path(tmp) if args.quick else BENCH / "results")
        results.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        spent = {}
        t = time.perf_counter()
        print("== cli_startup", flush=True)
        cli_startup(results / "cli_startup.json", 2 if args.quick else CLI_RUNS)
        spent["cli_startup"] = time.perf_counter() - t
        for name, cmd in parts(results, args.quick):
            print(f"== {name}: {' '.join(Path(c).name if c.startswith(str(REPO)) else c for c in cmd[1:])}",
                  flush=True)
            t = time.perf_counter()
            env = child_env()
            if args.quick and name == "trainer_overhead":  # it trains on torch's threads: one, for a check
                env["OMP_NUM_THREADS"] = "1"
            done = subprocess.run(cmd, cwd=REPO, env=env)
            spent[name] = time.perf_counter() - t
            if done.returncode:
                sys.exit(f"error: {name} failed (exit code {done.returncode}); the table was not written")
        table = [sys.executable, str(BENCH / "perf_table.py"), "--results", str(results)]
        if args.quick or args.no_readme:
            table.append("--print-only")
        print("== perf_table", flush=True)
        subprocess.run(table, cwd=REPO, env=child_env(), check=True)
        print("time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in spent.items())
              + f"; total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
