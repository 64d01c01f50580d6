"""`multitask`: several classification tasks in one data set, each input carrying its task id.

    data:
      name: multitask
      options:
        tasks:
          - {data: digits}                        # task 0: the set as it is
          - {data: digits, permute: 1}            # task 1: its pixels permuted (seed 1)
          - {data: digits, classes: [0, 1, 2]}    # task 2: a subset, relabelled 0..2
          - {data: mnist1d, name: m1d, options: {num_samples: 2000}}

Each task is built from a registered data set with the recipe's validation settings, scaled
(uint8 / 255), normalised (the set's own per-channel mean/std, else its training split's mean
and std) and flattened; every task must then have the same number of features (resize alike).
The task id is appended as the last input column, so batches mix tasks freely and a model reads
the id per sample (`models/multitask.py`). Labels are per task (0..n_t-1); the model has
max_t n_t outputs. `info.tasks` records the task names in id order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from biasbench.data import DataBundle, DatasetInfo, Split, build_data, register_dataset
from biasbench.data.bundled import check_options
from biasbench.errors import UserError

_TASK_KEYS = {"data", "name", "classes", "permute", "options"}


def _task_specs(cfg: Any) -> list[dict[str, Any]]:
    check_options("multitask", cfg.options, {"tasks": None})
    tasks = cfg.options.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise UserError(
            "data.options.tasks for multitask must be a non-empty list of tasks, e.g. [{data: digits}]"
        )
    for i, t in enumerate(tasks):
        if not isinstance(t, dict) or "data" not in t:
            raise UserError(f"data.options.tasks[{i}] must be a mapping with at least `data: <data set>`")
        bad = set(t) - _TASK_KEYS
        if bad:
            raise UserError(
                f"data.options.tasks[{i}] has unknown key(s) {sorted(bad)}; keys: {sorted(_TASK_KEYS)}"
            )
    return tasks


def _features(split: Split, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    x = split.x.float() / 255.0 if split.x.dtype == torch.uint8 else split.x.float()
    if mean is not None:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - mean.view(shape)) / std.view(shape)
    return x.reshape(len(x), -1)


def _one_task(cfg: Any, replicate: int, t: int, spec: dict[str, Any]) -> tuple[str, list[Split | None], int]:
    sub = replace(cfg, name=spec["data"], options=dict(spec.get("options") or {}), augment="none")
    b = build_data(sub, replicate=replicate)
    if b.task != "classification":
        raise UserError(f"data.options.tasks[{t}]: `{spec['data']}` is not a classification set")
    if b.mean is not None:
        mean, std = torch.tensor(b.mean), torch.tensor(b.std)
    else:
        tr = _features(b.train, None, None)
        mean, std = tr.mean().reshape(1), tr.std().clamp_min(1e-8).reshape(1)
    splits: list[Split | None] = []
    classes = spec.get("classes")
    perm = None
    for split in (b.train, b.val, b.test):
        if split is None:
            splits.append(None)
            continue
        x, y = _features(split, mean, std), split.y
        if perm is None and spec.get("permute") is not None:
            perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(int(spec["permute"])))
        if perm is not None:
            x = x[:, perm]
        if classes is not None:
            lut = torch.full((b.num_outputs,), -1, dtype=torch.long)
            lut[torch.tensor(classes)] = torch.arange(len(classes))
            keep = lut[y] >= 0
            x, y = x[keep], lut[y[keep]]
        x = torch.cat([x, torch.full((len(x), 1), float(t))], dim=1)
        splits.append(Split(x, y))
    n_out = len(classes) if classes is not None else b.num_outputs
    return str(spec.get("name", f"task{t}")), splits, n_out


@register_dataset("multitask", DatasetInfo("tasks from other registered sets, task id in the last column",
                                             bundled=False, kind="task_rows", reads_root=False,
                                             sizes=lambda cfg: None))  # only building its tasks tells
def multitask(cfg: Any, replicate: int = 0) -> DataBundle:
    names, parts, outputs = [], [], []
    for t, spec in enumerate(_task_specs(cfg)):
        name, splits, n_out = _one_task(cfg, replicate, t, spec)
        names.append(name)
        parts.append(splits)
        outputs.append(n_out)
    widths = {s[0].x.shape[1] - 1 for s in parts}
    if len(widths) != 1:
        raise UserError(
            f"multitask: the tasks have different numbers of features {sorted(widths)}; "
            "use data sets of one size (or resize them alike)"
        )
    if len(set(names)) != len(names):
        raise UserError(f"multitask: task names must differ, got {names}")

    def cat(i: int) -> Split | None:
        got = [p[i] for p in parts if p[i] is not None]
        return Split(torch.cat([s.x for s in got]), torch.cat([s.y for s in got])) if got else None

    d = widths.pop()
    return DataBundle(
        cat(0),
        cat(1),
        cat(2),
        "classification",
        max(outputs),
        (d + 1,),
        info={"source": "multitask", "tasks": names, "task_outputs": outputs, "task_id": "last input column"},
    )
