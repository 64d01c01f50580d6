"""The results file: one JSON document per run, read by `compare` and `report`.

Schema (version 1), top-level keys:
  schema_version, kind="biasbench-run", name, status (completed | diverged | interrupted),
  seed, replicate, recipe (resolved), task, metric_names, history (one dict per epoch),
  final (last epoch's metrics), best (the epoch with the best validation metric and its
  metrics, and the best test metric over epochs), params (total/trainable, by role),
  complexity (MACs/FLOPs, where counted), conversion (only for a model `convert` built: what it
  converted and left), wall_time_s, images_per_second, data (sizes, split),
  environment (versions, device, git revision), created (UTC, ISO 8601).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biasbench.errors import UserError

SCHEMA_VERSION = 1
KIND = "biasbench-run"


def higher_is_better(metric: str) -> bool:
    """Accuracies go up; losses and errors go down."""
    return metric.endswith("_acc")


def best_epoch(history: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The epoch with the best validation metric (test metric when there is no validation)."""
    if not history:
        return {}
    split = "val" if history[0].get("val_loss") is not None else "test"
    key = f"{split}_acc" if task == "classification" else f"{split}_loss"
    pick = max if higher_is_better(key) else min
    best = pick(history, key=lambda h: h[key])
    test_key = "test_acc" if task == "classification" else "test_loss"
    best_test = (max if higher_is_better(test_key) else min)(h[test_key] for h in history)
    return {"selected_by": key, **best, f"best_{test_key}": best_test}


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check one results file; any problem is one clear `UserError` line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"results file `{path}` does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"`{path}` is not valid JSON (a truncated or corrupt results file?)") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise UserError(f"`{path}` is not a biasbench results file (no `kind: {KIND}`)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"`{path}` has results schema version {version!r}, this biasbench reads version "
                        f"{SCHEMA_VERSION}; re-run it or read it with the biasbench release that wrote it")
    return doc
