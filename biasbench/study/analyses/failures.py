"""failures: failed and diverged runs per group, a two-sided Fisher exact test of each group
against the baseline group (DAC: 15/576 against 2/449, p = 0.0063)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from biasbench import stats
from biasbench.errors import UserError
from biasbench.render import Block, colors, fmt_p, save_figure
from biasbench.study.analyses import Analysis, register, short
from biasbench.study.analysis import StudyRuns, select
from biasbench.study.specs import StudyKey, Where


@dataclass(frozen=True)
class FailuresSpec:
    """Failed and diverged runs per group of `by`, with a two-sided Fisher exact test of each
    group against `baseline` (DAC: 15/576 against 2/449, p = 0.0063)."""

    by: StudyKey
    baseline: Any = None
    where: Where = field(default_factory=dict)


@dataclass(frozen=True)
class FailureRow:
    group: Any
    runs: int  # finished runs: completed + diverged
    diverged: int
    failed: int  # completed but past the failure criterion
    p_value: float | None  # two-sided Fisher exact test against the baseline group


def failures(runs: StudyRuns, spec: FailuresSpec) -> list[FailureRow]:
    cells = select(runs, spec.where)
    counts: dict[Any, list[int]] = {}
    for c in cells:
        row = counts.setdefault(c.value(spec.by), [0, 0, 0])
        for d in c.docs:
            if d.get("status") in ("completed", "diverged"):
                row[0] += 1
                row[1] += d["status"] == "diverged"
                row[2] += bool(runs.failure and runs.failure.failed(d))
    baseline = spec.baseline if spec.baseline is not None else next(iter(counts))
    if baseline not in counts:
        raise UserError(f"analysis.failures.baseline `{baseline}` is not a value of `{spec.by}` "
                        f"(values: {', '.join(map(str, counts))})")
    b = counts[baseline]
    out = []
    for group, (n, div, fail) in counts.items():
        p = None
        if group != baseline and n and b[0]:
            p = stats.fisher_failures(b[1] + b[2], b[0], div + fail, n).p_value
        out.append(FailureRow(group, n, div, fail, p))
    return out


def failures_blocks(runs: StudyRuns, spec: FailuresSpec, rows_: list[FailureRow], figs: Path) -> list[Block]:
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
    path = save_figure(fig, figs / "failures.png")
    return [("p", f"Finished runs per `{spec.by}`: diverged (loss not finite) and failed ({crit}). p: two-sided "
                  "Fisher exact test of failed-or-diverged against the rest, each group against the baseline."),
            ("table", ([short(spec.by), "runs", "diverged", "failed", "failed or diverged", "Fisher p"], rows, None)),
            ("img", ("failures", path))]


# Diverged runs are a result even when every run diverged: this analysis draws then too.
register(Analysis(
    "failures", "Failed trainings", FailuresSpec, failures, failures_blocks, order=40, needs_usable_runs=False,
    example={"by": "model.variant", "baseline": "baseline"}))
