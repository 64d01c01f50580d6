"""`biasbench report`: a folder holding a Markdown (or HTML) report, its figures and JSON.

The tables are the ones `compare` prints (same rows, rendered with tabulate). Figures follow the
DAC paper's figures 5 and 6: one point per configuration, the paper's robust estimator with
95% confidence error bars over replicates, and one line per variant joining configurations
(baseline orange, the others in other colours), against GFLOPs and against parameters; plus
learning curves (replicate mean, band from the lowest to the highest replicate).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from biasbench.compare import CompareResult, Run, comparison_table, fmt_value, group_runs, group_table  # noqa: E402
from biasbench.errors import UserError  # noqa: E402
from biasbench.fsutil import atomic_write, atomic_write_json, atomic_write_text, ensure_dir  # noqa: E402

FORMATS = ("md", "html")
BASELINE_COLOR = "tab:orange"  # the paper draws the baseline orange and DAC blue
OTHER_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} (%)") if metric.endswith("_acc") else (1.0, metric)


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


def _colors(result: CompareResult) -> dict[str, str]:
    """One colour per variant; the baseline group's variant is orange."""
    base_variant = next((s.variant for s in result.groups if s.label == result.baseline), "baseline")
    variants = sorted({s.variant for s in result.groups}, key=lambda v: (v != base_variant, v))
    others = iter(OTHER_COLORS * 10)
    return {v: BASELINE_COLOR if v == base_variant else next(others) for v in variants}


def learning_curves(result: CompareResult, runs: Sequence[Run], path: Path) -> Path:
    """Train and test metric per epoch for each group: replicate mean, min-max band."""
    split_metric = result.metric.split("_", 1)[1]
    scale, ylabel = _scale(f"_{split_metric}")
    groups = {g.label: g for g in group_runs(runs)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Same colours as the complexity figures when each variant is one group (baseline orange).
    by_variant = _colors(result) if len({s.variant for s in result.groups}) == len(result.groups) else None
    for i, s in enumerate(result.groups):
        used = [r for r in groups[s.label].runs if r.status == "completed"]
        for ax, split in zip(axes, ("train", "test"), strict=True):
            key = f"{split}_{split_metric}"
            series = [[row[key] for row in r.history if row.get(key) is not None] for r in used]
            length = min((len(x) for x in series), default=0)
            if length == 0:
                continue
            y = np.array([x[:length] for x in series], dtype=float) * scale
            epochs = np.arange(1, length + 1)
            color = by_variant[s.variant] if by_variant else cycle[i % len(cycle)]
            ax.plot(epochs, y.mean(axis=0), color=color, marker="o", ms=3, label=f"{s.label} (n={len(used)})")
            if len(used) > 1:
                ax.fill_between(epochs, y.min(axis=0), y.max(axis=0), color=color, alpha=0.2, lw=0)
    for ax, split in zip(axes, ("train", "test"), strict=True):
        ax.set_title(f"{split} {split_metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel.strip("_"))
    if not split_metric.endswith("acc"):
        for ax in axes:
            ax.set_yscale("log")  # MSE spans decades over training
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("learning curves (line: replicate mean; band: lowest to highest replicate)", fontsize=10)
    _save(fig, path)
    return path


def _point(s: Any) -> tuple[float, float] | None:
    """The group's robust estimate and its 95% CI half-width (0 for one replicate)."""
    rb = s.robust_best
    if rb is None:
        return None
    ci = rb.summary.ci
    return rb.value, (ci[1] - rb.value) if ci else 0.0


def _series(runs: Sequence[Run]) -> dict[str, tuple[str, str]]:
    """Group label -> (series key, legend name). A line joins configurations that differ only in
    the model (architecture, size): same variant, data and protocol, as in the paper's figures."""
    out: dict[str, tuple[str, str]] = {}
    for g in group_runs(runs):
        rest = {k: v for k, v in g.ident.items() if k not in ("model.name", "model.options")}
        out[g.label] = (json.dumps(rest, sort_keys=True, default=str), g.variant)
    names: dict[str, set[str]] = {}
    for key, variant in out.values():
        names.setdefault(variant, set()).add(key)
    numbered = {
        key: f"{variant} ({i + 1})" if len(keys) > 1 else variant
        for variant, keys in names.items()
        for i, key in enumerate(sorted(keys))
    }
    return {label: (key, numbered[key]) for label, (key, _) in out.items()}


def complexity_plot(result: CompareResult, runs: Sequence[Run], path: Path, *, x: str) -> Path | None:
    """Metric against GFLOPs (`x="flops"`) or parameters (`x="params"`), figures 5/6 style."""
    scale, ylabel = _scale(result.metric)
    colors = _colors(result)
    series = _series(runs)
    xs_of = {
        "flops": lambda s: s.flops / 1e9 if s.flops else None,
        "params": lambda s: float(s.params) if s.params else None,
    }[x]
    lines: dict[tuple[str, str], list[tuple[float, float, float, str]]] = {}
    for s in result.groups:
        p, xv = _point(s), xs_of(s)
        if p is None or xv is None:
            continue
        key, name = series[s.label]
        lines.setdefault((name, s.variant), []).append((xv, p[0] * scale, p[1] * scale, s.label))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = iter(["-", "--", ":", "-."] * 20)
    for (name, variant), pts in sorted(lines.items()):
        pts.sort()
        xs, ys, es, labels = zip(*pts, strict=True)
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            color=colors[variant],
            marker="o",
            capsize=4,
            lw=1.5,
            label=name,
            ls=next(styles) if name != variant else "-",
        )
        for xv, yv, label in zip(xs, ys, labels, strict=True):
            ax.annotate(label, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("GFLOPs per forward pass" if x == "flops" else "parameters")
    if x == "params" and max(p[0] for pts in lines.values() for p in pts) > 10 * min(
        p[0] for pts in lines.values() for p in pts
    ):
        ax.set_xscale("log")
    ax.set_ylabel(f"{ylabel}, robust best estimate")
    ax.set_title("mean over replicates and the 5 epochs around e*; error bars: 95% CI", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return path


# ---------------------------------------------------------------------------------------------
# The document.
# ---------------------------------------------------------------------------------------------


def provenance_rows(runs: Sequence[Run], result: CompareResult) -> tuple[list[str], list[list[str]]]:
    label_of = {p: s.label for s in result.groups for p in s.paths}
    headers = [
        "run",
        "group",
        "seed",
        "status",
        "epochs",
        "recipe",
        "biasbench",
        "torch",
        "python",
        "device",
        "git revision",
        "created",
    ]
    rows = []
    for r in runs:
        env = r.doc.get("environment") or {}
        rows.append(
            [
                str(r.path),
                label_of.get(str(r.path), "-"),
                str(r.seed),
                r.status,
                str(r.doc.get("epochs_completed", len(r.history))),
                str(r.doc.get("recipe_path") or "-"),
                str(env.get("biasbench", "-")),
                str(env.get("torch", "-")),
                str(env.get("python", "-")),
                f"{env.get('device', '-')} ({env.get('device_name', '-')})",
                str(env.get("git_revision") or "-"),
                str(r.doc.get("created", "-")),
            ]
        )
    return headers, rows


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    # labels hold `[key=value]` and `|` never appears in our cells; escape pipes to be safe
    return tabulate([[c.replace("|", "\\|") for c in r] for r in rows], headers=headers, tablefmt="github")


def write_report(result: CompareResult, runs: Sequence[Run], out: Path, fmt: str = "md") -> Path:
    """Write report.md (or report.html), figures/*.png and compare.json into `out`."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be md or html, got `{fmt}`")
    out = ensure_dir(Path(out))
    figs = ensure_dir(out / "figures")
    figures: list[tuple[str, Path]] = [
        ("Learning curves", learning_curves(result, runs, figs / "curves.png"))
    ]
    for x, title in (("flops", "Accuracy against GFLOPs"), ("params", "Accuracy against parameters")):
        p = complexity_plot(result, runs, figs / f"{result.metric}_vs_{x}.png", x=x)
        if p is not None:
            figures.append(
                (title if result.metric.endswith("_acc") else title.replace("Accuracy", result.metric), p)
            )
    atomic_write_json(out / "compare.json", result.to_json())
    sections = _sections(result, runs, figures, out)
    doc = _markdown(sections) if fmt == "md" else _html(sections)
    target = out / f"report.{fmt}"
    atomic_write_text(target, doc)
    return target


def _sections(
    result: CompareResult, runs: Sequence[Run], figures: list[tuple[str, Path]], out: Path
) -> list[Any]:
    """The report as (kind, payload) blocks, rendered to Markdown or HTML."""
    blocks: list[Any] = [
        ("h1", "biasbench report"),
        (
            "p",
            f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from "
            f"{len(runs)} results files. Metric `{result.metric}` "
            f"({'higher' if result.higher_is_better else 'lower'} is better); "
            f"comparisons use the {result.estimator} estimator per replicate. "
            "Statistics: docs/compare.md.",
        ),
        ("h2", "Groups"),
        ("table", group_table(result)),
    ]
    if result.comparisons:
        blocks += [("h2", f"Against {result.baseline}"), ("table", comparison_table(result))]
    if result.notes:
        blocks += [("h2", "Notes"), ("list", result.notes)]
    blocks.append(("h2", "Figures"))
    if not any(s.flops for s in result.groups):
        blocks.append(("p", "No FLOP counts in these results files, so there is no figure against GFLOPs."))
    for title, path in figures:
        blocks += [("h3", title), ("img", (title, os.path.relpath(path, out), path))]
    blocks += [("h2", "Runs (provenance)"), ("table", provenance_rows(runs, result))]
    return blocks


def _markdown(blocks: list[Any]) -> str:
    parts = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {payload}")
        elif kind == "p":
            parts.append(payload)
        elif kind == "table":
            parts.append(_md_table(*payload))
        elif kind == "list":
            parts.append("\n".join(f"- {x}" for x in payload))
        elif kind == "img":
            title, rel, _ = payload
            parts.append(f"![{title}]({Path(rel).as_posix()})")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[Any]) -> str:
    """One file: tables as HTML, images embedded as data URIs (it opens anywhere, alone)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>biasbench report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
    ]
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "table":
            headers, rows = payload
            parts.append(tabulate(rows, headers=headers, tablefmt="html"))
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in payload) + "</ul>")
        elif kind == "img":
            title, rel, path = payload
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(
                f"<img alt='{html.escape(title)}' title='{html.escape(rel)}' "
                f"src='data:image/png;base64,{data}'>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# One run's history in the terminal.
# ---------------------------------------------------------------------------------------------


def history_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    history = doc.get("history") or []
    keys = (
        ["epoch", "lr"]
        + [
            k
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
            if any(k in h for h in history)
        ]
        + ["seconds"]
    )
    best = (doc.get("best") or {}).get("epoch")
    rows = []
    for h in history:
        row = []
        for k in keys:
            v = h.get(k)
            if v is None:
                row.append("-")
            elif k == "epoch":
                row.append(f"{v}{' *' if v == best else ''}")
            elif k == "lr":
                row.append(f"{v:.3g}")
            elif k == "seconds":
                row.append(f"{v:.2f}")
            elif isinstance(v, float) and not math.isfinite(v):
                row.append(str(v))
            else:
                row.append(fmt_value(v, k))
        rows.append(row)
    return keys, rows
