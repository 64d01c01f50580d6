"""`sweep --gpus all --workers-per-gpu 2` on the GPUs of this machine: every run must have trained
on CUDA, in a worker pinned to one device, and the manifest must say which.

    python benchmarks/gpu_sweep_check.py [--study studies/dac_sgemm.yaml] [--per-gpu 2]

Prints one line per device (runs, workers) and exits 1 when a run did not train on CUDA, a
worker used two devices, or a device of `--gpus all` got no run (with at least as many runs as
workers). Part of benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main() -> int:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default="studies/dac_sgemm.yaml")
    ap.add_argument("--per-gpu", type=int, default=2)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="gpu_sweep_")) / "study"
    cmd = [sys.executable, "-m", "biasbench", "sweep", args.study, "--smoke", "--gpus", "all",
           "--workers-per-gpu", str(args.per_gpu), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
    if proc.returncode != 0:
        print(f"sweep failed with exit code {proc.returncode}")
        return 1
    manifest = json.loads((out / "study.json").read_text())
    devices_of_worker: dict[int, set[str]] = defaultdict(set)
    runs_on: dict[str, int] = defaultdict(int)
    problems = []
    for key, run in manifest["runs"].items():
        attempts = [a for a in run["attempts"] if a.get("worker")]
        for a in attempts:
            devices_of_worker[a["worker"]].add(a.get("gpu"))
            runs_on[a.get("gpu")] += 1
        if not attempts:
            problems.append(f"{key}: no attempt records its worker")
    for results in out.rglob("results.json"):
        device = json.loads(results.read_text())["environment"]["device"]
        if not device.startswith("cuda"):
            problems.append(f"{results.parent}: trained on {device}")
    problems += [f"worker {pid} used devices {sorted(map(str, d))}"
                 for pid, d in devices_of_worker.items() if len(d) > 1]
    visible = [str(i) for i in range(torch.cuda.device_count())]
    if len(manifest["runs"]) >= len(visible) * args.per_gpu:
        problems += [f"device {d} got no run" for d in visible if runs_on.get(d, 0) == 0]
    for d in sorted(runs_on, key=str):
        workers = sum(1 for devices in devices_of_worker.values() if d in devices)
        print(f"gpu {d}: {runs_on[d]} runs in {workers} workers")
    print("\n".join(problems) or "every run trained on its worker's device")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
