"""efficiency: the change of log-metric when a model's parameters are doubled by weights against
doubling them by unshared biases, averaged over depths (DAC Figure 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from biasbench.render import BASELINE_COLOR, VARIANT_COLORS, Block, Mark, save_figure, series_figure, width_axis
from biasbench.study.analyses import NOTHING, Analysis, register, short
from biasbench.study.analysis import StudyRuns, cell_mean, check_metric, comparisons, select
from biasbench.study.specs import StudyKey, Where


@dataclass(frozen=True)
class EfficiencySpec:
    """For each `x`, the change of log-metric when a `normal` model's parameters are doubled by
    adding weights (`weights` arm) against doubling them by unshared biases (`biases` arm),
    averaged over `over` (depths), error bars the sample SD (DAC Figure 4). Cells of one
    comparison share every key but the arm (and keys zipped with it) and `over`."""

    arm: StudyKey
    normal: Any
    weights: Any
    biases: Any
    x: StudyKey
    over: StudyKey
    metric: str | None = None
    estimator: Literal["final", "best"] = "best"
    where: Where = field(default_factory=dict)


@dataclass(frozen=True)
class EfficiencyPoint:
    x: Any
    arm: Any  # the doubled arm: spec.weights or spec.biases
    mean: float  # mean over `over` of (log metric of the doubled arm - of the normal arm), nats
    sd: float | None
    n: int


def efficiency(runs: StudyRuns, spec: EfficiencySpec) -> list[EfficiencyPoint]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "efficiency")
    keys, blocks = comparisons(runs, select(runs, spec.where), spec.arm, [spec.x], "efficiency")
    diffs: dict[tuple[Any, Any], list[float]] = {}
    x_index = keys.index(spec.x)
    for key, arms in blocks.items():
        if spec.normal not in arms:
            continue
        base = cell_mean(arms[spec.normal], metric, spec.estimator, True)
        for doubled in (spec.weights, spec.biases):
            other = cell_mean(arms[doubled], metric, spec.estimator, True) if doubled in arms else None
            if base is not None and other is not None:
                diffs.setdefault((key[x_index], doubled), []).append(other - base)
    return [EfficiencyPoint(x, arm, float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else None, len(d))
            for (x, arm), d in sorted(diffs.items(), key=lambda p: (str(p[0][1]), p[0][0]))]


def efficiency_blocks(runs: StudyRuns, spec: EfficiencySpec, points: list[EfficiencyPoint], figs: Path
                      ) -> list[Block]:
    if not points:
        return [NOTHING]
    metric = runs.default_metric(spec.metric)
    names = {spec.weights: f"weights ({spec.weights}: sqrt(2) more units)",
             spec.biases: f"unshared biases ({spec.biases})"}
    single = sum(1 for p in points if p.sd is None)
    fig = series_figure([Mark(None, p.arm, p.x, p.mean, p.sd, p.sd) for p in points], panels=[None],
                        series=[spec.weights, spec.biases], labels=names,
                        palette={spec.weights: BASELINE_COLOR, spec.biases: VARIANT_COLORS["dac"]}, x_axis=width_axis,
                        xlabel=f"{short(spec.x)} of the normal-size net ({spec.normal})",
                        ylabel=f"change of log {metric} (nats), doubled - normal",
                        panel_title=lambda _: f"parameters doubled two ways; mean over {short(spec.over)}, error "
                                              "bars: sample SD" + ("; hollow: n = 1" if single else ""),
                        title_size=9, panel_size=(6.0, 4.2), zero_line=True)
    path = save_figure(fig, figs / "efficiency.png")
    rows = [[str(p.x), names[p.arm], f"{p.mean:+.4f}", "n = 1" if p.sd is None else f"{p.sd:.3g}", str(p.n)]
            for p in points]
    return [("p", f"For each {spec.x}: the difference of replicate-mean log {metric} between the doubled model and "
                  f"the normal one (`{spec.normal}`), averaged over {spec.over}; negative is an improvement "
                  "(DAC Figure 4)." + (f" {single} point(s) rest on one {spec.over} value (n = 1), so they have no "
                                       "spread: drawn hollow, SD `n = 1`." if single else "")),
            ("table", ([short(spec.x), "doubled by", "change (nats)", "SD", f"{short(spec.over)} values"], rows, None)),
            ("img", ("efficiency", path))]


register(Analysis(
    "efficiency", "Efficiency of unshared biases", EfficiencySpec, efficiency, efficiency_blocks, order=30,
    example={"arm": "arm", "normal": "base", "weights": "wide", "biases": "dac", "x": "units",
             "over": "model.options.depth", "where": {"model.options.shape": "rectangular"}, "metric": "test_loss"}))
