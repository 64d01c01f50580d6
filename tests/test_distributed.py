"""Scale-out: two gloo ranks equal one process on the same global batch; --jobs equals serial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe


def _history(path):
    doc = json.loads(path.read_text())
    return doc, [v for h in doc["history"] for v in (h["train_loss"], h["test_loss"], h["test_acc"])]


@pytest.mark.slow  # 15.3 s of CPU with its workers, 34.7 s at load 12.8 (2026-12-05)
def test_two_gloo_ranks_match_one_process(tmp_path):
    # No BatchNorm: gloo has no SyncBatchNorm, so BN statistics would be per rank.
    doc = tiny_recipe(tmp_path, model={"options": {"depth": 2, "width": 32, "bn": False}},
                      optim={"l2": 1e-4}, train={"epochs": 3, "batch_size": 64})
    recipe = write_recipe(tmp_path / "r.yaml", doc)
    assert run_cli(["train", str(recipe), "--out", str(tmp_path / "one"), "-q", "--device", "cpu"])[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "-m", "biasbench", "train", str(recipe),
                           "--out", str(tmp_path / "two"), "-q", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, h1 = _history(tmp_path / "one" / "r" / "seed0" / "results.json")
    two, h2 = _history(tmp_path / "two" / "r" / "seed0" / "results.json")
    assert two["environment"]["world_size"] == 2
    written = sorted(p.name for p in (tmp_path / "two" / "r" / "seed0").iterdir())  # by rank 0 alone
    assert written == ["checkpoint.pt", "checkpoint_best.pt", "metrics.csv", "predictions.npz",
                       "results.json"]
    assert h1 == pytest.approx(h2, rel=1e-5, abs=1e-6)


def _children() -> list[str]:
    """Command lines of this process's live children (Linux /proc), except multiprocessing's
    resource tracker: one helper per parent process that ends when the parent does."""
    me, out = str(os.getpid()), []
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text() if p.name.isdigit() else ""
            cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode() if stat else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[1] == me and fields[0] != "Z" and "resource_tracker" not in cmdline:
            out.append(cmdline)
    return out


@pytest.mark.slow  # 14.2 s of CPU with its workers, 50.3 s at load 13.2 (2026-12-05)
def test_parallel_jobs_equal_serial_replicates(tmp_path, capfd):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2, "replicates": 2}))
    assert run_cli(["train", str(recipe), "--out", str(tmp_path / "serial"), "-q"])[0] == 0
    capfd.readouterr()
    code, out, err = run_cli(["train", str(recipe), "--out", str(tmp_path / "par"), "--jobs", "2"])
    assert code == 0, err
    workers = capfd.readouterr().out  # the workers write to the inherited stdout
    for seed in (0, 1):  # one line per finished epoch per replicate, prefixed with its seed
        for epoch in (1, 2):
            assert len([x for x in workers.splitlines() if x.startswith(f"seed {seed}  epoch {epoch}/2  ")]) == 1
    assert all(len(line) <= 80 for line in (out + workers).splitlines())
    if Path("/proc/self/stat").exists():
        assert _children() == []  # every worker ended with the run; none idles behind
    for seed in (0, 1):
        _, a = _history(tmp_path / "serial" / "r" / f"seed{seed}" / "results.json")
        _, b = _history(tmp_path / "par" / "r" / f"seed{seed}" / "results.json")
        # Threads differ (2 vs 1 per process), so reductions may differ in the last bits.
        assert a == pytest.approx(b, rel=1e-5)
