"""The tables of `compare` and `report` as `TextTable`s: one set of rows for the terminal (through
`biasbench.termtable`), the Markdown/HTML report (through tabulate) and the gate's messages.

Every table that shows an estimate says which estimator made it (title and caption); headers are
short so that the common cases fit 80 columns without moving columns to a second block.
"""

from __future__ import annotations

import math
from typing import Any

from biasbench.compare import CompareResult
from biasbench.termtable import TextTable

SI = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def fmt_value(v: float | None, metric: str, signed: bool = False) -> str:
    """A metric value: accuracies (fractions) in percent, everything else with 4 digits."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if metric.endswith("_acc") or metric == "error":
        return f"{100 * v:+.2f}%" if signed else f"{100 * v:.2f}%"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else "<1e-4"


def si_prefix(largest: float) -> tuple[str, float]:
    """The SI prefix and scale that show `largest` with 1-3 digits before the point."""
    for prefix, scale in SI:
        if abs(largest) >= scale:
            return prefix, scale
    return "", 1.0


def si(v: float | None) -> str:
    if v is None:
        return "-"
    prefix, scale = si_prefix(v)
    return f"{v / scale:.3g}{prefix}"


def _pm(mean: float | None, se: float | None, metric: str) -> str:
    if mean is None:
        return "-"
    return fmt_value(mean, metric) + (f" ± {fmt_value(se, metric)}" if se is not None else " (n=1)")


def _epochs(s: Any) -> str:
    e = s.estimate
    if e is None:
        return "-"
    if e.estimator == "robust":
        lo, hi = e.window
        return f"{e.epoch} ({lo}-{hi})" if lo != hi else f"{e.epoch} ({lo})"
    return str(e.epoch)


def group_table(result: CompareResult) -> TextTable:
    """Per group: runs and their fate, the estimate +- SE with its epochs, size and cost."""
    m = result.metric
    with_failed = any(s.failed for s in result.groups)
    counts = "ok/div/fail/int" if with_failed else "ok/div/int"
    epochs = {"robust": ["e* (window)"], "min_mean": ["epoch"]}.get(result.estimator, [])
    headers = ["group", "runs", counts, f"{m} ± SE", *epochs, "params", "FLOPs", "samples/s"]
    rows = []
    for s in result.groups:
        e = s.estimate
        fates = [s.used, s.diverged, *([s.failed] if with_failed else []), s.interrupted]
        rows.append([s.label, str(s.runs), "/".join(map(str, fates)), _pm(e.value, e.summary.se, m) if e else "-",
                     *([_epochs(s)] if epochs else []), f"{s.params:,}" if s.params is not None else "-",
                     si(s.flops), f"{s.images_per_second:,.0f}" if s.images_per_second is not None else "-"])
    direction = "higher" if result.higher_is_better else "lower"
    last = {s.estimate.epoch for s in result.groups if s.estimate}
    which = f"final (epoch {last.pop()})" if result.estimator == "final" and len(last) == 1 else result.estimator
    meaning = ("in the statistics / diverged / failed by the rule / interrupted" if with_failed
               else "in the statistics / diverged / interrupted")
    return TextTable(headers, rows, title=f"{m}, {direction} is better; estimator: {which}",
                     caption=f"Estimator {result.estimator_description}. Runs {counts}: {meaning}. FLOPs per "
                     "example, forward pass.")


def _test(d: Any) -> str:
    if d.test == "paired":
        return f"paired {d.n_baseline}"
    if d.test == "welch":
        return f"Welch {d.n_baseline}/{d.n_variant}"
    return f"none {d.n_baseline}/{d.n_variant}"


def comparison_table(result: CompareResult) -> TextTable:
    m = result.metric
    headers = ["group", "diff", "95% CI", "t-test", "p t", "p ex", "p Holm", "verdict"]
    rows = []
    for c in result.comparisons:
        d = c.difference
        ci = f"[{fmt_value(d.ci[0], m, True)}, {fmt_value(d.ci[1], m, True)}]" if d.ci else "-"
        p_t = "0 (sd=0)" if d.se == 0 and d.p_value == 0 else fmt_p(d.p_value)
        rows.append([c.label, fmt_value(d.diff, m, True), ci, _test(d), p_t,
                     fmt_p(c.examples.p_value) if c.examples else "-", fmt_p(c.p_holm), c.verdict.text])
    family = len([c for c in result.comparisons if c.p_value is not None])
    return TextTable(headers, rows, title=f"against {result.baseline} ({result.estimator} estimator)",
                     left={0, 7}, caption=(
                         f"diff and 95% CI: {m} minus the baseline's, t-test over replicates (paired on shared "
                         "seeds). p ex: paired bootstrap over test examples and seeds. " + (
                             f"p Holm: the larger of the two, Holm-adjusted over {family} comparison"
                             f"{'s' if family != 1 else ''}; the verdict uses it at alpha {result.alpha}." if family
                             else "p Holm: none, no comparison has a t-test (it needs 2 replicates a side).")))


def failures_table(result: CompareResult) -> TextTable | None:
    """Failed and diverged runs per group against the baseline (two-sided Fisher exact test);
    None when no run failed or diverged, or there is no baseline to test against."""
    if result.baseline is None or not any(s.bad for s in result.groups):
        return None  # one group: its counts are in the group table
    base = next((s for s in result.groups if s.label == result.baseline), None)
    p_of = {label: f.p_value for label, f in result.failures.items()}
    rows = [[s.label, str(s.finished), str(s.diverged), str(s.failed),
             "-" if s is base else fmt_p(p_of.get(s.label))] for s in result.groups]
    return TextTable(["group", "runs", "diverged", "failed", "p Fisher"], rows,
                     title=f"failed trainings against {result.baseline}" if base else "failed trainings",
                     caption="runs: finished (completed or diverged). p Fisher: two-sided Fisher exact test of "
                     "(diverged + failed) against the baseline's.")


HISTORY_COLUMNS = (("epoch", "ep"), ("lr", "lr"), ("train_loss", "tr loss"), ("train_acc", "tr acc"),
                   ("val_loss", "va loss"), ("val_acc", "va acc"), ("test_loss", "te loss"),
                   ("test_acc", "te acc"), ("seconds", "s"))


def history_table(doc: dict[str, Any], where: str) -> TextTable:
    """One run's per-epoch history; `*` marks the epoch the validation metric picks. `where` names
    the results file (relative to the folder printed above the tables)."""
    history = doc.get("history") or []
    keys = [(k, h) for k, h in HISTORY_COLUMNS if k in ("epoch", "lr", "seconds") or any(k in r for r in history)]
    best = (doc.get("best") or {}).get("epoch")
    rows = []
    for r in history:
        row = []
        for k, _ in keys:
            v = r.get(k)
            if v is None:
                row.append("-")
            elif k == "epoch":
                row.append(f"{v}{'*' if v == best else ''}")
            elif k == "lr":
                row.append(f"{v:.3g}")
            elif k == "seconds":
                row.append(f"{v:.2f}")
            else:
                row.append(fmt_value(v, k))
        rows.append(row)
    return TextTable([h for _, h in keys], rows,
                     title=f"{doc.get('name')} · seed {doc.get('seed')} · {doc.get('status')} · {where}",
                     caption="tr/va/te: train/validation/test; s: seconds; * the epoch with the best validation "
                     "metric.")
