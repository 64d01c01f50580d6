"""`biasbench report`: a folder holding a Markdown (or HTML) report, its figures and JSON.

One estimator (`final`, `robust` or `min_mean`) is chosen once; every table and figure of the
report shows its values and says which it is. The tables are the ones `compare` prints
(`biasbench.tables`). The figures: learning curves (accuracy and loss; train, validation and
test; replicate mean with a min-max band; the estimate drawn over the epochs it used) and, in the
style of the DAC paper's figures 5 and 6, the estimate against FLOPs and against parameters (one
point per group, 95% CI error bars for n >= 2, a note for n = 1, a line per variant joining
configurations). Each figure's plotted numbers are written beside it as JSON, so tests (and
readers) can check them against the tables. A variant has the same colour in every figure
(the paper's: baseline orange, DAC blue). `biasbench.render` writes the document and the figure
files, as it does the study report's.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from biasbench import render  # noqa: E402
from biasbench.compare import CompareResult, GroupSummary, Run, group_runs, used_runs  # noqa: E402
from biasbench.errors import UserError  # noqa: E402
from biasbench.fsutil import atomic_write_json, atomic_write_text, ensure_dir, writing  # noqa: E402
from biasbench.render import FIT, colors, is_percent, save_figure  # noqa: E402
from biasbench.tables import comparison_table, failures_table, group_table, si_prefix  # noqa: E402
from biasbench.termtable import TextTable  # noqa: E402

FORMATS = ("md", "html")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """Every variant in its colour of every report (biasbench.render.colors)."""
    return colors(sorted(set(variants)))


def _metric_range(values: Sequence[float], percent: bool, linear: bool = True) -> tuple[float, float]:
    """Limits around the data, never outside the metric's range (0-100% for accuracies, >= 0
    for losses on a linear axis)."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max((hi - lo) * 0.08, 0.05 if percent else abs(hi) * 0.02 or 0.01)
    lo, hi = lo - pad, hi + pad
    if percent:
        return max(lo, 0.0), min(hi, 100.0)
    return (max(lo, 0.0) if linear else lo), hi


def _limit_y(ax: Any, values: Sequence[float], percent: bool) -> None:
    ax.set_ylim(*_metric_range(values, percent, ax.get_yscale() == "linear"))


def _group_styles(result: CompareResult) -> dict[str, dict[str, Any]]:
    """Colour by variant; line style by the group's place among the groups of its variant."""
    colors = variant_colors([s.variant for s in result.groups])
    seen: dict[str, int] = {}
    styles = {}
    for s in result.groups:
        k = seen.get(s.variant, 0)
        seen[s.variant] = k + 1
        styles[s.label] = {"color": colors[s.variant], "ls": LINESTYLES[k % len(LINESTYLES)]}
    return styles


# ---------------------------------------------------------------------------------------------
# Learning curves.
# ---------------------------------------------------------------------------------------------


def _curve(runs: Sequence[Run], key: str) -> np.ndarray | None:
    """(replicates, epochs) of `key` over the epochs every replicate has, or None."""
    series = [[row.get(key) for row in r.history] for r in runs]
    length = min((next((i for i, v in enumerate(x) if not isinstance(v, (int, float))), len(x)) for x in series),
                 default=0)
    return np.array([x[:length] for x in series], dtype=float) if length else None


SPLITS = ("train", "val", "test")


def learning_curves(result: CompareResult, runs: Sequence[Run], path: Path,
                    failure: Callable[[dict[str, Any]], bool] | None = None) -> Path:
    """Accuracy and loss per epoch (train, validation, test) for each group: the replicate mean
    as a line, a band from the lowest to the highest replicate, and on the panel of the compared
    metric the estimate drawn across the epochs it averages."""
    groups = {g.label: g for g in group_runs(runs)}
    kinds = [k for k in ("acc", "loss") if any(k in key for r in runs for row in r.history[:1] for key in row)]
    fig, axes = plt.subplots(len(kinds), 3, figsize=(12, 3.4 * len(kinds) + 0.6), squeeze=False)
    styles = _group_styles(result)
    alpha = max(0.08, 0.3 / max(1, len(result.groups)) ** 0.5)  # bands stay legible with many groups
    data: dict[str, Any] = {"estimator": result.estimator, "metric": result.metric, "groups": []}
    for s in result.groups:
        used = used_runs(groups[s.label], failure)
        entry = {"group": s.label, "variant": s.variant, "color": styles[s.label]["color"], "n": len(used),
                 "mean": {}}
        for row, kind in enumerate(kinds):
            for col, split in enumerate(SPLITS):
                entry["mean"] |= _plot_curve(axes[row][col], f"{split}_{kind}", used, s, styles[s.label], alpha)
        if s.estimate is not None and result.metric.split("_", 1)[1] in kinds:
            kind = result.metric.split("_", 1)[1]
            _draw_window(axes[kinds.index(kind)][SPLITS.index(result.metric.split("_")[0])], s, kind,
                         styles[s.label]["color"])
            e, scale = s.estimate, 100.0 if kind == "acc" else 1.0
            entry["estimate"] = {"value": e.value * scale, "window": list(e.window),
                                 "ci": [c * scale for c in e.summary.ci] if e.summary.ci else None}
        data["groups"].append(entry)
    regression = bool(result.groups) and result.groups[0].task == "regression"
    for row, kind in enumerate(kinds):
        for col, split in enumerate(SPLITS):
            _finish_panel(axes[row][col], split, kind, log=kind == "loss" and regression)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"learning curves: replicate mean, band lowest to highest replicate; on {result.metric}, a bar: "
                 f"the {result.estimator} estimate across the epochs it averages", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) + 2) // 3), 1, 0.96))
    return save_figure(fig, path, data)


def _plot_curve(ax: Any, key: str, used: Sequence[Run], s: GroupSummary, style: dict[str, Any], alpha: float
                ) -> dict[str, list[float]]:
    """One group's replicate mean and min-max band of `key`; returns the plotted mean."""
    y = _curve(used, key)
    if y is None:
        return {}
    y = y * (100.0 if key.endswith("_acc") else 1.0)
    epochs = np.arange(1, y.shape[1] + 1)
    ax.plot(epochs, y.mean(axis=0), color=style["color"], ls=style["ls"], lw=1.6, label=f"{s.label} (n={len(used)})")
    if len(used) > 1:
        ax.fill_between(epochs, y.min(axis=0), y.max(axis=0), color=style["color"], alpha=alpha, lw=0)
    return {key: [float(v) for v in y.mean(axis=0)]}


def _finish_panel(ax: Any, split: str, kind: str, *, log: bool) -> None:
    """Title, integer epochs, and y limits within the metric's range (log scale for MSE)."""
    ax.set_title(f"{split} {'accuracy (%)' if kind == 'acc' else 'loss'}", fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    lines = [ln for ln in ax.get_lines() if len(ln.get_ydata())]
    if not lines:
        ax.text(0.5, 0.5, f"no {split} {kind} recorded", ha="center", va="center", transform=ax.transAxes,
                fontsize=9, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if log:
        ax.set_yscale("log")  # MSE spans decades over training
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
    _limit_y(ax, np.concatenate([np.asarray(ln.get_ydata(), float) for ln in lines] + bands), kind == "acc")
    if log:  # plain numbers (0.4, 0.6), not 4x10^-1; the 2-9 ticks labelled when under a decade shows
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else matplotlib.ticker.NullFormatter())


def _draw_window(ax: Any, s: GroupSummary, kind: str, color: str) -> None:
    """The group's estimate as a bar at its value across the epochs it averages (the window as
    used, clipped to the run); the values with their CIs are in the estimates figure."""
    e = s.estimate
    assert e is not None
    lo, hi = e.window
    y = e.value * (100.0 if kind == "acc" else 1.0)
    ax.plot([lo - 0.2, hi + 0.2] if lo == hi else [lo, hi], [y, y], color=color, lw=3.5, alpha=0.45,
            solid_capstyle="butt", zorder=1)


def _point(s: GroupSummary, scale: float, color: str) -> dict[str, Any]:
    """A group's estimate as plotted (in the figure's units) and written to the figure's JSON."""
    e = s.estimate
    assert e is not None
    ci = e.summary.ci
    return {"group": s.label, "variant": s.variant, "model": s.model, "color": color, "value": e.value * scale,
            "n": e.summary.n, "ci": [c * scale for c in ci] if ci else None, "window": list(e.window)}


def _ci_bar(ax: Any, at: float, point: dict[str, Any], percent: bool, *, horizontal: bool) -> bool:
    """The 95% CI as an error bar, drawn inside the metric's range; False when n = 1 (no bar)."""
    if point["ci"] is None:
        return False
    v = point["value"]
    lo, hi = max(point["ci"][0], 0.0), point["ci"][1]
    hi = min(hi, 100.0) if percent else hi
    err = [[v - lo], [hi - v]]
    kw = {"color": point["color"], "capsize": 4, "lw": 1.3, "zorder": 2}
    if horizontal:
        ax.errorbar([v], [at], xerr=err, **kw)
    else:
        ax.errorbar([at], [v], yerr=err, **kw)
    return True


def _bars_note(points: list[dict[str, Any]]) -> str:
    single = [p["group"] for p in points if p["ci"] is None]
    return "error bars: 95% CI over replicates" + (f"; n = 1, no bar: {', '.join(single)}" if single else "")


def estimates_plot(result: CompareResult, path: Path) -> Path | None:
    """One row per group: the estimate with its 95% CI (the table's numbers), coloured by
    variant, the baseline's value as a dashed line. Legible with any number of groups."""
    shown = [s for s in result.groups if s.estimate is not None]
    if not shown:
        return None
    percent = is_percent(result.metric)
    colors = variant_colors([s.variant for s in result.groups])
    points = [_point(s, 100.0 if percent else 1.0, colors[s.variant]) for s in shown]
    fig, ax = plt.subplots(figsize=(7.2, 1.2 + 0.38 * len(shown)))
    for row, point in zip(range(len(points) - 1, -1, -1), points, strict=True):  # the first group on top
        _ci_bar(ax, row, point, percent, horizontal=True)
        ax.plot([point["value"]], [row], "o", color=point["color"], ms=6)
    base = next((p for p in points if p["group"] == result.baseline), None)
    if base is not None:
        ax.axvline(base["value"], color=base["color"], ls="--", lw=1, alpha=0.8)
    ax.set_yticks(range(len(points)), [p["group"] for p in reversed(points)], fontsize=8)
    ax.set_ylim(-0.6, len(points) - 0.4)
    ax.set_xlim(*_metric_range([v for p in points for v in [p["value"], *(p["ci"] or [])]], percent))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(_value_label(result, percent))
    ax.grid(alpha=0.3, axis="x")
    note = _bars_note(points)
    ax.set_title(_fit_title(f"{result.estimator} estimate of {result.metric} per group; {note}"), fontsize=9)
    data = {"estimator": result.estimator, "metric": result.metric, "unit": "%" if percent else result.metric,
            "points": points, "note": note}
    return save_figure(fig, path, data)


def _value_label(result: CompareResult, percent: bool) -> str:
    direction = "higher" if result.higher_is_better else "lower"
    return f"{result.metric}{' (%)' if percent else ''}, {result.estimator} estimate ({direction} is better)"


def _fit_title(text: str, width: int = 90) -> str:
    """A figure title wrapped between words, so that it never runs off the figure."""
    from biasbench.termtable import wrap

    return "\n".join(wrap(text, width))


# ---------------------------------------------------------------------------------------------
# The estimate against FLOPs and parameters (DAC paper, figures 5 and 6).
# ---------------------------------------------------------------------------------------------


def _series(runs: Sequence[Run]) -> dict[str, tuple[str, str]]:
    """Group label -> (series key, legend name). A line joins configurations that differ only in
    the model (architecture, size): same variant, data and protocol, as in the paper's figures.
    The legend names a series by its variant, numbered when a variant has several."""
    keys = {}
    for g in group_runs(runs):
        rest = {k: v for k, v in g.ident.items() if k != "model.name" and not k.startswith("model.options")}
        keys[g.label] = (json.dumps(rest, sort_keys=True, default=str), g.variant)
    per_variant: dict[str, list[str]] = {}
    for key, variant in keys.values():
        if key not in per_variant.setdefault(variant, []):
            per_variant[variant].append(key)
    names = {key: f"{variant} ({i + 1})" if len(ks) > 1 else variant
             for variant, ks in per_variant.items() for i, key in enumerate(sorted(ks))}
    return {label: (key, names[key]) for label, (key, _) in keys.items()}


def complexity_plot(result: CompareResult, runs: Sequence[Run], path: Path, *, x: str) -> Path | None:
    """The estimate against FLOPs per example (`x="flops"`) or parameters (`x="params"`)."""
    sizes = {s.label: float(v) for s in result.groups
             if (v := s.flops if x == "flops" else s.params) and s.estimate is not None}
    if not sizes:
        return None
    percent = is_percent(result.metric)
    prefix, unit_scale = si_prefix(max(sizes.values()))
    x_unit = f"{prefix}FLOPs" if x == "flops" else (f"parameters ({prefix})" if prefix else "parameters")
    colors = variant_colors([s.variant for s in result.groups])
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(sorted({s.model for s in result.groups}))}
    series = _series(runs)
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in result.groups:
        if s.label in sizes:
            point = {**_point(s, 100.0 if percent else 1.0, colors[s.variant]), "x": sizes[s.label] / unit_scale}
            lines.setdefault(series[s.label], []).append(point)
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    styles = iter(LINESTYLES * len(lines))
    for (_, name), members in sorted(lines.items(), key=lambda kv: kv[0][1]):
        members.sort(key=lambda p: p["x"])
        first = members[0]
        ax.plot([p["x"] for p in members], [p["value"] for p in members], color=first["color"], lw=1.4, alpha=0.85,
                zorder=1, label=name, ls=next(styles) if name != first["variant"] else "-",
                marker=markers[first["model"]] if len(markers) == 1 else None)
        for p in members:
            _ci_bar(ax, p["x"], p, percent, horizontal=False)
            ax.scatter([p["x"]], [p["value"]], color=p["color"], marker=markers[p["model"]], s=42, zorder=3,
                       edgecolor="white", linewidth=0.6)
    points = [p for members in lines.values() for p in members]
    _complexity_axes(ax, points, markers, x_unit, x == "flops", percent, result)
    note = _bars_note(points)
    ax.set_title(_fit_title(f"{result.estimator} estimate of {result.metric}; {note}", 80), fontsize=9)
    data = {"estimator": result.estimator, "metric": result.metric, "x": x, "x_unit": x_unit,
            "y_unit": "%" if percent else result.metric, "points": points, "note": note}
    return save_figure(fig, path, data)


def _complexity_axes(ax: Any, points: list[dict[str, Any]], markers: dict[str, str], x_unit: str, flops: bool,
                     percent: bool, result: CompareResult) -> None:
    """Plain tick labels in the chosen unit (no offset, no 1e-6), a log scale for sizes spanning
    decades, y within the metric's range, the legend outside the axes."""
    formatter = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    xs = [p["x"] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")  # a width sweep
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(formatter)
    ax.yaxis.set_major_formatter(formatter)
    ax.set_xlabel(f"{x_unit} per example, forward pass" if flops else x_unit)
    ax.set_ylabel(_value_label(result, percent))
    ax.set_ylim(*_metric_range([v for p in points for v in [p["value"], *(p["ci"] or [])]], percent))
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if len(markers) > 1:  # several architectures: their markers get a key of their own
        handles += [matplotlib.lines.Line2D([], [], color="0.3", marker=mk, ls="", label=model)
                    for model, mk in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# ---------------------------------------------------------------------------------------------
# The document.
# ---------------------------------------------------------------------------------------------


def provenance_table(runs: Sequence[Run], result: CompareResult) -> TextTable:
    label_of = {p: s.label for s in result.groups for p in s.paths}
    headers = ["run", "group", "seed", "status", "epochs", "recipe", "biasbench", "torch", "python", "device",
               "git revision", "created"]
    rows = []
    for r in runs:
        env = r.doc.get("environment") or {}
        rows.append([str(r.path), label_of.get(str(r.path), "-"), str(r.seed), r.status,
                     str(r.doc.get("epochs_completed", len(r.history))), str(r.doc.get("recipe_path") or "-"),
                     str(env.get("biasbench", "-")), str(env.get("torch", "-")), str(env.get("python", "-")),
                     f"{env.get('device', '-')} ({env.get('device_name', '-')})", str(env.get("git_revision") or "-"),
                     str(r.doc.get("created", "-"))])
    return TextTable(headers, rows)


def write_report(result: CompareResult, runs: Sequence[Run], out: Path, fmt: str = "md",
                 failure: Callable[[dict[str, Any]], bool] | None = None) -> Path:
    """Write report.md (or report.html), figures/*.png with their .json and compare.json into `out`."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be md or html, got `{fmt}`")
    out = ensure_dir(Path(out))
    figs = ensure_dir(out / "figures")
    figures: list[tuple[str, Path, str]] = []
    if any(s.used for s in result.groups):  # no completed run: no curve to draw (the notes say why)
        figures.append(("Learning curves", learning_curves(result, runs, figs / "curves.png", failure),
                        f"Replicate mean and min-max band over replicates; on {result.metric}, a bar at the "
                        f"{result.estimator} estimate spans the epochs it averages."))
    est = estimates_plot(result, figs / f"{result.metric}_estimates.png")
    if est is not None:
        figures.append((f"{result.metric} per group", est,
                        f"The {result.estimator} estimate of each group with its 95% CI over replicates (the "
                        "table's values); dashed: the baseline's."))
    for x, what in (("flops", "FLOPs"), ("params", "parameters")):
        p = complexity_plot(result, runs, figs / f"{result.metric}_vs_{x}.png", x=x)
        if p is not None:
            figures.append((f"{result.metric} against {what}", p,
                            f"The {result.estimator} estimate (the table's values), 95% CI error bars over "
                            "replicates; a line joins configurations of one variant."))
    with writing(out / "compare.json", FIT):
        atomic_write_json(out / "compare.json", result.to_json())
    sections = _sections(result, runs, figures)
    doc = render.markdown(sections, out) if fmt == "md" else render.html(sections, "biasbench report", out)
    target = out / f"report.{fmt}"
    with writing(target, FIT):
        atomic_write_text(target, doc)
    return target


def _table_block(t: TextTable) -> list[Any]:
    """A table with its title above and its caption (what the columns mean) below."""
    return ([("p", f"*{t.title}*")] if t.title else []) + [("table", (t.headers, t.rows))] + (
        [("p", t.caption)] if t.caption else [])


def _sections(result: CompareResult, runs: Sequence[Run], figures: list[tuple[str, Path, str]]) -> list[Any]:
    """The report as (kind, payload) blocks, rendered to Markdown or HTML."""
    blocks: list[Any] = [
        ("h1", "biasbench report"),
        ("p", f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from {len(runs)} "
              f"results files. Metric `{result.metric}` ({'higher' if result.higher_is_better else 'lower'} is "
              f"better). Every table and figure uses one estimator, {result.estimator_description}. "
              "Statistics: docs/compare.md."),
        ("h2", "Groups"), *_table_block(group_table(result)),
    ]
    if result.comparisons:
        blocks += [("h2", f"Against {result.baseline}"), *_table_block(comparison_table(result))]
    failures = failures_table(result)
    if failures is not None:
        blocks += [("h2", "Failed trainings"), *_table_block(failures)]
    if result.notes:
        blocks += [("h2", "Notes"), ("list", result.notes)]
    blocks.append(("h2", "Figures"))
    if not any(s.used for s in result.groups):
        blocks.append(("p", "No run completed, so there are no learning curves or estimates to draw."))
    elif not any(s.flops for s in result.groups):
        blocks.append(("p", "No FLOP counts in these results files, so there is no figure against FLOPs."))
    for title, path, caption in figures:
        blocks += [("h3", title), ("img", (title, path)), ("p", caption)]
    blocks += [("h2", "Runs (provenance)"), *_table_block(provenance_table(runs, result))]
    return blocks
