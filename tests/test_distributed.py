"""Scale-out: two gloo ranks equal one process on the same global batch; --jobs equals serial."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe


def _history(path):
    doc = json.loads(path.read_text())
    return doc, [v for h in doc["history"] for v in (h["train_loss"], h["test_loss"], h["test_acc"])]


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
    assert sorted(p.name for p in (tmp_path / "two" / "r" / "seed0").iterdir()) == ["checkpoint.pt", "results.json"]
    assert h1 == pytest.approx(h2, rel=1e-5, abs=1e-6)


def test_parallel_jobs_equal_serial_replicates(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2, "replicates": 2}))
    assert run_cli(["train", str(recipe), "--out", str(tmp_path / "serial"), "-q"])[0] == 0
    code, _, err = run_cli(["train", str(recipe), "--out", str(tmp_path / "par"), "-q", "--jobs", "2"])
    assert code == 0, err
    for seed in (0, 1):
        _, a = _history(tmp_path / "serial" / "r" / f"seed{seed}" / "results.json")
        _, b = _history(tmp_path / "par" / "r" / f"seed{seed}" / "results.json")
        # Threads differ (2 vs 1 per process), so reductions may differ in the last bits.
        assert a == pytest.approx(b, rel=1e-5)
