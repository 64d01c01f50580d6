"""The results file: one JSON document per run, read by `compare` and `report`.

Schema (version 2), top-level keys:
  schema_version, kind="biasbench-run", name, status (completed | diverged | interrupted),
  interrupted_by (null, or what stopped the run: SIGINT, SIGTERM, SIGUSR1, --stop-after),
  stop_reason and early_stop (optional: why the run ended, epochs | early_stop | diverged |
  interrupted, and the early-stopping rule's figures; files written before lack them),
  checkpoint_epoch (the epoch checkpoint.pt held when the file was written; null: none),
  seed, replicate, recipe (resolved), recipe_path, task (classification | regression),
  epochs_completed, history (one dict per epoch; `ema_*` columns with train.ema), final (the
  last epoch's row), best (the epoch with the best validation metric and its metrics, and the
  best test metric over epochs),
  params (total/trainable, by role), complexity (MACs/FLOPs, where counted), conversion (only
  for a model `convert` built: what it converted and left), wall_time_s,
  images_per_second (training samples per second, kernel builds and the process's first step
  excluded), peak_memory_mb (optional, added later: CUDA peak allocated, or the CPU process's peak
  resident set), warmup_s (seconds spent building kernels before the clock started, plus the first
  training step of the process, which wall_time_s counts), predictions (what predictions.npz beside
  the file holds, or null), data (sizes, split), environment (versions, device, precision
  trained in, git revision), created (UTC, ISO 8601).
Version 2 added interrupted_by, checkpoint_epoch, warmup_s, predictions and
environment.precision.

`load_results` checks a file against this schema and names the file and the field of the first
problem in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biasbench.errors import UserError

SCHEMA_VERSION = 2
KIND = "biasbench-run"
STATUSES = ("completed", "diverged", "interrupted")
TASKS = ("classification", "regression")

_NUMBER = (int, float)
# Top-level keys: (accepted types, may be null).
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "status": ((str,), False),
    "interrupted_by": ((str,), True),
    "checkpoint_epoch": ((int,), True),
    "seed": ((int,), False),
    "replicate": ((int,), False),
    "recipe": ((dict,), False),
    "recipe_path": ((str,), True),
    "task": ((str,), False),
    "epochs_completed": ((int,), False),
    "history": ((list,), False),
    "final": ((dict,), False),
    "best": ((dict,), False),
    "params": ((dict,), False),
    "complexity": ((dict,), True),
    "wall_time_s": (_NUMBER, False),
    "images_per_second": (_NUMBER, False),
    "warmup_s": (_NUMBER, False),
    "predictions": ((dict,), True),
    "data": ((dict,), False),
    "environment": ((dict,), False),
    "created": ((str,), False),
}


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
    if test_key not in history[0]:  # data.test_split: false (a tuning trial)
        return {"selected_by": key, **best}
    best_test = (max if higher_is_better(test_key) else min)(h[test_key] for h in history)
    return {"selected_by": key, **best, f"best_{test_key}": best_test}


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check one results file; any problem is one clear `UserError` line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"results file `{path}` does not exist") from None
    except IsADirectoryError:
        raise UserError(f"`{path}` is a folder, not a results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"`{path}` is not valid JSON (a truncated or corrupt results file?)") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise UserError(f"`{path}` is not a biasbench results file (no `kind: {KIND}`)")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"`{path}` has results schema version {version!r}, this biasbench reads version "
                        f"{SCHEMA_VERSION}; re-run it or read it with the biasbench release that wrote it")
    check_results(doc, path)
    return doc


def check_results(doc: dict[str, Any], path: str | Path) -> None:
    """Check a parsed results document of this schema version; one line naming the field."""
    problem = _problem(doc)
    if problem is not None:
        raise UserError(f"`{path}` is not a valid results file: {problem}; re-run the training that wrote it")


def _problem(doc: dict[str, Any]) -> str | None:
    for key, (types, nullable) in _FIELDS.items():
        if key not in doc:
            return f"`{key}` is missing"
        value = doc[key]
        if value is None and nullable:
            continue
        if not _is(value, types):
            return f"`{key}` must be {_type_words(types, nullable)}, got {_show(value)}"
    if doc["status"] not in STATUSES:
        return f"`status` must be one of {', '.join(STATUSES)}, got {_show(doc['status'])}"
    if doc["task"] not in TASKS:
        return f"`task` must be one of {', '.join(TASKS)}, got {_show(doc['task'])}"
    history = doc["history"]
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            return f"`history[{i}]` must be a mapping of metrics, got {_show(row)}"
        for k, v in row.items():
            if not _is(v, _NUMBER):
                return f"`history[{i}].{k}` must be a number, got {_show(v)}"
    for k, v in doc["final"].items():
        if not _is(v, _NUMBER):
            return f"`final.{k}` must be a number, got {_show(v)}"
    if "peak_memory_mb" in doc and not _is(doc["peak_memory_mb"], _NUMBER):
        return f"`peak_memory_mb` must be a number, got {_show(doc['peak_memory_mb'])}"
    if doc["status"] == "completed":
        if not history:
            return "`history` is empty, but `status` is completed"
        if not doc["final"]:
            return "`final` is empty, but `status` is completed"
    return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _type_words(types: tuple[type, ...], nullable: bool) -> str:
    words = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list"}
    text = "a number" if types == _NUMBER else " or ".join(words[t] for t in types)
    return text + (" or null" if nullable else "")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
