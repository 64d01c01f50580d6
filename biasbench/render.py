"""The one renderer of biasbench's reports (`report` on runs, and on a study folder).

A report is a list of blocks, `(kind, payload)`:

    ("h1" | "h2" | "h3", text)      a heading
    ("p", text)                     a paragraph; `**bold**` becomes bold in HTML too
    ("list", [text, ...])           a bulleted list
    ("table", (headers, rows, bold))  rows of strings; `bold` (or None): a bool per cell
    ("img", (title, path))          a figure (a PNG), linked from Markdown, embedded in HTML

`markdown` and `html` write them; `save_figure` writes a figure's PNG (and its plotted numbers
as JSON when given); `fmt`, `fmt_se`, `fmt_est`, `fmt_p` format numbers (accuracies as
percent); `colors` gives every variant its colour of every report; `series_figure` draws a
metric against x, one line per series, one panel per value of a key.
"""

from __future__ import annotations

import base64
import html as _html
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402
from tabulate import tabulate  # noqa: E402

from biasbench.fsutil import atomic_write, atomic_write_json, writing  # noqa: E402

Block = tuple[str, Any]
FIT = "fix the folder's permissions or choose another --out"

# ---------------------------------------------------------------------------------------------
# Colours: one per variant in every figure of every report; the DAC paper draws the baseline
# orange and DAC blue. Values not listed take the spare colours in the order asked.
# ---------------------------------------------------------------------------------------------

VARIANT_COLORS = {"baseline": "tab:orange", "dac": "tab:blue", "preact": "tab:green", "mba": "tab:red",
                  "dmb": "tab:purple", "raa": "tab:brown", "arr": "tab:pink", "dnrt": "tab:olive"}
SPARE_COLORS = ("tab:cyan", "tab:gray", "black", "gold", "teal", "navy", "maroon", "lime")
BASELINE_COLOR = VARIANT_COLORS["baseline"]


def colors(values: Iterable[Any], baseline: Any = "baseline") -> dict[Any, str]:
    """`baseline` orange; a value named as a variant in that variant's colour; other values in
    spare colours (cycled)."""
    values = list(dict.fromkeys(values))
    spare = iter(SPARE_COLORS * (1 + len(values) // len(SPARE_COLORS)))
    out = {}
    for v in values:
        own = VARIANT_COLORS.get(str(v)) if str(v) != "baseline" else None
        out[v] = BASELINE_COLOR if v == baseline else own or next(spare)
    return out


# ---------------------------------------------------------------------------------------------
# Numbers.
# ---------------------------------------------------------------------------------------------


def is_percent(metric: str, is_error: bool = False) -> bool:
    """Accuracies (and errors of accuracies) are shown in percent."""
    return metric.endswith("_acc") or is_error


def fmt(value: float | None, metric: str, is_error: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.2f}" if is_percent(metric, is_error) else f"{value:.4g}"


def fmt_se(se: float | None, metric: str, is_error: bool = False) -> str:
    """A standard error to two significant digits (its own precision)."""
    if se is None or not math.isfinite(se):
        return "-"
    text = f"{100 * se if is_percent(metric, is_error) else se:#.2g}"  # '#': 5.0, not 5
    return text.rstrip(".") if "e" not in text else text


def fmt_est(est: Any, metric: str) -> str:
    """An estimate (`value`, `se`, `is_error`) as "value ± SE", or "value (n=1)"."""
    if est is None or est.value is None:
        return "-"
    text = fmt(est.value, metric, est.is_error)
    return f"{text} ± {fmt_se(est.se, metric, est.is_error)}" if est.se is not None else f"{text} (n=1)"


def fmt_p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


def save_figure(fig: Any, path: Path, data: dict[str, Any] | None = None) -> Path:
    """The PNG and, when `data` is given, beside it the plotted numbers and each panel's axis
    limits as JSON (same name, .json)."""
    if data is not None:
        data["axes"] = [{"title": ax.get_title(), "xlim": list(ax.get_xlim()), "ylim": list(ax.get_ylim()),
                         "xscale": ax.get_xscale(), "yscale": ax.get_yscale()} for ax in fig.get_axes()]
    with writing(path, FIT):
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    if data is not None:
        with writing(path.with_suffix(".json"), FIT):
            atomic_write_json(path.with_suffix(".json"), data)
    return path


def width_axis(ax: Any, xs: Sequence[float]) -> None:
    """A log axis of widths, ticked at the widths drawn, in plain numbers (no offset, no 1e1)."""
    ax.set_xscale("log")
    ticks: list[float] = []
    for x in sorted(x for x in xs if math.isfinite(x)):
        if not ticks or x >= 1.15 * ticks[-1]:  # labels of close widths would overlap
            ticks.append(x)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 10 else f"{v:.2g}"))
    ax.xaxis.set_minor_locator(NullLocator())


@dataclass(frozen=True)
class Mark:
    """One point of a line: its panel and series, x, y, the error bar below and above y (None:
    one value, no spread: drawn hollow) and an annotation."""

    panel: Any
    series: Any
    x: float
    y: float
    below: float | None
    above: float | None
    note: str | None = None


def series_figure(marks: Sequence[Mark], *, panels: Sequence[Any], series: Sequence[Any], palette: dict[Any, str],
                  x_axis: Callable[[Any, list[float]], None], xlabel: str, ylabel: str,
                  panel_title: Callable[[Any], str | None], labels: dict[Any, str] | None = None,
                  legend_title: str | None = None, panel_size: tuple[float, float] = (5.2, 4.0),
                  sharey: bool = False, zero_line: bool = False, title_size: int = 10) -> Any:
    """A metric against x: one panel per value of `panels`, in each one line per value of
    `series` (in its colour), points joined in order of x, error bars; a point without spread
    drawn hollow, a point's note written beside it. `x_axis(ax, xs)` sets the x scale and ticks."""
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]), squeeze=False,
                             sharey=sharey)
    for ax, panel in zip(axes[0], panels):
        for s in series:
            pts = sorted((m for m in marks if m.panel == panel and m.series == s), key=lambda m: m.x)
            if not pts:
                continue
            ax.errorbar([m.x for m in pts], [m.y for m in pts],
                        yerr=[[m.below or 0.0 for m in pts], [m.above or 0.0 for m in pts]], marker="o", capsize=4,
                        color=palette[s], label=(labels or {}).get(s, str(s)))
            single = [m for m in pts if m.below is None]
            if single:  # without an error bar they would look certain
                ax.scatter([m.x for m in single], [m.y for m in single], s=64, facecolors="white",
                           edgecolors=palette[s], linewidths=1.5, zorder=3)
            for m in pts:
                if m.note is not None:
                    ax.annotate(m.note, (m.x, m.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if zero_line:
            ax.axhline(0.0, color="black", lw=0.8)
        x_axis(ax, [m.x for m in marks if m.panel == panel])
        title = panel_title(panel)
        if title is not None:
            ax.set_title(title, fontsize=title_size)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    return fig


# ---------------------------------------------------------------------------------------------
# Documents.
# ---------------------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """Text for a Markdown file, HTML-escaped as the HTML report escapes it: Markdown renderers
    pass raw HTML through, so a run named `<img onerror=...>` would run in a viewer."""
    return _html.escape(str(text), quote=False)


# Bold table cells pass through tabulate (which escapes and pads them) between two characters
# of Unicode's private use area, then become <b>...</b>.
_BOLD_ON, _BOLD_OFF = "\ue000", "\ue001"


def _cells(payload: Any) -> tuple[list[str], list[list[str]], list[list[bool]] | None]:
    headers, rows, *bold = payload
    return list(headers), [list(map(str, r)) for r in rows], (bold[0] if bold else None)


def markdown(blocks: Sequence[Block], root: Path) -> str:
    """The blocks as Markdown; figures linked relative to `root` (the report's folder)."""
    esc = md_escape
    parts = []
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {esc(payload)}")
        elif kind == "p":
            parts.append(esc(payload))
        elif kind == "list":
            parts.append("\n".join(f"- {esc(x)}" for x in payload))
        elif kind == "table":
            headers, rows, bold = _cells(payload)  # labels hold `[key=value]`; `|` would end a cell
            cells = [[f"**{esc(c)}**" if bold and bold[i][j] else esc(c) for j, c in enumerate(r)]
                     for i, r in enumerate(rows)]
            parts.append(tabulate([[c.replace("|", "\\|") for c in r] for r in cells],
                                  headers=[esc(h).replace("|", "\\|") for h in headers], tablefmt="github",
                                  disable_numparse=True))
        elif kind == "img":
            title, path = payload
            parts.append(f"![{esc(title)}]({Path(os.path.relpath(path, root)).as_posix()})")
    return "\n\n".join(parts) + "\n"


def html(blocks: Sequence[Block], title: str, root: Path) -> str:
    """One file: tables as HTML, figures embedded as data URIs (it opens anywhere, alone)."""
    esc = _html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
    ]
    for kind, payload in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{esc(payload)}</{kind}>")
        elif kind == "p":
            text = esc(payload)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            parts.append(f"<p>{text}</p>")
        elif kind == "table":
            headers, rows, bold = _cells(payload)
            cells = [[f"{_BOLD_ON}{c}{_BOLD_OFF}" if bold and bold[i][j] else c for j, c in enumerate(r)]
                     for i, r in enumerate(rows)]
            table = tabulate(cells, headers=headers, tablefmt="html", disable_numparse=True)
            parts.append(table.replace(_BOLD_ON, "<b>").replace(_BOLD_OFF, "</b>"))
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in payload) + "</ul>")
        elif kind == "img":
            title_, path = payload
            rel = os.path.relpath(path, root)
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<img alt='{esc(title_)}' title='{esc(rel)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
