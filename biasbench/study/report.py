"""`biasbench report DIR --out R` on a study folder: the analyses of its `analysis:` section as
Markdown (report.md, figures linked), one self-contained HTML file (report.html), the figures as
PNG (figures/*.png) and every number as JSON (study_report.json).

Figures follow the DAC paper's: the baseline orange and DAC blue, error bars as the paper draws
them (sample SD over depths in Figures 3-4, 95% CIs in Figures 5-6), axes in SI units.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from biasbench.fsutil import atomic_write, atomic_write_json, atomic_write_text, ensure_dir  # noqa: E402
from biasbench.report import SPARE_COLORS, VARIANT_COLORS, md_escape  # noqa: E402
from biasbench.study import analysis as an  # noqa: E402
from biasbench.study.tune import tuning_blocks  # noqa: E402

ORDER = ("table", "by_width", "efficiency", "failures", "pairs", "complexity")
Block = tuple[str, Any]
NOTHING: Block = ("p", "No usable runs for this analysis yet (none completed without failing); finish the sweep, "
                       "or look at the failures.")


# ---------------------------------------------------------------------------------------------
# Numbers and colours.
# ---------------------------------------------------------------------------------------------


def _percent(metric: str, is_error: bool = False) -> bool:
    return metric.endswith("_acc") or is_error


def fmt(value: float | None, metric: str, is_error: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.2f}" if _percent(metric, is_error) else f"{value:.4g}"


def fmt_se(se: float | None, metric: str, is_error: bool = False) -> str:
    """A standard error to two significant digits (its own precision)."""
    if se is None or not math.isfinite(se):
        return "-"
    text = f"{100 * se if _percent(metric, is_error) else se:#.2g}"  # '#': 5.0, not 5
    return text.rstrip(".") if "e" not in text else text


def fmt_est(est: an.Estimate | None, metric: str) -> str:
    if est is None or est.value is None:
        return "-"
    text = fmt(est.value, metric, est.is_error)
    return f"{text} ± {fmt_se(est.se, metric, est.is_error)}" if est.se is not None else f"{text} (n=1)"


def fmt_p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


BASELINE_COLOR = VARIANT_COLORS["baseline"]
ESTIMATOR_WORDS = {"robust": "robust best estimate", "final": "final epoch", "best": "best-validation epoch",
                   "min_mean": "minimum over epochs of the replicate mean"}


def colors(values: list[Any], baseline: Any = "baseline") -> dict[Any, str]:
    """The baseline orange; a variant in its colour of every report (DAC blue: the paper's
    colours); other values in spare colours."""
    spare = iter(SPARE_COLORS)
    out = {}
    for v in values:
        own = VARIANT_COLORS.get(str(v)) if str(v) != "baseline" else None
        out[v] = BASELINE_COLOR if v == baseline else own or next(spare, "tab:gray")
    return out


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def _width_axis(ax: Any, xs: list[float]) -> None:
    """A log axis of widths, ticked at the widths drawn, in plain numbers (no offset, no 1e1)."""
    ax.set_xscale("log")
    ticks: list[float] = []
    for x in sorted(x for x in xs if math.isfinite(x)):
        if not ticks or x >= 1.15 * ticks[-1]:  # labels of close widths would overlap
            ticks.append(x)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 10 else f"{v:.2g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def short(key: str) -> str:
    """A study key as a label: its last dotted part (`model.options.depth` -> `depth`)."""
    return key.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------
# One section per analysis: blocks of text, tables and figures.
# ---------------------------------------------------------------------------------------------


def _table_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    blocks: list[Block] = []
    tables = an.table(runs, spec)
    for t in tables:
        what = {"min_mean": "minimum over epochs of the replicate-mean", "robust": "robust best estimate of",
                "final": "final-epoch mean of", "best": "mean at the best-validation epoch of"}[t.estimator]
        unit = " (%)" if _percent(t.metric, t.is_error) else ""
        name = ("test error" if t.is_error and t.metric == "test_acc" else t.metric) + unit
        text = f"{what[0].upper()}{what[1:]} {name}, ± one standard error over replicates; best per row in bold."
        blocks.append(("p", f"**{t.title}**: {what} {name}, ± one standard error over replicates; best per row in "
                            "bold." if t.title else text))
        headers = [" / ".join(map(short, t.row_keys))] + [" / ".join(map(str, c)) for c in t.columns]
        rows = [[" / ".join(map(str, rid))] + [fmt_est(e, t.metric) for e in ests] for rid, ests in t.rows]
        bold = [[False] + marks for marks in t.best]
        blocks.append(("table", (headers, rows, bold)))
    return blocks, tables


def _mark_single(xs: list[float], ys: list[float], ax: Any, color: str) -> None:
    """Points that rest on one value draw hollow: without an error bar they would look certain."""
    if xs:
        ax.scatter(xs, ys, s=64, facecolors="white", edgecolors=color, linewidths=1.5, zorder=3)


def _by_width_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    points = an.by_width(runs, spec)
    if not points:
        return [NOTHING], points
    metric = runs.default_metric(spec.metric)
    scale = 100.0 if metric.endswith("_acc") and not spec.log else 1.0
    ylabel = f"log {metric} (nats)" if spec.log else f"{metric}{' (%)' if scale != 1 else ''}"
    shapes = sorted({p.shape for p in points}, key=str)
    series = sorted({p.series for p in points}, key=str)
    palette = colors(series, spec.baseline)
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.2 * len(shapes), 4.0), squeeze=False, sharey=True)
    for ax, shape in zip(axes[0], shapes):
        for s in series:
            pts = sorted((p for p in points if p.shape == shape and p.series == s), key=lambda p: p.x)
            if pts:
                ax.errorbar([p.x for p in pts], [p.y * scale for p in pts], yerr=[(p.sd or 0.0) * scale for p in pts],
                            marker="o", capsize=4, color=palette[s], label=str(s))
                _mark_single([p.x for p in pts if p.sd is None], [p.y * scale for p in pts if p.sd is None], ax,
                             palette[s])
        _width_axis(ax, [p.x for p in points if p.shape == shape])
        if spec.shape:
            ax.set_title(f"{short(spec.shape)} = {shape}", fontsize=10)
        ax.set_xlabel("equivalent width (units per layer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=short(spec.series), title_fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    single = sum(1 for p in points if p.sd is None)
    fig.suptitle(f"{ylabel} against width, averaged over {short(spec.depth)}; error bars: sample SD"
                 + ("; hollow: n = 1, no spread" if single else ""), fontsize=10)
    path = _save(fig, figs / "by_width.png")
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
            ("img", ("by width", path))], points


def _efficiency_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    points = an.efficiency(runs, spec)
    if not points:
        return [NOTHING], points
    metric = runs.default_metric(spec.metric)
    names = {spec.weights: f"weights ({spec.weights}: sqrt(2) more units)",
             spec.biases: f"unshared biases ({spec.biases})"}
    palette = {spec.weights: BASELINE_COLOR, spec.biases: "tab:blue"}
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for arm in (spec.weights, spec.biases):
        pts = sorted((p for p in points if p.arm == arm), key=lambda p: p.x)
        if pts:
            ax.errorbar([p.x for p in pts], [p.mean for p in pts], yerr=[p.sd or 0.0 for p in pts], marker="o",
                        capsize=4, color=palette[arm], label=names[arm])
            _mark_single([p.x for p in pts if p.sd is None], [p.mean for p in pts if p.sd is None], ax, palette[arm])
    ax.axhline(0.0, color="black", lw=0.8)
    _width_axis(ax, [p.x for p in points])
    ax.set_xlabel(f"{short(spec.x)} of the normal-size net ({spec.normal})")
    ax.set_ylabel(f"change of log {metric} (nats), doubled - normal")
    single = sum(1 for p in points if p.sd is None)
    ax.set_title(f"parameters doubled two ways; mean over {short(spec.over)}, error bars: sample SD"
                 + ("; hollow: n = 1" if single else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = _save(fig, figs / "efficiency.png")
    rows = [[str(p.x), names[p.arm], f"{p.mean:+.4f}", "n = 1" if p.sd is None else f"{p.sd:.3g}", str(p.n)]
            for p in points]
    return [("p", f"For each {spec.x}: the difference of replicate-mean log {metric} between the doubled model and "
                  f"the normal one (`{spec.normal}`), averaged over {spec.over}; negative is an improvement "
                  "(DAC Figure 4)." + (f" {single} point(s) rest on one {spec.over} value (n = 1), so they have no "
                                       "spread: drawn hollow, SD `n = 1`." if single else "")),
            ("table", ([short(spec.x), "doubled by", "change (nats)", "SD", f"{short(spec.over)} values"], rows, None)),
            ("img", ("efficiency", path))], points


def _failures_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    rows_ = an.failures(runs, spec)
    crit = runs.failure.describe() if runs.failure else "no criterion set (diverged runs only)"
    rows = [[str(r.group), str(r.runs), str(r.diverged), str(r.failed), f"{r.diverged + r.failed}/{r.runs}",
             "baseline" if r.p_value is None and r.group == (spec.baseline if spec.baseline is not None
                                                              else rows_[0].group) else fmt_p(r.p_value)]
            for r in rows_]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    palette = colors([r.group for r in rows_], spec.baseline if spec.baseline is not None else rows_[0].group)
    rates = [100 * (r.diverged + r.failed) / r.runs if r.runs else 0.0 for r in rows_]
    bars = ax.bar([str(r.group) for r in rows_], rates, color=[palette[r.group] for r in rows_])
    for bar, r in zip(bars, rows_):
        ax.annotate(f"{r.diverged + r.failed}/{r.runs}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("failed or diverged runs (%)")
    ax.set_xlabel(short(spec.by))
    ax.set_ylim(0, max(rates + [1.0]) * 1.25)
    ax.set_title("failed trainings per group (two-sided Fisher exact test in the table)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    path = _save(fig, figs / "failures.png")
    return [("p", f"Finished runs per `{spec.by}`: diverged (loss not finite) and failed ({crit}). p: two-sided "
                  "Fisher exact test of failed-or-diverged against the rest, each group against the baseline."),
            ("table", ([short(spec.by), "runs", "diverged", "failed", "failed or diverged", "Fisher p"], rows, None)),
            ("img", ("failures", path))], rows_


def _pairs_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    results, line = an.pairs(runs, spec)
    if not results:
        return [NOTHING], {"pairs": [], "count": line}
    metric = runs.default_metric(spec.metric)
    rows = []
    for r in results:
        d = r.difference
        where = ", ".join(f"{short(k)}={v}" for k, v in r.match.items()) or "-"
        ci = f"[{fmt(d.ci[0], metric)}, {fmt(d.ci[1], metric)}]" if d is not None and d.ci else "-"
        rows.append([where, str(r.variant), fmt_est(r.baseline, metric), fmt_est(r.other, metric),
                     "-" if d is None else (("+" if d.diff >= 0 else "") + fmt(d.diff, metric)), ci,
                     fmt_p(d.p_value if d else None), fmt_p(r.p_holm),
                     "-" if d is None else "yes" if r.favours_variant else "no"])
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.32 * len(results) + 1.2)))
    scale = 100.0 if _percent(metric) else 1.0
    for i, r in enumerate(results):
        d = r.difference
        if d is None:  # said on the row, not left blank
            ax.annotate("no usable runs on a side", xy=(0, i), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7, color="0.35")
            continue
        lo, hi = (d.ci if d.ci else (d.diff, d.diff))
        significant = r.p_holm is not None and r.p_holm < 0.05
        ax.errorbar(d.diff * scale, i, xerr=[[(d.diff - lo) * scale], [(hi - d.diff) * scale]], fmt="o",
                    capsize=3, color="tab:blue" if significant else "tab:gray")
    ax.axvline(0.0, color="black", lw=0.8)
    # Each row names the variant, then the cell it was compared in (one comparison per row).
    ax.set_yticks(range(len(results)), [", ".join([str(r.variant), *(f"{short(k)}={v}" for k, v in r.match.items())])
                                        for r in results],
                  fontsize=7)
    ax.set_ylim(len(results) - 0.5, -0.5)  # every row, the first at the top, drawn or not
    ax.set_xlabel(f"{spec.estimator} {metric}{' (%)' if _percent(metric) else ''}: variant - {spec.baseline}")
    without_ci = sum(1 for r in results if r.difference is not None and not r.difference.ci)
    note = f"; {without_ci} without a CI (one replicate on a side)" if without_ci else ""
    ax.set_title(f"difference with 95% CI (blue: significant after Holm){note}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    path = _save(fig, figs / "pairs.png")
    est = ESTIMATOR_WORDS[spec.estimator]
    return [("p", f"Every `{spec.baseline}`-against-variant comparison over `{spec.by}` ({est} of {metric}, "
                  "mean ± SE over replicates); CI and p from the paired t-test when both sides ran the same seeds, "
                  "else Welch's; Holm adjustment across the family."),
            ("p", f"**{line}**"),
            ("table", (["comparison", "variant", spec.baseline, "variant value", "difference", "95% CI", "p",
                        "p (Holm)", "favours variant"], rows, None)),
            ("img", ("pairs", path)),
            ("p", "How each comparison was made fair: tuning, capacity (parameter and FLOP ratios of the variant "
                  "to the baseline, as the runs counted them; `match:` solved cells), replicates and why they "
                  "stopped."),
            ("table", (["comparison", "variant", "fairness"],
                       [[row[0], row[1], r.fairness] for row, r in zip(rows, results)], None))], \
        {"pairs": results, "count": line}


def _complexity_blocks(runs: an.StudyRuns, spec: Any, figs: Path) -> tuple[list[Block], Any]:
    points, ylabel = an.complexity(runs, spec)
    if not points:
        return [NOTHING], points
    metric = runs.default_metric(spec.metric)
    scale, unit = (100.0, " (%)") if metric.endswith("_acc") else (1.0, "")
    panels = sorted({p.panel for p in points}, key=str)
    lines = sorted({p.line for p in points}, key=str)
    palette = colors(lines, spec.baseline)
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
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for line in lines:
                pts = sorted((p for p in points if p.panel == panel and p.line == line and getattr(p, x)),
                             key=lambda p: getattr(p, x))
                if not pts:
                    continue
                below = [min(p.ci, p.value) if clip else p.ci for p in pts]  # a loss or error is never < 0
                ax.errorbar([getattr(p, x) for p in pts], [p.value * scale for p in pts],
                            yerr=[[b * scale for b in below], [p.ci * scale for p in pts]], marker="o", capsize=4,
                            color=palette[line], label=str(line))
                for p in pts:
                    ax.annotate(str(p.along), (getattr(p, x), p.value * scale), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.set_xlabel(xlabel)
            ax.set_title(", ".join(f"{short(k)}={v}" for k, v in zip(spec.panels, panel)) or "all cells", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title=short(spec.lines), title_fontsize=8)
        axes[0][0].set_ylabel(f"{ylabel}{unit}, {ESTIMATOR_WORDS[spec.estimator]}")
        blocks.append(("img", (f"{ylabel} against {xlabel}", _save(fig, figs / f"complexity_{x}.png"))))
    rows = [[", ".join(map(str, p.panel)) or "-", str(p.line), str(p.along), EngFormatter(unit="FLOP")(p.flops or 0),
             EngFormatter()(p.params or 0), fmt(p.value, metric, metric.endswith("_acc")),
             fmt(p.ci, metric, metric.endswith("_acc"))] for p in points]
    headers = [" / ".join(map(short, spec.panels)) or "panel", short(spec.lines), short(spec.along), "FLOPs",
               "params", f"{ylabel}{unit}", "95% CI ±"]
    blocks.insert(1, ("table", (headers, rows, None)))
    return blocks, points


SECTIONS = {"table": ("Table", _table_blocks), "by_width": ("By width", _by_width_blocks),
            "efficiency": ("Efficiency of unshared biases", _efficiency_blocks),
            "failures": ("Failed trainings", _failures_blocks), "pairs": ("Pairs", _pairs_blocks),
            "complexity": ("Against complexity (FLOPs, parameters)", _complexity_blocks)}


# ---------------------------------------------------------------------------------------------
# The document.
# ---------------------------------------------------------------------------------------------


def _status_blocks(runs: an.StudyRuns) -> list[Block]:
    counts: dict[str, int] = {}
    for status in runs.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    failed = sum(1 for c in runs.cells for d in c.docs if runs.failure and runs.failure.failed(d))
    crit = f"; {failed} completed runs failed the criterion ({runs.failure.describe()})" if runs.failure else ""
    blocks: list[Block] = [("p", f"{len(runs.statuses)} runs in {len(runs.cells)} cells: "
                                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + crit
                                 + ". Diverged and failed runs are counted under failures and left out of every "
                                   "other analysis; runs not finished are left out everywhere.")]
    if runs.errors:
        blocks.append(("list", [f"{k}: {v}" for k, v in sorted(runs.errors.items())]))
    if not any(cell.usable for cell in runs.cells):
        blocks.append(("p", "**No usable run**: every run diverged, failed the criterion or did not finish, so "
                            "every analysis below except the failure counts is empty."))
    threads = sorted({str((d.get("environment") or {}).get("threads")) for c in runs.cells for d in c.docs
                      if str((d.get("environment") or {}).get("device", "")).startswith("cpu")})
    if len(threads) > 1:  # README, Reproducibility: a seed fixes a CPU run at one thread count
        blocks.append(("p", f"The CPU runs trained on different thread counts ({', '.join(threads)}): on the CPU "
                            "a seed's numbers depend on the thread count, so compare cells knowing it."))
    return blocks


def write_study_report(out_dir: Path, target: Path) -> Path:
    """Write report.md, report.html, figures/*.png and study_report.json into `target`."""
    runs = an.load_study_runs(out_dir)
    target = ensure_dir(Path(target))
    figs = ensure_dir(target / "figures")
    blocks: list[Block] = [
        ("h1", f"Study {runs.name}"),
        ("p", f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from `{out_dir}`. "
              "Statistics: docs/studies.md."),
        ("h2", "Runs"), *_status_blocks(runs)]
    if runs.tuning is not None:  # `tune:` (biasbench/study/tune.py renders its section)
        blocks += [("h2", "Tuning"), *tuning_blocks(runs.tuning, figs)]
    numbers: dict[str, Any] = {}
    usable = any(cell.usable for cell in runs.cells)
    for name in ORDER:
        if name not in runs.analyses:
            continue
        title, build = SECTIONS[name]
        if not usable and name != "failures":  # all-diverged is a result: its counts are above
            blocks += [("h2", title), ("p", "Empty: no run completed without failing, so there is nothing to "
                                            "estimate.")]
            numbers[name] = None
            continue
        section, numbers[name] = build(runs, runs.analyses[name], figs)
        blocks += [("h2", title), *section]
    if runs.chosen_analyses:
        chosen = ", ".join(f"`{name}`" for name in ORDER if name in runs.analyses) or "none (a single cell)"
        blocks.insert(2, ("p", f"The study has no `analysis:` section: the analyses below ({chosen}) were chosen "
                               "from its grid (docs/studies.md); add an `analysis:` section to choose others."))
    atomic_write_text(target / "report.md", _markdown(blocks, target))
    atomic_write_text(target / "report.html", _html(blocks, runs.name))
    atomic_write_json(target / "study_report.json", _jsonable(numbers))
    return target / "report.md"


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _markdown(blocks: list[Block], root: Path) -> str:
    esc = md_escape  # as the HTML report escapes: names and values from the study are not markup
    parts = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"{'#' * int(kind[1])} {esc(payload)}")
        elif kind == "p":
            parts.append(esc(payload))
        elif kind == "list":
            parts.append("\n".join(f"- {esc(x)}" for x in payload))
        elif kind == "table":
            headers, rows, bold = payload
            cells = [[f"**{esc(c)}**" if bold and bold[i][j] else esc(c) for j, c in enumerate(r)]
                     for i, r in enumerate(rows)]
            lines = ["| " + " | ".join(esc(h).replace("|", "\\|") for h in headers) + " |",
                     "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
            parts.append("\n".join(lines))
        elif kind == "img":
            title, path = payload
            parts.append(f"![{esc(title)}]({Path(os.path.relpath(path, root)).as_posix()})")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[Block], name: str) -> str:
    """One file: tables as HTML, figures embedded (it opens anywhere, alone)."""
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(name)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
           "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>"]
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(payload)}</{kind}>")
        elif kind == "p":
            text = esc(payload)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            out.append(f"<p>{text}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in payload) + "</ul>")
        elif kind == "table":
            headers, rows, bold = payload
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
            for i, r in enumerate(rows):
                tds = [f"<td><b>{esc(c)}</b></td>" if bold and bold[i][j] else f"<td>{esc(c)}</td>"
                       for j, c in enumerate(r)]
                out.append("<tr>" + "".join(tds) + "</tr>")
            out.append("</table>")
        elif kind == "img":
            title, path = payload
            data = base64.b64encode(Path(path).read_bytes()).decode()
            out.append(f"<img alt='{esc(title)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
