"""The CI gate: do these runs still learn as well as the committed reference?

A gate file (or a recipe's `gate:` section) lists metrics, each with a direction, an absolute
floor (ceiling for lower-is-better metrics) and/or a maximum worsening against a reference
results file kept in the repository. Each check ends `pass`, `inconclusive` or `fail`:

- a breach with one replicate on a side (no statistics possible) fails on the numbers alone;
- with replicates on both sides a breach fails only when it is also statistically clear
  (p < alpha: paired t-test when the seeds match, Welch otherwise; one-sample t against a
  floor), else it is inconclusive. CI then does not flake on noise, and a collapse still fails.

Exit codes (used by `biasbench compare --gate`): 0 pass (and inconclusive, unless the gate says
`inconclusive: fail`), 1 regression, 2 unusable input (a `UserError`).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biasbench import stats
from biasbench.compare import (
    Group,
    GroupSummary,
    Run,
    _show,
    group_runs,
    load_runs,
    replicate_difference,
    summarize_group,
    used_runs,
)
from biasbench.errors import UserError, did_you_mean
from biasbench.results import higher_is_better
from biasbench.tables import fmt_value
from biasbench.termtable import Line, wrap

_TOP_KEYS = ("reference", "metrics", "replicates", "alpha", "inconclusive")
_METRIC_KEYS = ("direction", "estimator", "floor", "ceiling", "max_drop", "history")
_REPLICATE_KEYS = ("min", "max_diverged")
_HISTORY_KEYS = ("against", "last", "max_drop")
OUTCOMES = ("pass", "inconclusive", "fail")

# Figures a run records once, not per epoch: gate name -> (results field, higher is better).
RUN_LEVEL = {"samples_per_s": ("images_per_second", True), "peak_memory": ("peak_memory_mb", False)}


@dataclass(frozen=True)
class HistoryRule:
    """Compare with the best or the median of the last `last` passing entries of `--history`."""

    against: str  # best | median
    last: int
    max_drop: float  # largest allowed worsening against that figure, in the metric's units


@dataclass(frozen=True)
class MetricRule:
    metric: str
    higher_is_better: bool
    estimator: str = "final"
    limit: float | None = None  # the floor (higher is better) or ceiling (lower is better)
    max_drop: float | None = None  # largest allowed worsening against the reference mean
    history: HistoryRule | None = None


@dataclass(frozen=True)
class Gate:
    source: str
    rules: tuple[MetricRule, ...]
    reference: Path | None = None
    min_replicates: int = 1
    max_diverged: int = 0
    alpha: float = stats.ALPHA
    inconclusive_fails: bool = False

    @property
    def reads_history(self) -> bool:
        return any(r.history is not None for r in self.rules)


# ---------------------------------------------------------------------------------------------
# Reading and validating the gate.
# ---------------------------------------------------------------------------------------------


def _unknown(keys: Any, allowed: tuple[str, ...], where: str, source: str) -> None:
    for k in keys:
        if k not in allowed:
            raise UserError(
                f"gate `{source}`: unknown key `{where}{k}`{did_you_mean(str(k), allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


def _number(v: Any, where: str, source: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v < 0):
        raise UserError(
            f"gate `{source}`: `{where}` must be a {'non-negative ' if positive else ''}number, got {v!r}"
        )
    return float(v)


def _int(v: Any, where: str, source: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UserError(f"gate `{source}`: `{where}` must be an integer >= {low}, got {v!r}")
    return v


def _check_range(metric: str, limits: dict[str, float | None], source: str) -> None:
    """Accuracies are fractions: a limit of 98.0 means 9800%, never what was meant."""
    for where, v in limits.items():
        if v is None:
            continue
        if metric.endswith("_acc") and not 0 <= v <= 1:
            raise UserError(f"gate `{source}`: `{where}` is {v:g}, outside 0..1: accuracies are fractions "
                            f"(write {v / 100:g} for {v:g}%)")
        if v < 0:
            raise UserError(f"gate `{source}`: `{where}` is {v:g}, but {metric} is never negative")


def parse_gate(raw: Any, source: str, base_dir: Path) -> Gate:
    """Validate a gate mapping; every problem is one `UserError` line naming the key."""
    if not isinstance(raw, dict):
        raise UserError(f"gate `{source}` must be a mapping with `metrics:` (and `reference:`)")
    _unknown(raw, _TOP_KEYS, "", source)
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise UserError(f"gate `{source}` needs `metrics:`, a mapping such as `test_acc: {{floor: 0.9}}`")
    rules = []
    for name, spec in metrics.items():
        where = f"metrics.{name}"
        if not isinstance(name, str) or not (name.startswith(("test_", "val_", "train_")) or name in RUN_LEVEL):
            raise UserError(
                f"gate `{source}`: `{where}` must name a per-epoch metric such as test_acc or test_loss, "
                f"or one of {', '.join(RUN_LEVEL)}"
            )
        spec = spec or {}
        if not isinstance(spec, dict):
            raise UserError(f"gate `{source}`: `{where}` must be a mapping of rules (floor, max_drop, ...)")
        _unknown(spec, _METRIC_KEYS, where + ".", source)
        default_higher = RUN_LEVEL[name][1] if name in RUN_LEVEL else higher_is_better(name)
        direction = spec.get("direction", "higher" if default_higher else "lower")
        if direction not in ("higher", "lower"):
            raise UserError(
                f"gate `{source}`: `{where}.direction` must be higher or lower, got {direction!r}"
            )
        hib = direction == "higher"
        estimator = spec.get("estimator", "final")
        if name in RUN_LEVEL and "estimator" in spec:
            raise UserError(f"gate `{source}`: `{where}.estimator` does not apply: {name} is one figure per run, "
                            "not per epoch; drop the key")
        if estimator not in stats.ESTIMATORS:
            raise UserError(
                f"gate `{source}`: `{where}.estimator` must be one of {', '.join(stats.ESTIMATORS)}, "
                f"got {estimator!r}"
            )
        wrong, right = ("ceiling", "floor") if hib else ("floor", "ceiling")
        if wrong in spec:
            raise UserError(
                f"gate `{source}`: `{where}` is {direction}-is-better, so its absolute limit is "
                f"`{right}`, not `{wrong}`"
            )
        limit = _number(spec[right], f"{where}.{right}", source) if right in spec else None
        drop = (
            _number(spec["max_drop"], f"{where}.max_drop", source, positive=True)
            if "max_drop" in spec
            else None
        )
        _check_range(name, {f"{where}.{right}": limit, f"{where}.max_drop": drop}, source)
        history = _history_rule(spec.get("history"), f"{where}.history", source, name)
        if limit is None and drop is None and history is None:
            raise UserError(f"gate `{source}`: `{where}` sets no rule; give `{right}`, `max_drop` and/or `history`")
        rules.append(MetricRule(name, hib, estimator, limit, drop, history))
    reps = raw.get("replicates") or {}
    if not isinstance(reps, dict):
        raise UserError(f"gate `{source}`: `replicates` must be a mapping (min, max_diverged)")
    _unknown(reps, _REPLICATE_KEYS, "replicates.", source)
    ref = raw.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise UserError(
            f"gate `{source}`: `reference` must be a path (relative to the gate file), got {ref!r}"
        )
    if ref is None and any(r.max_drop is not None for r in rules):
        raise UserError(
            f"gate `{source}`: `max_drop` compares with a reference; add `reference: PATH` "
            "(results file or folder, relative to the gate file)"
        )
    alpha = _number(raw.get("alpha", stats.ALPHA), "alpha", source)
    if not 0 < alpha < 1:
        raise UserError(f"gate `{source}`: `alpha` must be between 0 and 1, got {alpha}")
    inconclusive = raw.get("inconclusive", "pass")
    if inconclusive not in ("pass", "fail"):
        raise UserError(f"gate `{source}`: `inconclusive` must be pass or fail, got {inconclusive!r}")
    return Gate(
        source,
        tuple(rules),
        Path(os.path.normpath(base_dir / ref)) if ref else None,
        _int(reps.get("min", 1), "replicates.min", source, 1),
        _int(reps.get("max_diverged", 0), "replicates.max_diverged", source, 0),
        alpha,
        inconclusive == "fail",
    )


def _history_rule(spec: Any, where: str, source: str, metric: str) -> HistoryRule | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise UserError(f"gate `{source}`: `{where}` must be a mapping such as "
                        "`{against: best, last: 10, max_drop: 0.02}`")
    _unknown(spec, _HISTORY_KEYS, where + ".", source)
    against = spec.get("against", "median")
    if against not in ("best", "median"):
        raise UserError(f"gate `{source}`: `{where}.against` must be best or median, got {against!r}")
    if "max_drop" not in spec:
        raise UserError(f"gate `{source}`: `{where}` needs `max_drop`: the largest allowed worsening against "
                        f"the {against} of the history")
    drop = _number(spec["max_drop"], f"{where}.max_drop", source, positive=True)
    _check_range(metric, {f"{where}.max_drop": drop}, source)
    return HistoryRule(against, _int(spec.get("last", 10), f"{where}.last", source, 1), drop)


def load_gate(path: str | Path) -> Gate:
    """A gate file, or a recipe whose `gate:` section holds the gate (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gate file `{path}` does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    from biasbench.recipe import load_raw, read_yaml_mapping

    # the recipes' reader: the line and column of a YAML error, duplicate keys refused
    raw = read_yaml_mapping(path, what="gate file", home="recipes/gates/", plural="gates")
    if "gate" in raw or "model" in raw or "extends" in raw:

        raw = load_raw(path).get("gate")  # a recipe: honour `extends:` like training does
        if not raw:
            raise UserError(f"recipe `{path}` has no `gate:` section; add one or pass a gate file")
    return parse_gate(raw, str(path), path.parent)


# ---------------------------------------------------------------------------------------------
# Running it.
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    metric: str
    rule: str  # floor | ceiling | max_drop | diverged
    outcome: str  # pass | inconclusive | fail
    message: str
    value: float | None = None
    threshold: float | None = None
    p_value: float | None = None


@dataclass
class GateResult:
    gate: str
    reference: str | None
    runs: int
    checks: list[Check] = field(default_factory=list)
    name: str = ""  # the runs' recipe name (the group a CI report files the checks under)
    # what `--history` records: metric -> {estimator, mean, values, seeds}
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        outcomes = {c.outcome for c in self.checks}
        return "fail" if "fail" in outcomes else "inconclusive" if "inconclusive" in outcomes else "pass"

    def exit_code(self, inconclusive_fails: bool = False) -> int:
        if self.outcome == "fail" or (self.outcome == "inconclusive" and inconclusive_fails):
            return 1
        return 0


def _one_group(runs: list[Run], what: str):
    groups = group_runs(runs)
    if len(groups) != 1:
        raise UserError(
            f"the gate checks one configuration, but the {what} hold {len(groups)}: "
            f"{', '.join(g.label for g in groups)}; pass the runs of one recipe"
        )
    return groups[0]


def _check_limit(rule: MetricRule, s: GroupSummary, alpha: float) -> Check:
    word = "floor" if rule.higher_is_better else "ceiling"
    mean, limit, m = s_mean(s), rule.limit, rule.metric
    assert limit is not None and mean is not None
    breach = mean < limit if rule.higher_is_better else mean > limit
    shown = f"{m} {fmt_value(mean, m)} (n={len(s.values)}) vs {word} {fmt_value(limit, m)}"
    if not breach:
        return Check(m, word, "pass", f"{shown}: ok", mean, limit)
    p = stats.one_sample_p(s.values, limit)
    by = fmt_value(abs(mean - limit), m)
    if p is None or p < alpha:
        why = "one replicate, no statistics" if p is None else f"p={p:.3g}"
        return Check(
            m,
            word,
            "fail",
            f"{shown}: {'below' if rule.higher_is_better else 'above'} it by {by} ({why})",
            mean,
            limit,
            p,
        )
    return Check(
        m,
        word,
        "inconclusive",
        f"{shown}: {by} past it but not statistically clear (p={p:.3g} >= {alpha}); run more replicates",
        mean,
        limit,
        p,
    )


def s_mean(s: GroupSummary) -> float | None:
    return sum(s.values) / len(s.values) if s.values else None


def _check_drop(rule: MetricRule, cur: GroupSummary, ref: GroupSummary, alpha: float) -> Check:
    m = rule.metric
    cm, rm = s_mean(cur), s_mean(ref)
    assert rule.max_drop is not None and cm is not None and rm is not None
    worse = (rm - cm) if rule.higher_is_better else (cm - rm)  # positive: worse than the reference
    verb = "drop" if rule.higher_is_better else "rise"
    shown = (
        f"{m} {fmt_value(cm, m)} (n={len(cur.values)}) vs reference {fmt_value(rm, m)} "
        f"(n={len(ref.values)}): {verb} {fmt_value(max(worse, 0.0), m)}, "
        f"allowed {fmt_value(rule.max_drop, m)}"
    )
    if worse <= rule.max_drop:
        return Check(m, "max_drop", "pass", f"{shown}: ok", cm, rule.max_drop)
    # Is the drop beyond the *tolerance* statistically clear? Test against the reference moved
    # by the allowed drop (as the floor is tested against the floor), not against the reference.
    sign = -1.0 if rule.higher_is_better else 1.0
    at_tolerance = replace(ref, values=[v + sign * rule.max_drop for v in ref.values])
    d = replicate_difference(at_tolerance, cur)
    if d.p_value is None:
        return Check(
            m,
            "max_drop",
            "fail",
            f"{shown}: beyond tolerance by {fmt_value(worse - rule.max_drop, m)} "
            "(one replicate on a side, no statistics)",
            cm,
            rule.max_drop,
        )
    if d.p_value < alpha:
        return Check(
            m,
            "max_drop",
            "fail",
            f"{shown}: beyond tolerance by {fmt_value(worse - rule.max_drop, m)}, "
            f"p={d.p_value:.3g} ({d.test} t)",
            cm,
            rule.max_drop,
            d.p_value,
        )
    return Check(
        m,
        "max_drop",
        "inconclusive",
        f"{shown}: beyond tolerance but not statistically clear "
        f"(p={d.p_value:.3g}, {d.test} t); run more replicates",
        cm,
        rule.max_drop,
        d.p_value,
    )


def _summary(group: Group, rule: MetricRule, where: str) -> GroupSummary:
    """The per-replicate values of a rule's metric: an estimator over the history, or a figure
    each run records once (samples per second, peak memory)."""
    if rule.metric not in RUN_LEVEL:
        return summarize_group(group, rule.metric, rule.estimator)
    key = RUN_LEVEL[rule.metric][0]
    used = used_runs(group)
    missing = [r.path for r in used if not isinstance(r.doc.get(key), (int, float))]
    if missing:
        raise UserError(f"gate metric `{rule.metric}` needs `{key}` in the results, but `{missing[0]}`{where} has "
                        "none (written by an older biasbench); re-run it")
    base = summarize_group(group, "train_loss")
    return replace(base, values=[float(r.doc[key]) for r in used], seeds=[r.seed for r in used])


def run_gate(gate: Gate, runs: list[Run], history: list[dict[str, Any]] | None = None) -> GateResult:
    """Check runs (one configuration) against the gate; raises `UserError` for unusable input.
    `history`: the entries of `--history` (biasbench.gate_ci), needed by `history:` rules."""
    if gate.reads_history and history is None:
        metric = next(r.metric for r in gate.rules if r.history is not None)
        raise UserError(f"gate `{gate.source}`: `metrics.{metric}.history` compares with earlier gate runs; "
                        "pass --history FILE (docs/ci.md)")
    group = _one_group(runs, "results given")
    ref_group = None
    if gate.reference is not None:
        if not gate.reference.exists():
            raise UserError(f"gate `{gate.source}`: reference `{gate.reference}` does not exist")
        ref_group = _one_group(load_runs([gate.reference]), f"reference `{gate.reference}`")
        differ = [
            k
            for k in sorted(set(group.ident) | set(ref_group.ident))
            if group.ident.get(k) != ref_group.ident.get(k)
        ]
        if differ:
            diffs = "; ".join(
                f"{k} is {_show(group.ident.get(k))} here but {_show(ref_group.ident.get(k))} in the "
                "reference"
                for k in differ[:3]
            )
            raise UserError(
                f"the reference `{gate.reference}` was trained with another recipe: {diffs}; "
                "regenerate the reference (docs/ci.md)"
            )
    result = GateResult(gate.source, str(gate.reference) if gate.reference else None, len(group.runs),
                        name=group.name)
    diverged = sum(r.status == "diverged" for r in group.runs)
    completed = sum(r.status == "completed" for r in group.runs)
    result.checks.append(
        Check(
            "-",
            "diverged",
            "fail" if diverged > gate.max_diverged else "pass",
            f"{diverged} of {len(group.runs)} runs diverged (allowed {gate.max_diverged})",
            diverged,
            gate.max_diverged,
        )
    )
    if completed == 0 and diverged:
        # Nothing learned at all: a failure whatever replicates.max_diverged allows.
        result.checks.append(Check("-", "completed", "fail", f"no run completed ({diverged} diverged)", 0, 1))
        return result
    # Too few completed runs makes the input unusable, unless divergence (a regression) explains it.
    if completed < gate.min_replicates and diverged <= gate.max_diverged:
        raise UserError(
            f"the gate needs at least {gate.min_replicates} completed runs (replicates.min), these "
            f"results have {completed}; finish or add runs"
        )
    for rule in gate.rules:
        cur = _summary(group, rule, "")
        if not cur.values:
            raise UserError(f"gate metric `{rule.metric}` is not in these results")
        result.figures[rule.metric] = {"estimator": None if rule.metric in RUN_LEVEL else rule.estimator,
                                       "mean": s_mean(cur), "values": cur.values, "seeds": cur.seeds}
        if rule.limit is not None:
            result.checks.append(_check_limit(rule, cur, gate.alpha))
        if rule.history is not None and history is not None:
            result.checks.append(_check_history(rule, rule.history, cur, history, gate.alpha))
        if rule.max_drop is not None and ref_group is not None:
            ref = _summary(ref_group, rule, f" (reference {gate.reference})")
            if not ref.values:
                raise UserError(f"gate metric `{rule.metric}` is not in the reference `{gate.reference}`")
            result.checks.append(_check_drop(rule, cur, ref, gate.alpha))
    return result


def _history_figure(rule: MetricRule, h: HistoryRule, entries: list[dict[str, Any]]) -> tuple[float, int] | None:
    """The best or median mean of the last `h.last` entries that did not fail and measured this
    metric with this estimator (a regression never becomes the figure to beat), and how many."""
    estimator = None if rule.metric in RUN_LEVEL else rule.estimator
    means = [f["mean"] for e in entries if e.get("outcome") != "fail"
             and isinstance(f := (e.get("metrics") or {}).get(rule.metric), dict)
             and f.get("estimator") == estimator and isinstance(f.get("mean"), (int, float))][-h.last:]
    if not means:
        return None
    if h.against == "best":
        return (max if rule.higher_is_better else min)(means), len(means)
    return float(statistics.median(means)), len(means)


def _check_history(rule: MetricRule, h: HistoryRule, cur: GroupSummary, entries: list[dict[str, Any]],
                   alpha: float) -> Check:
    """Like a floor (ceiling) at the history's figure minus (plus) the allowed drop: the same noise
    rule, a one-sample t-test of the replicates against that limit."""
    m = rule.metric
    figure = _history_figure(rule, h, entries)
    if figure is None:
        return Check(m, "history", "pass", f"{m} {fmt_value(s_mean(cur), m)} (n={len(cur.values)}): no earlier "
                     "passing entry in the history to compare with yet; recorded", s_mean(cur), None)
    ref, n = figure
    sign = -1.0 if rule.higher_is_better else 1.0
    limit = ref + sign * h.max_drop
    check = _check_limit(replace(rule, limit=limit), cur, alpha)
    where = f"{h.against} of the last {n} history entr{'y' if n == 1 else 'ies'} {fmt_value(ref, m)}"
    word = "floor" if rule.higher_is_better else "ceiling"
    message = check.message.replace(f"vs {word} {fmt_value(limit, m)}",
                                    f"vs {where} (allowed {fmt_value(h.max_drop, m)}, limit {fmt_value(limit, m)})")
    return replace(check, rule="history", message=message)


def format_result(result: GateResult, inconclusive_fails: bool = False, width: int = 80) -> list[Line]:
    """The gate's report: a line per check (outcome and rule first, for grep), wrapped to `width`."""
    ref = f" against {result.reference}" if result.reference else ""
    lines = wrap(f"gate {result.gate}{ref} ({result.runs} runs)", width)
    for c in result.checks:
        lines += wrap(f"{c.outcome.upper():<12} {c.rule:<8} {c.message}", width, first="  ", rest="      ")
    code = result.exit_code(inconclusive_fails)
    failed = [c for c in result.checks if c.outcome == "fail"]
    tail = {0: "pass", 1: "regression"}[code]
    detail = (
        f": {', '.join(f'{c.metric} {c.rule}' if c.metric != '-' else c.rule for c in failed)}"
        if failed
        else ""
    )
    lines += wrap(f"gate: {result.outcome.upper()}{detail} (exit {code}, {tail})", width)
    return [(t, "") for t in lines]
