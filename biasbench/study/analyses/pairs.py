"""pairs: every baseline-against-variant comparison over a key, with its CI, p-value and the
Holm-adjusted p-value across the family, a count line and how each comparison was made fair."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt

from biasbench import stats
from biasbench.render import Block, fmt, fmt_est, fmt_p, is_percent, save_figure
from biasbench.results import higher_is_better
from biasbench.study.analyses import ESTIMATOR_WORDS, NOTHING, Analysis, load_study_runs, register, short
from biasbench.study.analysis import (
    Estimate,
    StudyRuns,
    check_metric,
    compared_key,
    comparisons,
    estimate,
    fairness,
    pair_cells,
    select,
)
from biasbench.study.specs import StudyKey, Where


@dataclass(frozen=True)
class PairsSpec:
    """Every `baseline`-against-variant comparison over `by`, one per combination of the other
    keys, with its CI, p-value and the Holm-adjusted p-value across the family, and a count line
    ("15 of 16 favour dac, 9 significant"). The two cells of a comparison share every varying key
    outside `by`'s zip group, and the `match` keys."""

    by: StudyKey
    baseline: Any
    metric: str | None = None
    estimator: Literal["final", "best", "robust"] = "robust"
    match: list[StudyKey] = field(default_factory=list)  # keys zipped with `by` that one comparison shares too
    where: Where = field(default_factory=dict)


@dataclass(frozen=True)
class PairResult:
    match: dict[str, Any]
    variant: Any
    baseline: Estimate
    other: Estimate
    difference: stats.Difference | None
    p_holm: float | None
    favours_variant: bool | None
    fairness: str = ""  # how the comparison was made fair (`fairness`)


def fairness_lines(out: Path) -> list[str]:
    """The fairness line of every comparison of the study's `analysis.pairs` (for `compare`)."""
    runs = load_study_runs(out)
    spec = runs.analyses.get("pairs")
    if spec is None:
        return []
    return [f"{variant.name} against {base.name}: {fairness(runs, base, variant)}"
            for base, variant in pair_cells(runs, spec)]


@dataclass(frozen=True)
class Pairs:
    pairs: list[PairResult]
    count: str  # "15 of 16 favour dac, ..."


def pairs(runs: StudyRuns, spec: PairsSpec) -> Pairs:
    """The comparisons and the count line ("15 of 16 favour dac; 9 significant ...")."""
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "pairs")
    keys, blocks = comparisons(runs, select(runs, spec.where), spec.by, spec.match, "pairs")
    results = []
    hib = higher_is_better(metric)
    for key, side in blocks.items():
        if spec.baseline not in side:
            continue
        base = estimate(side[spec.baseline], metric, spec.estimator)
        for value, cell in side.items():
            if value == spec.baseline:
                continue
            other = estimate(cell, metric, spec.estimator)
            diff = None
            if base.per_run and other.per_run:
                paired = len(base.per_run) >= 2 and sorted(base.seeds) == sorted(other.seeds) \
                    and len(set(base.seeds)) == len(base.seeds) and None not in base.seeds
                b = list(other.per_run)
                if paired:
                    order = {s: i for i, s in enumerate(other.seeds)}
                    b = [other.per_run[order[s]] for s in base.seeds]
                diff = stats.difference(list(base.per_run), b, paired=paired)
            favours = None if diff is None else (diff.diff > 0) == hib and diff.diff != 0
            results.append(PairResult(dict(zip(keys, key)), value, base, other, diff, None, favours,
                                      fairness(runs, side[spec.baseline], cell)))
    tested = [i for i, r in enumerate(results) if r.difference is not None and r.difference.p_value is not None]
    adjusted = stats.holm([results[i].difference.p_value for i in tested])  # type: ignore[union-attr]
    for i, p in zip(tested, adjusted):
        r = results[i]
        results[i] = replace(r, p_holm=p)
    return Pairs(results, _count_line(results, spec))


def _count_line(results: list[PairResult], spec: Any) -> str:
    """How many comparisons favour each side, and how many of those are significant before and
    after Holm: both directions, so the line agrees with the figure and the table."""
    variants = sorted({str(r.variant) for r in results})
    name = variants[0] if len(variants) == 1 else "the variant"
    compared = [r for r in results if r.difference is not None]
    sides = {name: [r for r in compared if r.favours_variant],
             str(spec.baseline): [r for r in compared if not r.favours_variant and r.difference.diff != 0]}  # type: ignore[union-attr]
    ties = len(compared) - sum(len(v) for v in sides.values())

    def significant(rs: list[PairResult], holm: bool) -> int:
        return sum(1 for r in rs if (r.p_holm if holm else r.difference.p_value) is not None  # type: ignore[union-attr]
                   and (r.p_holm if holm else r.difference.p_value) < stats.ALPHA)  # type: ignore[union-attr,operator]

    tested = sum(1 for r in compared if r.p_holm is not None)
    (v_name, v_runs), (b_name, b_runs) = sides.items()
    line = (f"{len(v_runs)} of {len(compared)} favour {v_name}, {len(b_runs)} favour {b_name}"
            + (f", {ties} tied" if ties else "")
            + f"; significant at p < {stats.ALPHA:g}: {significant(v_runs, False)} for {v_name}, "
              f"{significant(b_runs, False)} for {b_name}; after Holm adjustment across the {tested} tested: "
              f"{significant(v_runs, True)} for {v_name}, {significant(b_runs, True)} for {b_name}")
    if len(results) > len(compared):
        line += f"; {len(results) - len(compared)} more without usable runs on a side"
    if len(compared) > tested:
        line += f"; {len(compared) - tested} without a p-value (fewer than 2 replicates on a side)"
    return line


def pairs_blocks(runs: StudyRuns, spec: PairsSpec, found: Pairs, figs: Path) -> list[Block]:
    results, line = found.pairs, found.count
    if not results:
        return [NOTHING]
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
    scale = 100.0 if is_percent(metric) else 1.0
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
    ax.set_xlabel(f"{spec.estimator} {metric}{' (%)' if is_percent(metric) else ''}: variant - {spec.baseline}")
    without_ci = sum(1 for r in results if r.difference is not None and not r.difference.ci)
    note = f"; {without_ci} without a CI (one replicate on a side)" if without_ci else ""
    ax.set_title(f"difference with 95% CI (blue: significant after Holm){note}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    path = save_figure(fig, figs / "pairs.png")
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
                       [[row[0], row[1], r.fairness] for row, r in zip(rows, results)], None))]


def default_pairs(runs: StudyRuns) -> PairsSpec | None:
    """Every variant against the baseline variant, when the variant varies and one is the baseline."""
    chosen = compared_key(runs)
    if chosen is None or chosen[1] != "model.variant" or not any(c.values.get(chosen[1]) == "baseline"
                                                                  for c in runs.cells):
        return None
    return PairsSpec(by=chosen[1], baseline="baseline", estimator="best")


register(Analysis(
    "pairs", "Pairs", PairsSpec, pairs, pairs_blocks, order=50, default=default_pairs,
    example={"by": "arm", "baseline": "wide", "match": ["model.options.shape", "units"], "metric": "test_loss",
             "estimator": "best", "where": {"arm": ["wide", "dac"]}}))
