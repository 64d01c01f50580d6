"""Real smoke-sized quickstart runs shared by the compare, report and gate tests.

Trained once per pytest session (cached under the session's base temp folder), with one torch
thread: on a shared 2-core machine two threads per process made this ~6x slower.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biasbench.recipe import load_recipe
from biasbench.trainer import train_recipe

ROOT = Path(__file__).resolve().parents[1]
REPLICATES = 3  # the same as .ci/gate, so the committed reference matches these runs


def smoke_runs(factory: pytest.TempPathFactory) -> Path:
    """Folder holding quickstart_smoke/seed{0,1,2}/results.json (recipe --smoke, 3 replicates)."""
    out = factory.getbasetemp() / "biasbench_smoke_runs"
    folder = out / "quickstart_smoke"
    if not (folder / f"seed{REPLICATES - 1}" / "results.json").exists():
        recipe = load_recipe(
            ROOT / "recipes/quickstart.yaml",
            [f"output.dir={out}", f"train.replicates={REPLICATES}", "output.checkpoint=false"],
            smoke=True,
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_recipe(recipe, torch.device("cpu"), overwrite=True)
        finally:
            torch.set_num_threads(threads)
    return folder
