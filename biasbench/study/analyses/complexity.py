"""complexity: the metric against FLOPs and against parameters, one line per value of a key
joining the values of another (depths of one family), one panel per combination of keys (DAC
Figures 5-6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from matplotlib.ticker import EngFormatter, MaxNLocator

from biasbench.render import Block, Mark, colors, fmt, save_figure, series_figure
from biasbench.results import higher_is_better
from biasbench.study.analyses import ESTIMATOR_WORDS, NOTHING, Analysis, register, short
from biasbench.study.analysis import StudyRuns, check_metric, estimate, key_tuple, select
from biasbench.study.specs import StudyKey, Where


@dataclass(frozen=True)
class ComplexitySpec:
    """The metric against GFLOPs and against parameters, one line per value of `lines` joining
    the values of `along` (depths of one family), one panel per combination of `panels`
    (DAC Figures 5-6). Points: the `estimator`'s value with its 95% CI (the DAC paper's robust
    best estimate by default)."""

    lines: StudyKey
    along: StudyKey
    panels: list[StudyKey] = field(default_factory=list)
    baseline: Any = "baseline"  # the line drawn orange (DAC blue)
    metric: str | None = None
    estimator: Literal["final", "best", "robust"] = "robust"
    where: Where = field(default_factory=dict)


@dataclass(frozen=True)
class ComplexityPoint:
    panel: tuple[Any, ...]
    line: Any
    along: Any
    flops: float | None
    params: float | None
    value: float  # the spec's estimate (an error for accuracies)
    ci: float  # 95% CI half-width (0 with one replicate)


def complexity(runs: StudyRuns, spec: ComplexitySpec) -> list[ComplexityPoint]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "complexity")
    error = higher_is_better(metric)
    points = []
    for c in select(runs, spec.where):
        est = estimate(c, metric, spec.estimator)
        if est.value is None:
            continue
        flops = [((d.get("complexity") or {}).get("flops")) for d in c.usable]
        params = [(d.get("params") or {}).get("total") for d in c.usable]
        half = (est.ci[1] - est.value) if est.ci else 0.0
        value = 1.0 - est.value if error else est.value
        points.append(ComplexityPoint(key_tuple(c, spec.panels), c.value(spec.lines), c.value(spec.along),
                                      _first_number(flops), _first_number(params), value, half))
    return points


def value_label(metric: str) -> str:
    """What the points are: an accuracy is drawn as its error."""
    error = higher_is_better(metric)
    return "test error" if error and metric == "test_acc" else f"1 - {metric}" if error else metric


def _first_number(values: list[Any]) -> float | None:
    return next((float(v) for v in values if isinstance(v, (int, float))), None)


def _si_axis(ax: Any, xs: list[float]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def complexity_blocks(runs: StudyRuns, spec: ComplexitySpec, points: list[ComplexityPoint], figs: Path
                      ) -> list[Block]:
    if not points:
        return [NOTHING]
    metric = runs.default_metric(spec.metric)
    ylabel = value_label(metric)
    scale, unit = (100.0, " (%)") if metric.endswith("_acc") else (1.0, "")
    panels = sorted({p.panel for p in points}, key=str)
    lines = sorted({p.line for p in points}, key=str)
    panels_text = ", ".join(f"`{p}`" for p in spec.panels) or "the study"
    # A loss (MSE, cross-entropy) or an error rate is never negative: its interval is cut at 0.
    clip = metric.endswith(("_loss", "_acc"))
    clipped = [p for p in points if clip and p.ci > p.value]
    cut = (f" {len(clipped)} interval(s) reaching below 0 are drawn cut at 0 (the {ylabel} cannot be negative; "
           "the table gives the full ± half-width).") if clipped else ""
    blocks: list[Block] = [("p", f"{ylabel}: {ESTIMATOR_WORDS[spec.estimator]} with its 95% CI, one line per "
                                 f"`{spec.lines}` joining the values of `{spec.along}` (annotated), one panel per "
                                 f"{panels_text} (DAC Figures 5-6).{cut}")]
    for x, xlabel in (("flops", "FLOPs per forward pass"), ("params", "parameters")):
        marks = [Mark(p.panel, p.line, getattr(p, x), p.value * scale, (min(p.ci, p.value) if clip else p.ci) * scale,
                      p.ci * scale, str(p.along)) for p in points if getattr(p, x)]
        fig = series_figure(marks, panels=panels, series=lines, palette=colors(lines, spec.baseline), x_axis=_si_axis,
                            xlabel=xlabel, ylabel=f"{ylabel}{unit}, {ESTIMATOR_WORDS[spec.estimator]}",
                            panel_title=lambda panel: ", ".join(f"{short(k)}={v}" for k, v in zip(spec.panels, panel))
                            or "all cells", legend_title=short(spec.lines), panel_size=(5.0, 4.0), title_size=9)
        blocks.append(("img", (f"{ylabel} against {xlabel}", save_figure(fig, figs / f"complexity_{x}.png"))))
    rows = [[", ".join(map(str, p.panel)) or "-", str(p.line), str(p.along), EngFormatter(unit="FLOP")(p.flops or 0),
             EngFormatter()(p.params or 0), fmt(p.value, metric, metric.endswith("_acc")),
             fmt(p.ci, metric, metric.endswith("_acc"))] for p in points]
    headers = [" / ".join(map(short, spec.panels)) or "panel", short(spec.lines), short(spec.along), "FLOPs",
               "params", f"{ylabel}{unit}", "95% CI ±"]
    blocks.insert(1, ("table", (headers, rows, None)))
    return blocks


register(Analysis(
    "complexity", "Against complexity (FLOPs, parameters)", ComplexitySpec, complexity, complexity_blocks, order=60,
    example={"lines": "arm", "baseline": "wide", "along": "model.options.depth", "panels": ["model.options.shape"],
             "where": {"units": 23}, "metric": "test_loss"}))
