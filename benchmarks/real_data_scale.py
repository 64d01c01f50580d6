"""A real-data sweep at scale: memory per worker, and `compare` / `report` on its runs.

    python benchmarks/real_data_scale.py [--study studies/real_quickstart.yaml] [--jobs 2] [--json out.json]

Needs the real Fashion-MNIST (`make real-data`). Runs `biasbench sweep STUDY --jobs N` into a
temporary folder while sampling every worker's peak resident memory (VmHWM, from /proc) and the
sweep's own; then times `biasbench compare` and `biasbench report` on the finished runs, whose
results hold the per-example predictions of the 10,000 test images. A worker keeps one decoded
copy of the data set (biasbench/data/idx.py reads a release once per process), so its peak
memory should not grow with the number of runs it trains: the table gives runs per worker beside
it. Runtime: the study's own (the default study: 6 runs, minutes on 2 cores) plus about a minute.
The trainer against a bare PyTorch loop on the real data: benchmarks/trainer_overhead.py
(cases mlp/mnist and cnn/fashion).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out + [g for c in out for g in _children(c)]


def _peak_kib(pid: int) -> int | None:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return None


def sweep_with_memory(study: str, jobs: int, out: Path) -> tuple[float, dict[int, int], int]:
    """Wall time of the sweep, peak memory (KiB) of each process it ran, and its exit code."""
    cmd = [sys.executable, "-m", "biasbench", "sweep", study, "--jobs", str(jobs), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_children(proc.pid)]:
            kib = _peak_kib(pid)
            if kib is not None:
                peaks[pid] = max(peaks.get(pid, 0), kib)
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: the sweep failed ({proc.returncode}): {proc.stderr.read().strip()[-400:]}")
    peaks["sweep"] = peaks.pop(proc.pid, 0)
    return seconds, peaks, proc.returncode


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "biasbench", *args], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--study", default="studies/real_quickstart.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (REPO / "data" / "fashion_mnist").is_dir():
        raise SystemExit("error: needs the real Fashion-MNIST under data/fashion_mnist: run `make real-data`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        sweep_s, peaks, _ = sweep_with_memory(args.study, args.jobs, out)
        runs = len(json.loads((out / "study.json").read_text())["runs"])
        compare_s = timed("compare", str(out))
        report_s = timed("report", str(out), "--out", str(Path(tmp) / "report"))
        predictions = sum(1 for _ in out.rglob("predictions.npz"))
    workers = {pid: kib for pid, kib in peaks.items() if pid != "sweep"}
    rows = [{"process": "sweep (parent)", "peak_MiB": round(peaks["sweep"] / 1024)}]
    rows += [{"process": f"worker {i + 1}", "peak_MiB": round(kib / 1024)} for i, kib in enumerate(workers.values())]
    load = os.getloadavg()[0]
    print(f"{args.study}: {runs} runs, --jobs {args.jobs}, {os.cpu_count()} cores, load average {load:.1f}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    timing = [{"step": "sweep", "seconds": round(sweep_s, 1)},
              {"step": f"compare ({predictions} runs with test predictions)", "seconds": round(compare_s, 2)},
              {"step": "report", "seconds": round(report_s, 2)}]
    print(tabulate(timing, headers="keys", tablefmt="github"))
    print(f"runs per worker: about {runs / max(1, len(workers)):.1f}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "real_data_scale", "study": args.study, "runs": runs,
                                         "jobs": args.jobs, "load_average": load, "memory": rows,
                                         "timing": timing}, indent=1))


if __name__ == "__main__":
    main()
