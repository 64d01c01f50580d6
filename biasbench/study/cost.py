"""The --dry-run estimate of a study's cost: forward FLOPs per sample x training samples x epochs.

FLOPs come from `biasbench.count` (the DAC paper's convention, one forward pass); a training
step costs about three forward passes, which the printed total says rather than hides. Training
samples are exact for the bundled sets (they are built, in milliseconds); for the others they
come from the data set's declaration (`DatasetInfo.sizes`: counted in its files' headers where
the files are on this machine, else the official release's sizes, which are marked approximate),
less the validation part the recipe carves out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from biasbench.recipe import Recipe
from biasbench.study.schema import Cell, Study


@dataclass(slots=True)  # not frozen: a 100,000-cell plan makes as many, and frozen init is 5x slower
class CellCost:
    cell: str
    runs: int
    params: int
    flops: int  # forward FLOPs per sample
    samples: int | None  # training samples per epoch (None: the data set's declaration cannot tell)
    epochs: int
    exact: bool  # samples built from the data, not from the official size

    @property
    def total(self) -> float | None:
        """Forward FLOPs x training samples x epochs, summed over the cell's runs."""
        return None if self.samples is None else float(self.flops) * self.samples * self.epochs * self.runs


def _train_samples(recipe: Recipe) -> tuple[int | None, bool]:
    """Training samples per epoch and whether they are exact: a bundled set is built (milliseconds);
    any other set's declaration says (`DatasetInfo.sizes`: its files' headers where they are here,
    else the official sizes), less the validation part the recipe carves out."""
    from biasbench.data import build_data, dataset_info

    data = recipe.data
    info = dataset_info(data.name)
    if info.bundled:  # shipped or generated: built in milliseconds, counted exactly
        return len(build_data(data).train), True
    sizes = info.sizes(data)
    if sizes is None:
        return None, False
    if not sizes.carves_validation:
        return sizes.train, sizes.exact
    held = 1 / data.val_folds if data.val_folds else data.val_fraction
    return round(sizes.train * (1 - held)), sizes.exact


def estimate(cells: list[Cell]) -> list[CellCost]:
    """One cost line per cell; models are built once per distinct configuration, data sets
    measured once per distinct `data` section."""
    from biasbench.count import complexity, data_shape
    from biasbench.models import build_model

    counted: dict[str, tuple[int, int]] = {}
    by_data: dict[str, tuple[tuple[int, ...], int, int | None, bool]] = {}
    out = []
    for cell in cells:
        recipe = cell.recipe
        data_key = json.dumps(dataclasses.asdict(recipe.data), sort_keys=True, default=str)
        if data_key not in by_data:  # a bundled set is built to count its samples: once, not per cell
            by_data[data_key] = (*data_shape(recipe.data), *_train_samples(recipe))
        shape, outputs, samples, exact = by_data[data_key]
        key = json.dumps([recipe.model.name, recipe.model.variant, recipe.model.options,
                          recipe.model.variant_options, list(shape), outputs], sort_keys=True, default=str)
        if key not in counted:
            model = build_model(recipe.model.name, recipe.model.variant, num_classes=outputs, in_channels=shape[0],
                                input_shape=shape, variant_options=recipe.model.variant_options,
                                **recipe.model.options)
            counts = complexity(model, shape)
            counted[key] = (int(counts["params"]["total"]), int(counts["flops"]))
        params, flops = counted[key]
        out.append(CellCost(cell.name, recipe.train.replicates, params, flops, samples, recipe.train.epochs, exact))
    return out


def planned(study: Study) -> list[CellCost]:
    """A cost line for every cell of `study`, also of one counted, not built (`Study.plan`):
    each cell costs what its group's representative does."""
    costs = estimate(study.cells)
    if study.plan is None:
        return costs
    return [CellCost(name, c.runs, c.params, c.flops, c.samples, c.epochs, c.exact)
            for name, c in zip(study.plan.names, (costs[g] for g in study.plan.group))]


def si(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, three significant digits)."""
    if value is None or not math.isfinite(value):
        return "?"
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{' ' if unit else ''}{prefix}{unit}"
    return f"{value:.3g}{' ' if unit else ''}{unit}"


def summary(costs: list[CellCost]) -> dict[str, Any]:
    known = [c.total for c in costs if c.total is not None]
    return {"cells": len(costs), "runs": sum(c.runs for c in costs),
            "forward_flops_x_samples_x_epochs": sum(known) if known else None,
            "cells_without_estimate": [c.cell for c in costs if c.total is None],
            "approximate": any(not c.exact for c in costs)}
