"""by_width: the metric against (equivalent) width, one line per series, one panel per network
shape, averaged over depths (DAC Figure 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from biasbench.render import Block, Mark, colors, save_figure, series_figure, width_axis
from biasbench.study.analyses import ESTIMATOR_WORDS, NOTHING, Analysis, register, short
from biasbench.study.analysis import (
    CellRuns,
    StudyRuns,
    cell_mean,
    check_metric,
    compared_key,
    estimate,
    log_values,
    select,
)
from biasbench.study.specs import StudyKey, Where


@dataclass(frozen=True)
class ByWidthSpec:
    """The metric against (equivalent) width per network shape, averaged over depths, error bars
    the sample SD of the averaged cell values, or of the replicates for a point of one cell
    (DAC Figure 3). Cells whose shape is in `average_width` sit at
    sqrt(parameters / depth) (the paper's pyramidal rule); the others at their `width` value,
    which for a biasbench DAC MLP is already its equivalent width (it builds width/sqrt(2) units)."""

    width: StudyKey
    depth: StudyKey
    series: StudyKey
    shape: StudyKey | None = None
    average_width: list[str] = field(default_factory=lambda: ["pyramidal"])
    baseline: Any = "baseline"  # the series drawn orange (DAC blue)
    metric: str | None = None
    estimator: Literal["final", "best"] = "best"
    log: bool = True
    where: Where = field(default_factory=dict)


@dataclass(frozen=True)
class WidthPoint:
    shape: Any
    series: Any
    width: Any  # the nominal width of the group
    x: float  # mean equivalent width of its cells
    y: float  # mean over cells (depths) of the replicate-mean (log) metric
    sd: float | None  # sample SD of those cell means
    cells: int


def _equivalent_width(cell: CellRuns, spec: Any) -> float:
    shape = cell.value(spec.shape) if spec.shape else None
    if shape in spec.average_width:
        params = (cell.usable[0].get("params") or {}).get("total") if cell.usable else None
        depth = cell.value(spec.depth)
        if not params or not depth:
            return float("nan")
        return math.sqrt(params / depth)
    return float(cell.value(spec.width))


def by_width(runs: StudyRuns, spec: ByWidthSpec) -> list[WidthPoint]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "by_width")
    cells = select(runs, spec.where)
    groups: dict[tuple[Any, Any, Any], list[CellRuns]] = {}
    for c in cells:
        groups.setdefault((c.value(spec.shape) if spec.shape else None, c.value(spec.series), c.value(spec.width)),
                          []).append(c)
    points = []
    for (shape, series, width), group in groups.items():
        means = [(m, _equivalent_width(c, spec), c) for c in group
                 if (m := cell_mean(c, metric, spec.estimator, spec.log)) is not None]
        if not means:
            continue
        # The values averaged: one per cell (depth); a point of one cell averages its replicates
        # (that cell's: the group's other cells may have no usable run).
        ys = np.array([m for m, _, _ in means]) if len(means) > 1 else np.array(_run_values(means[0][2], metric, spec))
        points.append(WidthPoint(shape, series, width, float(np.nanmean([x for _, x, _ in means])), float(ys.mean()),
                                 float(ys.std(ddof=1)) if len(ys) > 1 else None, len(means)))
    return points


def _run_values(cell: CellRuns, metric: str, spec: Any) -> list[float]:
    if spec.log:
        return log_values(cell, metric, spec.estimator)
    return list(estimate(cell, metric, spec.estimator).per_run)


def by_width_blocks(runs: StudyRuns, spec: ByWidthSpec, points: list[WidthPoint], figs: Path) -> list[Block]:
    if not points:
        return [NOTHING]
    metric = runs.default_metric(spec.metric)
    scale = 100.0 if metric.endswith("_acc") and not spec.log else 1.0
    ylabel = f"log {metric} (nats)" if spec.log else f"{metric}{' (%)' if scale != 1 else ''}"
    series = sorted({p.series for p in points}, key=str)
    marks = [Mark(p.shape, p.series, p.x, p.y * scale, *(2 * [None if p.sd is None else p.sd * scale]))
             for p in points]
    fig = series_figure(marks, panels=sorted({p.shape for p in points}, key=str), series=series,
                        palette=colors(series, spec.baseline), x_axis=width_axis,
                        xlabel="equivalent width (units per layer)", ylabel=ylabel, legend_title=short(spec.series),
                        panel_title=lambda shape: f"{short(spec.shape)} = {shape}" if spec.shape else None,
                        sharey=True)
    single = sum(1 for p in points if p.sd is None)
    fig.suptitle(f"{ylabel} against width, averaged over {short(spec.depth)}; error bars: sample SD"
                 + ("; hollow: n = 1, no spread" if single else ""), fontsize=10)
    path = save_figure(fig, figs / "by_width.png")
    rows = [[str(p.shape), str(p.series), str(p.width), f"{p.x:.1f}", f"{p.y * scale:.4g}",
             "n = 1" if p.sd is None else f"{p.sd * scale:.3g}", str(p.cells)]
            for p in sorted(points, key=lambda p: (str(p.shape), str(p.series), p.x))]
    averaged = (f" (shapes {', '.join(map(str, spec.average_width))}: sqrt(parameters / depth))"
                if spec.average_width else " (the width value itself)")
    return [("p", f"Each point: the mean over {spec.depth} of the replicate-mean {ylabel} of the cells of one shape, "
                  f"{spec.series} and width ({ESTIMATOR_WORDS[spec.estimator]}); x is the equivalent width"
                  f"{averaged}. Error bars: the sample SD of the averaged cell values, or of the "
                  "replicates for a point of one cell (DAC Figure 3)."
                  + (f" {single} point(s) rest on one value (n = 1: one cell of one usable run), so they have no "
                     "spread: drawn hollow, SD `n = 1`." if single else "")),
            ("table", (["shape", "series", "width", "equivalent width", ylabel, "SD", "cells"], rows, None)),
            ("img", ("by width", path))]


def default_by_width(runs: StudyRuns) -> ByWidthSpec | None:
    """The metric against width when a width varies (and is not the compared key)."""
    chosen = compared_key(runs)
    if chosen is None or "model.options.width" not in chosen[0] or chosen[1] == "model.options.width":
        return None
    return ByWidthSpec(width="model.options.width", depth="model.options.depth", series=chosen[1],
                       log=runs.task != "classification")


register(Analysis(
    "by_width", "By width", ByWidthSpec, by_width, by_width_blocks, order=20, default=default_by_width,
    example={"width": "model.options.width", "depth": "model.options.depth", "shape": "model.options.shape",
             "series": "model.variant", "where": {"arm": ["wide", "dac"]}, "metric": "test_loss"}))
