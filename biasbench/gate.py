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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biasbench import stats
from biasbench.compare import GroupSummary, Run, _show, group_runs, load_runs, replicate_difference, summarize_group
from biasbench.errors import UserError, did_you_mean
from biasbench.results import higher_is_better
from biasbench.tables import fmt_value
from biasbench.termtable import Line, wrap

_TOP_KEYS = ("reference", "metrics", "replicates", "alpha", "inconclusive")
_METRIC_KEYS = ("direction", "estimator", "floor", "ceiling", "max_drop")
_REPLICATE_KEYS = ("min", "max_diverged")
OUTCOMES = ("pass", "inconclusive", "fail")


@dataclass(frozen=True)
class MetricRule:
    metric: str
    higher_is_better: bool
    estimator: str = "final"
    limit: float | None = None  # the floor (higher is better) or ceiling (lower is better)
    max_drop: float | None = None  # largest allowed worsening against the reference mean


@dataclass(frozen=True)
class Gate:
    source: str
    rules: tuple[MetricRule, ...]
    reference: Path | None = None
    min_replicates: int = 1
    max_diverged: int = 0
    alpha: float = stats.ALPHA
    inconclusive_fails: bool = False


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
        if not isinstance(name, str) or not name.startswith(("test_", "val_", "train_")):
            raise UserError(
                f"gate `{source}`: `{where}` must name a per-epoch metric such as test_acc or test_loss"
            )
        spec = spec or {}
        if not isinstance(spec, dict):
            raise UserError(f"gate `{source}`: `{where}` must be a mapping of rules (floor, max_drop, ...)")
        _unknown(spec, _METRIC_KEYS, where + ".", source)
        direction = spec.get("direction", "higher" if higher_is_better(name) else "lower")
        if direction not in ("higher", "lower"):
            raise UserError(
                f"gate `{source}`: `{where}.direction` must be higher or lower, got {direction!r}"
            )
        hib = direction == "higher"
        estimator = spec.get("estimator", "final")
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
        if limit is None and drop is None:
            raise UserError(f"gate `{source}`: `{where}` sets no rule; give `{right}` and/or `max_drop`")
        rules.append(MetricRule(name, hib, estimator, limit, drop))
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


def run_gate(gate: Gate, runs: list[Run]) -> GateResult:
    """Check runs (one configuration) against the gate; raises `UserError` for unusable input."""
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
    result = GateResult(gate.source, str(gate.reference) if gate.reference else None, len(group.runs))
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
        cur = summarize_group(group, rule.metric, rule.estimator)
        if not cur.values:
            raise UserError(f"gate metric `{rule.metric}` is not in these results")
        if rule.limit is not None:
            result.checks.append(_check_limit(rule, cur, gate.alpha))
        if rule.max_drop is not None and ref_group is not None:
            ref = summarize_group(ref_group, rule.metric, rule.estimator)
            if not ref.values:
                raise UserError(f"gate metric `{rule.metric}` is not in the reference `{gate.reference}`")
            result.checks.append(_check_drop(rule, cur, ref, gate.alpha))
    return result


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
