"""Reading results files, grouping them into configurations, summarising and comparing groups.

A *group* is one recipe identity (model, variant, data, protocol) with its replicates pooled;
seeds, replicate counts, output folders and where the data lives do not split groups. Groups
that were trained on other data, for another number of epochs or for another task cannot be
compared with each other: `group_runs` refuses them with the key that differs, instead of
averaging apples and pears. The statistics themselves live in `biasbench.stats`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biasbench import stats
from biasbench.errors import UserError, did_you_mean
from biasbench.recipe import experiment_identity
from biasbench.results import KIND, SCHEMA_VERSION, check_results, higher_is_better, load_results

ESTIMATORS = ("final", "robust")

# Keys that must agree across every group of one comparison (else: refused).
_COMPAT_PREFIXES = ("data.", "train.epochs", "task")


# ---------------------------------------------------------------------------------------------
# Finding and reading results files.
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    doc: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.doc.get("status"))

    @property
    def seed(self) -> int | None:
        return self.doc.get("seed")

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.doc.get("history") or [])


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for `results.json`. Duplicates removed."""
    found: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"`{p}` does not exist; give results.json files or folders holding them")
        files = sorted(p.rglob("results.json")) if p.is_dir() else [p]
        if not files:
            raise UserError(f"folder `{p}` holds no results.json files (train a recipe into it first)")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    if not found:
        raise UserError("no results files given")
    return found


def _fast_load(path: Path) -> dict[str, Any]:
    """`load_results` with its checks; the happy path reads each file once."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return load_results(path)  # re-read for the precise one-line error
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("schema_version") != SCHEMA_VERSION:
        return load_results(path)
    check_results(doc, path)
    return doc


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [Run(f, _fast_load(f)) for f in find_results(paths)]


# ---------------------------------------------------------------------------------------------
# Recipe identity and grouping.
# ---------------------------------------------------------------------------------------------


def identity(doc: dict[str, Any]) -> dict[str, Any]:
    """The dotted recipe keys that define what ran, plus the task."""
    return {**experiment_identity(doc.get("recipe") or {}), "task": doc.get("task")}


def _is_compat_key(k: str) -> bool:
    return any(k == p or k.startswith(p) for p in _COMPAT_PREFIXES)


def _key(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=str)


@dataclass
class Group:
    label: str
    ident: dict[str, Any]
    runs: list[Run]

    @property
    def model(self) -> str:
        return str(self.ident.get("model.name"))

    @property
    def variant(self) -> str:
        return str(self.ident.get("model.variant"))

    @property
    def name(self) -> str:
        return str(self.runs[0].doc.get("name"))

    @property
    def task(self) -> str:
        return str(self.ident.get("task"))


def _show(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else str(v)


def check_compatible(a: tuple[Path, dict[str, Any]], b: tuple[Path, dict[str, Any]], what: str) -> None:
    """Refuse to compare runs on other data, epochs or task, naming the first keys that differ."""
    (pa, ia), (pb, ib) = a, b
    bad = [k for k in sorted(set(ia) | set(ib)) if _is_compat_key(k) and ia.get(k) != ib.get(k)]
    if bad:
        diffs = "; ".join(
            f"{k} is {_show(ia.get(k))} in `{pa}` but {_show(ib.get(k))} in `{pb}`" for k in bad[:3]
        )
        raise UserError(
            f"{what} are not comparable: {diffs}; compare runs of the same data, epochs and task separately"
        )


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Pool replicates of one recipe identity; refuse incompatible groups and duplicate seeds."""
    by_key: dict[str, list[Run]] = {}
    idents: dict[str, dict[str, Any]] = {}
    first_compat: tuple[Path, dict[str, Any]] | None = None
    for run in runs:
        ident = identity(run.doc)
        if first_compat is None:
            first_compat = (run.path, ident)
        else:
            check_compatible(first_compat, (run.path, ident), "these runs")
        k = _key(ident)
        by_key.setdefault(k, []).append(run)
        idents[k] = ident
    groups = [Group("", idents[k], rs) for k, rs in by_key.items()]
    for g in groups:
        seen: dict[Any, Path] = {}
        for r in g.runs:
            if r.seed in seen:
                raise UserError(
                    f"`{seen[r.seed]}` and `{r.path}` are the same configuration with the same seed "
                    f"{r.seed} (a copied run?); pass only one of them"
                )
            seen[r.seed] = r.path
        g.runs.sort(key=lambda r: (r.seed is None, r.seed))
    _label(groups)
    return sorted(groups, key=lambda g: g.label)


def _label(groups: list[Group]) -> None:
    """The run name, plus the recipe keys that tell apart groups sharing a name."""
    by_name: dict[str, list[Group]] = {}
    for g in groups:
        by_name.setdefault(g.name, []).append(g)
    for name, gs in by_name.items():
        if len(gs) == 1:
            gs[0].label = name
            continue
        keys = sorted({k for g in gs for k in g.ident if any(h.ident.get(k) != g.ident.get(k) for h in gs)})
        for g in gs:
            parts = [f"{k}={_show(g.ident.get(k))}" for k in keys]
            g.label = f"{name}[{','.join(parts)}]"


# ---------------------------------------------------------------------------------------------
# Summaries and comparisons.
# ---------------------------------------------------------------------------------------------


def default_metric(task: str) -> str:
    return "test_acc" if task == "classification" else "test_loss"


def check_metric(groups: Sequence[Group], metric: str | None) -> str:
    task = groups[0].task
    metric = metric or default_metric(task)
    if not metric.startswith(("test_", "val_", "train_")):
        raise UserError(
            f"--metric must name a per-epoch metric such as test_acc or test_loss, got `{metric}`"
        )
    keys: set[str] = set()
    for g in groups:
        for r in g.runs:
            for row in r.history[:1]:
                keys.update(k for k in row if k.startswith(("test_", "val_", "train_")))
    if keys and metric not in keys:
        extra = (
            " (regression results have no accuracy; use test_loss, the MSE)" if task == "regression" else ""
        )
        raise UserError(
            f"--metric `{metric}` is not in these results{extra}; they record: "
            f"{', '.join(sorted(keys))}{did_you_mean(metric, keys)}"
        )
    return metric


@dataclass
class GroupSummary:
    label: str
    name: str
    model: str
    variant: str
    task: str
    epochs: int
    runs: int
    completed: int
    diverged: int
    interrupted: int
    seeds: list[Any]  # seeds of the runs used in the statistics (completed ones)
    final: stats.Summary
    robust_best: stats.RobustBest | None
    min_error: stats.MinOverEpochs | None
    params: int | None
    macs: float | None
    flops: float | None
    images_per_second: float | None
    values: list[float]  # the per-replicate sample of the chosen estimator
    paths: list[str] = field(default_factory=list)


def _mean_of(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def summarize_group(g: Group, metric: str, estimator: str = "final") -> GroupSummary:
    hib = higher_is_better(metric)
    used = [r for r in g.runs if r.status == "completed"]  # diverged / interrupted: counted, not averaged
    finals = [r.doc.get("final", {}).get(metric) for r in used]
    final_values = [float(v) for v in finals if v is not None]
    histories = [r.history for r in used]
    robust = stats.robust_best_accuracy(histories, metric=metric, higher_is_better=hib) if used else None
    min_err = stats.min_mean_error(histories, metric=metric, higher_is_better=hib) if used else None
    values = list(robust.per_replicate) if (estimator == "robust" and robust) else final_values
    complexity = [r.doc.get("complexity") or {} for r in g.runs]
    return GroupSummary(
        label=g.label,
        name=g.name,
        model=g.model,
        variant=g.variant,
        task=g.task,
        epochs=int(g.ident.get("train.epochs") or 0),
        runs=len(g.runs),
        completed=len(used),
        diverged=sum(r.status == "diverged" for r in g.runs),
        interrupted=sum(r.status == "interrupted" for r in g.runs),
        seeds=[r.seed for r in used],
        final=stats.summarize(final_values),
        robust_best=robust,
        min_error=min_err,
        params=(g.runs[0].doc.get("params") or {}).get("total"),
        macs=_mean_of(c.get("macs") for c in complexity),
        flops=_mean_of(c.get("flops") for c in complexity),
        images_per_second=_mean_of(r.doc.get("images_per_second") for r in used or g.runs),
        values=values,
        paths=[str(r.path) for r in g.runs],
    )


@dataclass
class Comparison:
    label: str
    baseline: str
    difference: stats.Difference
    verdict: stats.Verdict


def find_baseline(groups: Sequence[Group], baseline: str | None) -> Group:
    """The group named by --baseline (label, run name, variant or model/variant); default: the
    only group whose variant is `baseline`, else the first group."""
    if baseline is None:
        plain = [g for g in groups if g.variant == "baseline"]
        return plain[0] if len(plain) == 1 else groups[0]
    matches = [g for g in groups if baseline in (g.label, g.name, g.variant, f"{g.model}/{g.variant}")]
    if not matches:
        names = sorted({g.label for g in groups} | {g.variant for g in groups})
        raise UserError(
            f"--baseline `{baseline}` matches no run group{did_you_mean(baseline, names)}; groups: "
            f"{', '.join(g.label for g in groups)}"
        )
    if len(matches) > 1:
        raise UserError(
            f"--baseline `{baseline}` matches {len(matches)} groups ("
            f"{', '.join(g.label for g in matches)}); give one group's label"
        )
    return matches[0]


def compare_pair(base: GroupSummary, other: GroupSummary, metric: str) -> Comparison | None:
    if not base.values or not other.values:
        return None
    # Paired when both sides ran the same seeds (each seed once): seed-driven variation cancels.
    paired = (
        len(base.values) >= 2
        and sorted(base.seeds) == sorted(other.seeds)
        and len(base.seeds) == len(base.values) == len(other.values)
        and None not in base.seeds
    )
    a, b = base.values, other.values
    if paired:
        order = {s: i for i, s in enumerate(other.seeds)}
        b = [other.values[order[s]] for s in base.seeds]
    d = stats.difference(a, b, paired=paired)
    return Comparison(other.label, base.label, d, stats.verdict(d, higher_is_better(metric)))


@dataclass
class CompareResult:
    metric: str
    higher_is_better: bool
    estimator: str
    baseline: str | None
    groups: list[GroupSummary]
    comparisons: list[Comparison]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summarize_runs(
    runs: Sequence[Run], *, metric: str | None = None, baseline: str | None = None, estimator: str = "final"
) -> CompareResult:
    """Group, summarise and compare every group against the baseline group."""
    if estimator not in ESTIMATORS:
        raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got `{estimator}`")
    groups = group_runs(runs)
    metric = check_metric(groups, metric)
    summaries = [summarize_group(g, metric, estimator) for g in groups]
    notes: list[str] = []
    base_group = find_baseline(groups, baseline) if (len(groups) > 1 or baseline) else None
    comparisons: list[Comparison] = []
    if base_group is not None:
        base = next(s for s in summaries if s.label == base_group.label)
        for s in summaries:
            if s is base:
                continue
            c = compare_pair(base, s, metric)
            if c is None:
                notes.append(
                    f"{s.label}: no completed runs on one side, nothing to compare with {base.label}"
                )
            else:
                comparisons.append(c)
                if c.difference.note:
                    notes.append(f"{s.label} vs {base.label}: {c.difference.note}")
    for s in summaries:
        if s.diverged:
            notes.append(
                f"{s.label}: {s.diverged} of {s.runs} runs diverged; they are counted here and "
                "left out of every mean"
            )
        if s.interrupted:
            notes.append(
                f"{s.label}: {s.interrupted} of {s.runs} runs were interrupted (resume them with "
                "--resume); left out of every mean"
            )
        if s.completed == 1:
            notes.append(f"{s.label}: one completed replicate: no standard error or confidence interval")
        if s.robust_best and s.robust_best.selected_by.startswith("test_"):
            notes.append(
                f"{s.label}: no validation split, so the robust estimator chose its epoch on the test "
                "set (optimistic)"
            )
    return CompareResult(
        metric,
        higher_is_better(metric),
        estimator,
        base_group.label if base_group else None,
        summaries,
        comparisons,
        notes,
    )


def compare_paths(paths: Iterable[str | Path], **kwargs: Any) -> CompareResult:
    return summarize_runs(load_runs(paths), **kwargs)


# ---------------------------------------------------------------------------------------------
# Table rows shared by the terminal (rich) and the report (tabulate).
# ---------------------------------------------------------------------------------------------


def fmt_value(v: float | None, metric: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    if metric.endswith("_acc") or metric == "error":
        return f"{100 * v:+.2f}%" if signed else f"{100 * v:.2f}%"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def _pm(mean: float | None, se: float | None, metric: str) -> str:
    if mean is None:
        return "-"
    return fmt_value(mean, metric) + (f" ± {fmt_value(se, metric)}" if se is not None else " (n=1)")


def _count(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def group_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    m = result.metric
    err_metric = "error" if m.endswith("_acc") else m
    headers = [
        "group",
        "runs (ok/div/int)",
        f"final {m} ± SE",
        f"robust best {m} (e*)",
        f"min mean {'error' if m.endswith('_acc') else m} ± SE",
        "params",
        "MACs",
        "FLOPs",
        "img/s",
    ]
    rows = []
    for s in result.groups:
        rb = s.robust_best
        me = s.min_error
        rows.append(
            [
                s.label,
                f"{s.runs} ({s.completed}/{s.diverged}/{s.interrupted})",
                _pm(s.final.mean, s.final.se, m),
                f"{_pm(rb.value, rb.summary.se, m)} ({rb.epoch})" if rb else "-",
                f"{_pm(me.error, me.se, err_metric)} ({me.epoch})" if me else "-",
                f"{s.params:,}" if s.params is not None else "-",
                _count(s.macs),
                _count(s.flops),
                f"{s.images_per_second:,.0f}" if s.images_per_second is not None else "-",
            ]
        )
    return headers, rows


def comparison_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    m = result.metric
    est = "final epoch" if result.estimator == "final" else "robust best"
    headers = ["group", "vs baseline", f"difference in {m} ({est})", "95% CI", "p", "test", "verdict"]
    rows = []
    for c in result.comparisons:
        d = c.difference
        ci = (
            f"[{fmt_value(d.ci[0], m, True)}, {fmt_value(d.ci[1], m, True)}]"
            if d.ci
            else "- (too few replicates)"
        )
        p = "-" if d.p_value is None else (f"{d.p_value:.3g}" if d.p_value >= 1e-4 else "<1e-4")
        test = {
            "welch": f"Welch t, n={d.n_baseline}/{d.n_variant}",
            "paired": f"paired t, n={d.n_baseline}",
            "none": f"none, n={d.n_baseline}/{d.n_variant}",
        }[d.test]
        rows.append([c.label, c.baseline, fmt_value(d.diff, m, True), ci, p, test, c.verdict.text])
    return headers, rows
