"""Runs written directly in the trainer's layout: results.json and predictions.npz.

compare, report and gate tests need runs with chosen numbers: replicates whose differences are
identical, predictions that differ on one test example, diverged runs, many groups. A real
smoke run's results document is the template (so the files keep every field the trainer writes,
whatever the schema version); history, status and predictions are then set from a correctness
matrix, so the per-example predictions and the history's accuracies always agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from biasbench.predictions import FILE, TestPredictions, describe, save_predictions
from biasbench.results import best_epoch

CLASSES = 10


def correctness(seed: int, epochs: int, n: int, accuracies: list[float]) -> np.ndarray:
    """(epochs, n) bool: at epoch e exactly round(accuracies[e] * n) examples correct; which ones
    depends on `seed` (the hardest examples, in a per-seed order, are the wrong ones)."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros((epochs, n), dtype=bool)
    for e, acc in enumerate(accuracies):
        out[e, order[: round(acc * n)]] = True
    return out


def targets(n: int) -> np.ndarray:
    return (np.arange(n) % CLASSES).astype(np.int16)


def write_run(root: Path, template: dict[str, Any], *, name: str, seed: int, correct: np.ndarray,
              variant: str = "baseline", status: str = "completed", val_acc: list[float] | None = None,
              recipe: dict[str, Any] | None = None, predictions: bool = True,
              complexity: dict[str, float] | None = None, params: int | None = None, folder: str | None = None
              ) -> Path:
    """Write root/FOLDER/seed{seed}/results.json (+ predictions.npz; FOLDER defaults to `name`)
    for a classifier whose test predictions are `correct` (epochs, N). `recipe` sets dotted
    recipe keys."""
    epochs, n = correct.shape
    doc = copy.deepcopy(template)
    doc.update(name=name, seed=seed, replicate=seed, status=status, epochs_completed=epochs)
    doc["recipe"]["model"]["variant"] = variant
    doc["recipe"]["train"]["epochs"] = epochs
    doc["recipe"]["output"]["name"] = name
    for dotted, value in (recipe or {}).items():
        *path, key = dotted.split(".")
        node = doc["recipe"]
        for part in path:
            node = node.setdefault(part, {})
        node[key] = value
    row0 = template["history"][0]
    history = []
    for e in range(epochs):
        acc = float(correct[e].mean())
        row = {**row0, "epoch": e + 1, "test_acc": acc, "test_loss": 1.0 - acc, "train_acc": min(1.0, acc + 0.01),
               "train_loss": 0.9 - acc / 2}
        if "val_acc" in row0:
            row["val_acc"] = val_acc[e] if val_acc else acc
            row["val_loss"] = 1.0 - row["val_acc"]
        history.append(row)
    doc["history"], doc["final"] = history, history[-1]
    doc["best"] = best_epoch(history, "classification")
    doc["data"] = {**doc.get("data", {}), "test_size": n}
    if complexity is not None:
        doc["complexity"] = complexity
    if params is not None:
        doc["params"] = {**doc.get("params", {}), "total": params}
    run_dir = root / (folder or name) / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    doc["predictions"] = None  # a run that recorded none (the trainer writes null then)
    if predictions:
        y = targets(n)
        pred = np.where(correct, y, (y + 1) % CLASSES).astype(np.int16)
        preds = TestPredictions(np.arange(1, epochs + 1, dtype=np.int32), target=y, pred=pred)
        save_predictions(run_dir / FILE, preds)
        doc["predictions"] = describe(preds)
    path = run_dir / "results.json"
    path.write_text(json.dumps(doc))
    return path


def template_doc(runs_dir: Path) -> dict[str, Any]:
    """A real smoke run's results document (tests/smoke_runs.py), the template of write_run."""
    return json.loads(next(iter(sorted(runs_dir.rglob("results.json")))).read_text())
