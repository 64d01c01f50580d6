"""Early stopping (`train.early_stop: {metric, patience, min_delta}`), read from the history alone.

A run stops before an epoch when its metric has not improved on the best so far by more than
`min_delta` for `patience` epochs (losses must fall, accuracies rise; Keras's and Lightning's
rule). The decision is a function of the recorded history, which the checkpoint holds, so a
resumed run stops exactly where an uninterrupted one does, and a run that stopped early is
`completed`: `--resume` skips it.
"""

from __future__ import annotations

from typing import Any

from biasbench.recipe import EarlyStopConfig
from biasbench.results import higher_is_better


def early_stop_due(history: list[dict[str, Any]], cfg: EarlyStopConfig | None) -> dict[str, Any] | None:
    """None to go on; else what the results record: metric, best value, its epoch, patience."""
    if cfg is None:
        return None
    rows = [row for row in history if row.get(cfg.metric) is not None]  # a diverged epoch has none
    if not rows:
        return None
    rises = higher_is_better(cfg.metric)
    best = rows[0]
    for row in rows[1:]:
        change = row[cfg.metric] - best[cfg.metric]
        if (change if rises else -change) > cfg.min_delta:
            best = row
    waited = rows[-1]["epoch"] - best["epoch"]
    if waited < cfg.patience:
        return None
    return {"metric": cfg.metric, "best": best[cfg.metric], "best_epoch": best["epoch"],
            "patience": cfg.patience, "min_delta": cfg.min_delta, "stopped_after": rows[-1]["epoch"]}


def needs(cfg: EarlyStopConfig | None, has_validation: bool, task: str) -> str | None:
    """Why `cfg.metric` cannot be measured in this run (one line), or None."""
    if cfg is None:
        return None
    if "val_" in cfg.metric and not has_validation:
        return (f"train.early_stop.metric is {cfg.metric}, but this run has no validation split "
                "(data.val_fraction is 0): set data.val_fraction, or stop on a train_ metric")
    if cfg.metric.endswith("_acc") and task != "classification":
        return (f"train.early_stop.metric is {cfg.metric}, but a {task} task records no accuracy: "
                "use a _loss metric")
    return None
