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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biasbench import stats
from biasbench.errors import UserError, did_you_mean
from biasbench.predictions import TestPredictions, load_predictions
from biasbench.recipe import experiment_identity
from biasbench.results import KIND, SCHEMA_VERSION, check_results, higher_is_better, load_results
from biasbench.study.manifest import MANIFEST
from biasbench.study.tune import TUNE_DIR

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
        if (p / MANIFEST).is_file():  # a study folder: its runs, not its tuning trials (DIR/tune/, validation only)
            files = [f for f in files if f.relative_to(p).parts[0] != TUNE_DIR]
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

ESTIMATORS = stats.ESTIMATORS
Failure = Callable[[dict[str, Any]], bool]  # a study's rule: is this completed run a failed training?


def default_metric(task: str) -> str:
    return "test_acc" if task == "classification" else "test_loss"


def check_metric(groups: Sequence[Group], metric: str | None) -> str:
    """The metric to compare: the one asked for, if the completed runs record it, else the
    task's default. Runs that diverged record no test metrics and are not asked."""
    task = groups[0].task
    metric = metric or default_metric(task)
    if not metric.startswith(("test_", "val_", "train_")):
        raise UserError(f"--metric must name a per-epoch metric such as test_acc or test_loss, got `{metric}`")
    keys: set[str] = set()
    for g in groups:
        for r in g.runs:
            if r.status == "completed":
                for row in r.history[:1]:
                    keys.update(k for k in row if k.startswith(("test_", "val_", "train_")))
    if keys and metric not in keys:
        extra = " (regression results have no accuracy; use test_loss, the MSE)" if task == "regression" else ""
        raise UserError(f"--metric `{metric}` is not in these results{extra}; they record: "
                        f"{', '.join(sorted(keys))}{did_you_mean(metric, keys)}")
    return metric


def describe_estimator(estimator: str, metric: str) -> str:
    """One sentence naming the estimator, for every table and figure that shows its values."""
    if estimator == "final":
        return f"final: each replicate's {metric} at the last epoch"
    if estimator == "min_mean":
        return (f"min_mean: each replicate's {metric} at the epoch with the best replicate-mean {metric} "
                "(chosen on test, so optimistic)")
    val = f"val_{metric.split('_', 1)[1]}"
    return (f"robust: each replicate's {metric} averaged over epochs e*-2..e*+2, clipped to the run, "
            f"e* = the best epoch of the replicate-mean {val}")


@dataclass
class GroupSummary:
    label: str
    name: str
    model: str
    variant: str
    task: str
    epochs: int
    runs: int
    completed: int  # status completed (failed ones included)
    diverged: int
    failed: int  # completed, but a failed training by the study's rule: counted, left out like diverged runs
    interrupted: int
    seeds: list[Any]  # seeds of the runs in the statistics, in the order of `values`
    estimate: stats.Estimate | None
    params: int | None
    macs: float | None
    flops: float | None
    images_per_second: float | None
    eval_size: int | None  # examples the metric is measured on (data.test_size for test_*)
    values: list[float]  # the per-replicate sample of the chosen estimator
    paths: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.values)

    @property
    def bad(self) -> int:
        """Failed trainings as the DAC paper counts them: diverged or failed by the rule."""
        return self.diverged + self.failed

    @property
    def finished(self) -> int:
        return self.completed + self.diverged


def _mean_of(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def used_runs(g: Group, failure: Failure | None = None) -> list[Run]:
    """The runs every statistic uses, in seed order: completed and not failed by the rule."""
    return [r for r in g.runs if r.status == "completed" and not (failure and failure(r.doc))]


def _eval_size(runs: Sequence[Run], metric: str) -> int | None:
    split = metric.split("_", 1)[0]
    sizes = {(r.doc.get("data") or {}).get(f"{split}_size") for r in runs}
    size = sizes.pop() if len(sizes) == 1 else None
    return size if isinstance(size, int) and size > 0 else None


def summarize_group(g: Group, metric: str, estimator: str = "final", failure: Failure | None = None) -> GroupSummary:
    used = used_runs(g, failure)
    est = stats.estimate([r.history for r in used], estimator, metric=metric,
                         higher_is_better=higher_is_better(metric)) if used else None
    complexity = [r.doc.get("complexity") or {} for r in g.runs]
    completed = sum(r.status == "completed" for r in g.runs)
    return GroupSummary(
        label=g.label, name=g.name, model=g.model, variant=g.variant, task=g.task,
        epochs=int(g.ident.get("train.epochs") or 0),
        runs=len(g.runs), completed=completed,
        diverged=sum(r.status == "diverged" for r in g.runs),
        failed=completed - len(used),
        interrupted=sum(r.status == "interrupted" for r in g.runs),
        seeds=[r.seed for r in used] if est else [],
        estimate=est,
        params=(g.runs[0].doc.get("params") or {}).get("total"),
        macs=_mean_of(c.get("macs") for c in complexity),
        flops=_mean_of(c.get("flops") for c in complexity),
        images_per_second=_mean_of(r.doc.get("images_per_second") for r in used or g.runs),
        eval_size=_eval_size(g.runs, metric),
        values=list(est.per_replicate) if est else [],
        paths=[str(r.path) for r in g.runs],
    )


def pairing(base: GroupSummary, other: GroupSummary) -> list[int] | None:
    """Indices into `other.values` that line up with `base.values` seed by seed, when both sides
    ran exactly the same seeds, each once (seed-driven variation then cancels); else None."""
    if len(base.values) < 2 or None in base.seeds or sorted(base.seeds) != sorted(other.seeds):
        return None
    if len(set(base.seeds)) != len(base.seeds) or len(base.values) != len(other.values):
        return None
    order = {s: i for i, s in enumerate(other.seeds)}
    return [order[s] for s in base.seeds]


def replicate_difference(base: GroupSummary, other: GroupSummary) -> stats.Difference:
    """other - base over replicates: the paired t-test on shared seeds, else Welch's."""
    order = pairing(base, other)
    b = other.values if order is None else [other.values[i] for i in order]
    return stats.difference(base.values, b, paired=order is not None)


# ---------------------------------------------------------------------------------------------
# The example-level test: per-example predictions of both groups at the estimator's epochs.
# ---------------------------------------------------------------------------------------------


class _NoScores(Exception):
    """Why a group has no per-example scores (said in the output; the replicate test remains)."""


def _predictions_of(run: Run, cache: dict[Path, TestPredictions]) -> TestPredictions:
    entry = run.doc.get("predictions")
    if not isinstance(entry, dict) or not entry.get("file"):
        raise _NoScores("the results files record no per-example predictions (written before schema 2)")
    path = run.path.parent / str(entry["file"])
    if path not in cache:
        if not path.exists():
            raise _NoScores(f"`{path}` is missing (copied without its predictions file?)")
        cache[path] = load_predictions(path)  # a corrupt file is bad input: UserError
    return cache[path]


def _scores(runs: Sequence[Run], est: stats.Estimate, cache: dict[Path, TestPredictions]) -> np.ndarray:
    """(seeds, N): each run's correctness per test example, averaged over the estimator's epochs."""
    rows = []
    for run in runs:
        preds = _predictions_of(run, cache)
        if preds.task != "classification":
            raise _NoScores("per-example losses of regression runs are not tested over examples (docs/compare.md)")
        try:
            epochs = [preds.correct(e) for e in range(est.window[0], est.window[1] + 1)]
        except KeyError as e:
            raise _NoScores(f"`{run.path}`: {e.args[0]}") from None
        rows.append(np.mean(epochs, axis=0))
    return np.array(rows)


def _same_test_set(runs: Sequence[Run], cache: dict[Path, TestPredictions]) -> None:
    targets = [_predictions_of(r, cache).target for r in runs]
    if any(t is None or t.shape != targets[0].shape or not np.array_equal(t, targets[0]) for t in targets):
        raise _NoScores("the runs were not tested on the same test examples")


def example_test(base: Group, other: Group, sb: GroupSummary, so: GroupSummary, metric: str,
                 failure: Failure | None, cache: dict[Path, TestPredictions]) -> tuple[stats.ExampleTest | None, str]:
    """The paired bootstrap over test examples and seeds, or None and the reason there is none."""
    if metric != "test_acc":
        return None, f"per-example predictions cover test_acc, not {metric}"
    if sb.estimate is None or so.estimate is None:
        return None, "no completed runs on a side"
    runs_b, runs_o = used_runs(base, failure), used_runs(other, failure)
    try:
        _same_test_set([*runs_b, *runs_o], cache)
        scores_b, scores_o = _scores(runs_b, sb.estimate, cache), _scores(runs_o, so.estimate, cache)
    except _NoScores as e:
        return None, str(e)
    order = pairing(sb, so)
    if order is not None:
        scores_o = scores_o[order]
    return stats.example_bootstrap(scores_b, scores_o, paired=order is not None), ""


@dataclass
class Comparison:
    label: str
    baseline: str
    difference: stats.Difference  # the replicate t-test (paired on shared seeds, else Welch)
    examples: stats.ExampleTest | None  # the bootstrap over test examples and seeds
    examples_note: str  # why there is no example-level test ("" when there is one)
    p_value: float | None  # the stricter of the two tests
    p_holm: float | None  # Holm-adjusted over the comparisons of this command: the verdict uses it
    verdict: stats.Verdict
    failures: stats.FailureTest  # failed + diverged runs against the baseline's (Fisher exact)


@dataclass
class CompareResult:
    metric: str
    higher_is_better: bool
    estimator: str
    estimator_description: str
    baseline: str | None
    alpha: float
    groups: list[GroupSummary]
    comparisons: list[Comparison]
    notes: list[str]
    # failed + diverged runs of every other group against the baseline's (Fisher exact), also of
    # groups with nothing to compare (every run failed): the DAC paper's count of failed trainings
    failures: dict[str, stats.FailureTest] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def jsonable(x: Any) -> Any:
    """x with non-finite floats as None: strict JSON, as every reader expects."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def find_baseline(groups: Sequence[Group], baseline: str | None) -> Group:
    """The group named by --baseline (label, run name, variant or model/variant); default: the
    only group whose variant is `baseline`, else the first group."""
    if baseline is None:
        plain = [g for g in groups if g.variant == "baseline"]
        return plain[0] if len(plain) == 1 else groups[0]
    matches = [g for g in groups if baseline in (g.label, g.name, g.variant, f"{g.model}/{g.variant}")]
    if not matches:
        names = sorted({g.label for g in groups} | {g.variant for g in groups})
        raise UserError(f"--baseline `{baseline}` matches no run group{did_you_mean(baseline, names)}; groups: "
                        f"{', '.join(g.label for g in groups)}")
    if len(matches) > 1:
        raise UserError(f"--baseline `{baseline}` matches {len(matches)} groups ("
                        f"{', '.join(g.label for g in matches)}); give one group's label")
    return matches[0]


def _compare_all(groups: Sequence[Group], summaries: Sequence[GroupSummary], base_group: Group, metric: str,
                 failure: Failure | None, alpha: float
                 ) -> tuple[list[Comparison], list[str], dict[str, stats.FailureTest]]:
    """Every group against the baseline: both tests, Holm over the family, then the verdicts;
    failed trainings (Fisher) for every group, compared or not."""
    base = summaries[groups.index(base_group)]
    cache: dict[Path, TestPredictions] = {}
    pending, notes, reasons, failures = [], [], {}, {}
    for g, s in zip(groups, summaries, strict=True):
        if g is base_group:
            continue
        fails = failures[s.label] = stats.fisher_failures(base.bad, base.finished, s.bad, s.finished)
        if not base.values or not s.values:
            notes.append(f"{s.label}: no completed runs on one side, nothing to compare with {base.label}")
            continue
        d = replicate_difference(base, s)
        ex, why = example_test(base_group, g, base, s, metric, failure, cache)
        if why:
            reasons[s.label] = why
        pending.append((s, d, ex, why, fails))
    p_raw = [stats.stricter_p(d, ex) for _, d, ex, _, _ in pending]
    p_adj = stats.holm(p_raw, alpha)
    comparisons = []
    for (s, d, ex, why, fails), p, q in zip(pending, p_raw, p_adj, strict=True):
        resolution = 1 / s.eval_size if metric.endswith("_acc") and s.eval_size else None
        v = stats.verdict(d, higher_is_better(metric), examples=ex, p_value=q, resolution=resolution, alpha=alpha)
        comparisons.append(Comparison(s.label, base.label, d, ex, why, p, q, v, fails))
        if v.detail:
            notes.append(f"{s.label}: {v.detail}")
    if len(set(reasons.values())) == 1 and len(reasons) == len(pending) > 1:
        notes.append(f"every comparison uses the replicate test only: {next(iter(reasons.values()))}")
    else:
        notes += [f"{label}: replicate test only: {why}" for label, why in reasons.items()]
    return comparisons, notes, failures


def _group_notes(s: GroupSummary) -> list[str]:
    notes = []
    if s.runs and s.diverged == s.runs:
        notes.append(f"{s.label}: every run diverged ({s.diverged} of {s.runs}): no value to summarise")
    elif s.diverged:
        notes.append(f"{s.label}: {s.diverged} of {s.runs} runs diverged; counted, left out of every mean")
    if s.failed:
        notes.append(f"{s.label}: {s.failed} of {s.runs} runs failed by the study's rule; counted, left out of "
                     "every mean")
    if s.interrupted:
        notes.append(f"{s.label}: {s.interrupted} of {s.runs} runs were interrupted (resume them with --resume); "
                     "left out of every mean")
    if s.estimate and s.estimate.estimator == "robust" and (s.estimate.selected_by or "").startswith("test_"):
        notes.append(f"{s.label}: no validation split, so the robust estimator chose e* on the test set "
                     "(optimistic)")
    return notes


def _thread_notes(runs: Sequence[Run]) -> list[str]:
    """A seed fixes a CPU run only at one thread count (README, Reproducibility): say when the
    CPU runs compared here trained on different counts (results' `environment.threads`)."""
    counts: dict[Any, int] = {}
    for r in runs:
        env = r.doc.get("environment") or {}
        if str(env.get("device", "")).startswith("cpu"):
            counts[env.get("threads")] = counts.get(env.get("threads"), 0) + 1
    if len(counts) < 2:
        return []
    spread = ", ".join(f"{n} run(s) on {t if t is not None else 'an unrecorded number of'} thread(s)"
                       for t, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
    return [f"CPU runs here trained on different thread counts ({spread}): on the CPU the numbers of a seed "
            "depend on the thread count, so runs of one seed are not the same run at another count"]


def summarize_runs(runs: Sequence[Run], *, metric: str | None = None, baseline: str | None = None,
                   estimator: str = "final", failure: Failure | None = None, alpha: float = stats.ALPHA
                   ) -> CompareResult:
    """Group, summarise and compare every group against the baseline group.

    `failure` (a study's rule) marks completed runs as failed trainings: counted with the
    diverged ones in the Fisher test, left out of every mean."""
    if estimator not in ESTIMATORS:
        raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got `{estimator}`")
    groups = group_runs(runs)
    metric = check_metric(groups, metric)
    summaries = [summarize_group(g, metric, estimator, failure) for g in groups]
    base_group = find_baseline(groups, baseline) if (len(groups) > 1 or baseline) else None
    comparisons: list[Comparison] = []
    notes: list[str] = []
    failures: dict[str, stats.FailureTest] = {}
    if base_group is not None:
        comparisons, notes, failures = _compare_all(groups, summaries, base_group, metric, failure, alpha)
        plain = sum(g.variant == "baseline" for g in groups)
        if baseline is None and plain != 1:  # find_baseline fell back to the first group: say so
            notes.insert(0, f"no --baseline given and {plain} groups have variant `baseline`: compared against "
                         f"the first group, {base_group.label}; name the reference with --baseline")
    for s in summaries:
        notes += _group_notes(s)
    notes += _thread_notes(runs)
    single = [s.label for s in summaries if s.used == 1]
    if single:  # one line for all of them, not one per group
        notes.append(f"one replicate in the statistics of {', '.join(single)}: no standard error or confidence "
                     "interval there")
    return CompareResult(metric, higher_is_better(metric), estimator, describe_estimator(estimator, metric),
                         base_group.label if base_group else None, alpha, summaries, comparisons, notes, failures)


def compare_paths(paths: Iterable[str | Path], **kwargs: Any) -> CompareResult:
    return summarize_runs(load_runs(paths), **kwargs)
