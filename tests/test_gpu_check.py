"""benchmarks/gpu_check.sh on a machine without CUDA: every part skipped, said, exit 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs its parts (minutes)")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_skips_every_cuda_part_without_a_gpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("gpu_check: skipped (torch sees no CUDA device)") for line in lines)
    assert all(len(line) <= 80 for line in lines)
    assert (tmp_path / "out" / "summary.txt").read_text().strip().splitlines() == lines
