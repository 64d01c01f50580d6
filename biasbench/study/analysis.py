"""The study-level statistics a report draws: pure functions from a study's runs to numbers.

`load_study_runs(DIR)` reads the manifest and every run's results file once; each analysis
(`table`, `by_width`, `efficiency`, `failures`, `pairs`, `complexity`, declared in specs.py)
turns it into plain dataclasses that report.py renders. Runs that diverged or failed the
study's criterion are counted by `failures` and left out of every other analysis, as the DAC
paper does ("failed training experiments were excluded from further analysis as outliers").

The two tests of the study report are `stats.fisher_failures` (scipy) and `stats.holm`
(statsmodels), the same functions `compare` uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from biasbench import stats
from biasbench.errors import UserError, did_you_mean
from biasbench.results import KIND, SCHEMA_VERSION, check_results, higher_is_better, load_results
from biasbench.study.manifest import Manifest
from biasbench.study.specs import ANALYSES, ByWidthSpec, Failure, PairsSpec, TableSpec, read_spec
from biasbench.study.tune import fairness_text

# ---------------------------------------------------------------------------------------------
# Reading a study folder.
# ---------------------------------------------------------------------------------------------


@dataclass
class CellRuns:
    name: str
    values: dict[str, Any]  # the cell's grid and zip values
    docs: list[dict[str, Any]]  # results of its runs found on disk (any status)
    usable: list[dict[str, Any]] = field(default_factory=list)  # completed and not failed
    estimates: dict[tuple[str, str], Any] = field(default_factory=dict)  # (metric, estimator) -> Estimate

    def value(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        node: Any = self.docs[0]["recipe"] if self.docs else {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


@dataclass
class StudyRuns:
    out: Path
    name: str
    cells: list[CellRuns]
    varying: list[str]
    naming: list[str]  # the varying keys that tell cells apart (the rest follow them)
    zip_groups: list[list[str]]
    failure: Failure | None
    analyses: dict[str, Any]
    statuses: dict[str, str]  # run key -> manifest status (pending, error, ... for runs without results)
    errors: dict[str, str]
    matches: list[dict[str, Any]] = field(default_factory=list)  # `match:` solved cells (manifest)
    sequential: dict[str, Any] | None = None  # replicates until decided: the last decisions (manifest)
    tuning: dict[str, Any] | None = None  # `tune:`: the settings, each cell's best values and trials (manifest)
    chosen_analyses: bool = False  # the study has no `analysis:`: biasbench chose these from its grid

    @property
    def task(self) -> str:
        return next((d.get("task", "classification") for c in self.cells for d in c.docs), "classification")

    def default_metric(self, metric: str | None) -> str:
        return metric or ("test_acc" if self.task == "classification" else "test_loss")

    def zipped_with(self, key: str) -> list[str]:
        return next((g for g in self.zip_groups if key in g), [key])


def _read_doc(path: Path) -> dict[str, Any] | None:
    """A run's results document (checked like `load_results`), or None when there is none yet."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return load_results(path)  # the precise one-line error
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("schema_version") != SCHEMA_VERSION:
        return load_results(path)
    check_results(doc, path)  # a field missing or of the wrong type is blamed on this file, not on a rule
    return doc


def _failure_rule(document: dict[str, Any]) -> Failure | None:
    raw = document.get("failure")
    return read_spec(Failure, raw, "failure") if raw is not None else None


def study_failure_rule(out: Path) -> Failure | None:
    """The `failure:` rule of the study whose folder is `out` (None: the study has none)."""
    return _failure_rule(Manifest.read(out).doc["study"]["document"])


def load_study_runs(out: Path) -> StudyRuns:
    """The manifest of DIR and every run's results file, once each."""
    manifest = Manifest.read(out)
    study = manifest.doc["study"]
    document = study["document"]
    failure = _failure_rule(document)
    analyses = {name: read_spec(ANALYSES[name], raw, f"analysis.{name}")
                for name, raw in (document.get("analysis") or {}).items() if name in ANALYSES}
    by_cell: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in manifest.doc["cells"]}
    statuses, errors = {}, {}
    for key, run in manifest.runs.items():
        doc = _read_doc(Path(out) / key / "results.json")
        if doc is not None:
            by_cell[run["cell"]].append(doc)
        statuses[key] = doc["status"] if doc is not None and run["status"] != "error" else run["status"]
        if run.get("error"):
            errors[key] = run["error"]
    cells = [CellRuns(c["name"], c["values"], sorted(by_cell[c["name"]], key=lambda d: d.get("seed", 0)))
             for c in manifest.doc["cells"]]
    for cell in cells:
        cell.usable = [d for d in cell.docs if d.get("status") == "completed" and not (failure and failure.failed(d))]
    runs = StudyRuns(Path(out), study["name"], cells, study["varying"], study.get("naming", study["varying"]),
                     study["zip_groups"], failure, analyses, statuses, errors,
                     matches=study.get("matches", []), sequential=manifest.doc.get("sequential"),
                     tuning=manifest.doc.get("tune"))
    if "analysis" not in document:
        runs.analyses, runs.chosen_analyses = chosen_analyses(runs), True
    return runs


def chosen_analyses(runs: StudyRuns) -> dict[str, Any]:
    """The analyses a study without `analysis:` gets, chosen from its grid: a table of every cell
    (the compared key as columns: the variant when it varies), the pairs against the baseline
    variant when there is one, and the metric against width when a width varies."""
    naming = [k for k in runs.naming if k in runs.varying]
    if not naming:
        return {}
    series = "model.variant" if "model.variant" in naming else naming[-1]
    out: dict[str, Any] = {"table": TableSpec(rows=[k for k in naming if k != series], columns=[series],
                                              estimator="best")}
    if series == "model.variant" and any(c.values.get(series) == "baseline" for c in runs.cells):
        out["pairs"] = PairsSpec(by=series, baseline="baseline", estimator="best")
    if "model.options.width" in naming and series != "model.options.width":
        out["by_width"] = ByWidthSpec(width="model.options.width", depth="model.options.depth", series=series,
                                      log=runs.task != "classification")
    return out


def select(runs: StudyRuns, where: dict[str, Any]) -> list[CellRuns]:
    out = []
    for cell in runs.cells:
        ok = True
        for key, want in where.items():
            have = cell.value(key)
            ok = ok and (have in want if isinstance(want, list) and not isinstance(have, list) else have == want)
        if ok:
            out.append(cell)
    if not out:
        raise UserError(f"`where: {where}` selects no cell of the study; check its keys and values")
    return out


def check_metric(runs: StudyRuns, metric: str, what: str) -> None:
    """`metric` is recorded by the usable runs (a diverged run stops before its evaluation, so its
    history holds only training numbers; with no usable run there is nothing to check)."""
    rows = [d["history"][0] for c in runs.cells for d in c.usable if d.get("history")][:1]
    if rows and metric not in rows[0]:
        recorded = sorted(k for k in rows[0] if k.startswith(("train_", "val_", "test_")))
        raise UserError(f"`analysis.{what}.metric` `{metric}` is not in the results (they record "
                        f"{', '.join(recorded)}){did_you_mean(metric, recorded)}")


# ---------------------------------------------------------------------------------------------
# One number per cell.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float | None
    se: float | None
    n: int
    per_run: tuple[float, ...] = ()  # the replicate sample (for tests between cells)
    seeds: tuple[Any, ...] = ()
    ci: tuple[float, float] | None = None
    is_error: bool = False  # value is an error (1 - accuracy), not the metric itself


def estimate(cell: CellRuns, metric: str, estimator: str) -> Estimate:
    """The cell's value of `metric` under `estimator`, from its usable runs.

    final / best: per-run value at the last epoch / at the epoch with the best validation
    metric, then mean and SE over runs. robust: the DAC paper's robust best estimate.
    min_mean: minimum over epochs of the replicate-mean error (DAC Table 1)."""
    if (metric, estimator) not in cell.estimates:  # several analyses ask for the same one
        cell.estimates[metric, estimator] = _estimate(cell.usable, metric, estimator)
    return cell.estimates[metric, estimator]


def _estimate(docs: list[dict[str, Any]], metric: str, estimator: str) -> Estimate:
    hib = higher_is_better(metric)
    if not docs:
        return Estimate(None, None, 0)
    if estimator in ("final", "best"):
        rows = [(d.get("final" if estimator == "final" else "best") or {}, d.get("seed")) for d in docs]
        pairs = [(float(r[metric]), s) for r, s in rows if r.get(metric) is not None]
        values = [v for v, _ in pairs]
        summary = stats.summarize(values)
        return Estimate(summary.mean, summary.se, summary.n, tuple(values), tuple(s for _, s in pairs), summary.ci)
    histories = [d.get("history") or [] for d in docs]
    if estimator == "robust":
        rb = stats.robust_best_accuracy(histories, metric=metric, higher_is_better=hib)
        if rb is None:
            return Estimate(None, None, 0)
        return Estimate(rb.value, rb.summary.se, rb.summary.n, rb.per_replicate,
                        tuple(d.get("seed") for d in docs), rb.summary.ci)
    me = stats.min_mean_error(histories, metric=metric, higher_is_better=hib)
    if me is None:
        return Estimate(None, None, 0)
    return Estimate(me.error, me.se, len(docs), is_error=hib)


def log_values(cell: CellRuns, metric: str, estimator: str) -> list[float]:
    """Per-run natural logs of the metric (the DAC paper's log-MSE, in nats)."""
    est = estimate(cell, metric, estimator)
    return [math.log(v) for v in est.per_run if v > 0]


# ---------------------------------------------------------------------------------------------
# The tests, straight from scipy and statsmodels.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# table: rows x columns of study keys (DAC Table 1, DNRT Tables 1-2).
# ---------------------------------------------------------------------------------------------


@dataclass
class TableResult:
    title: str
    metric: str
    estimator: str
    is_error: bool
    row_keys: list[str]
    columns: list[tuple[Any, ...]]
    rows: list[tuple[tuple[Any, ...], list[Estimate | None]]]
    best: list[list[bool]]  # bold cells


def _key_tuple(cell: CellRuns, keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(cell.value(k) for k in keys)


def _ordered(values: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def table(runs: StudyRuns, spec: Any) -> list[TableResult]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "table")
    cells = select(runs, spec.where)
    used = set(spec.rows) | set(spec.columns)
    rest = [k for k in runs.naming if k not in used and any(cell.value(k) != cells[0].value(k) for cell in cells)]
    # Keys that follow the row and column keys (zipped with them) do not split tables.
    rest = [k for k in rest if not _follows(cells, k, list(used))]
    out = []
    for part in _ordered([_key_tuple(c, rest) for c in cells]):
        group = [c for c in cells if _key_tuple(c, rest) == part]
        columns = _ordered([_key_tuple(c, spec.columns) for c in group])
        row_ids = _ordered([_key_tuple(c, spec.rows) for c in group])
        rows, best = [], []
        for rid in row_ids:
            ests: list[Estimate | None] = []
            for col in columns:
                match = [c for c in group if _key_tuple(c, spec.rows) == rid and _key_tuple(c, spec.columns) == col]
                if len(match) > 1:
                    raise UserError(f"analysis.table: cells {match[0].name} and {match[1].name} share row {rid} and "
                                    f"column {col}; add the key that tells them apart to rows or columns")
                ests.append(estimate(match[0], metric, spec.estimator) if match else None)
            rows.append((rid, ests))
            best.append(_best_marks(ests, columns, metric, spec.estimator))
        is_error = spec.estimator == "min_mean" and higher_is_better(metric)
        title = ", ".join(f"{k.rsplit('.', 1)[-1]} = {v}" for k, v in zip(rest, part))
        out.append(TableResult(title, metric, spec.estimator, is_error, list(spec.rows), columns, rows, best))
    return out


def _follows(cells: list[CellRuns], key: str, keys: list[str]) -> bool:
    """True when `key` takes one value for each combination of `keys` (it is zipped with them)."""
    seen: dict[tuple[Any, ...], Any] = {}
    for c in cells:
        k = _key_tuple(c, keys)
        if k in seen and seen[k] != c.value(key):
            return False
        seen[k] = c.value(key)
    return True


def _best_marks(ests: list[Estimate | None], columns: list[tuple[Any, ...]], metric: str, estimator: str) -> list[bool]:
    """Bold the best value among columns sharing every column key but the last."""
    lower = estimator == "min_mean" or not higher_is_better(metric)
    marks = [False] * len(ests)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, col in enumerate(columns):
        groups.setdefault(col[:-1], []).append(i)
    for idx in groups.values():
        vals = [(ests[i].value, i) for i in idx if ests[i] is not None and ests[i].value is not None]
        if len(vals) > 1:
            best = (min if lower else max)(v for v, _ in vals)
            for v, i in vals:  # a tie bolds every tied column: bolding one would pick among equals
                marks[i] = marks[i] or math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)
    return marks


# ---------------------------------------------------------------------------------------------
# by_width (DAC Figure 3) and efficiency (DAC Figure 4).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WidthPoint:
    shape: Any
    series: Any
    width: Any  # the nominal width of the group
    x: float  # mean equivalent width of its cells
    y: float  # mean over cells (depths) of the replicate-mean (log) metric
    sd: float | None  # sample SD of those cell means
    cells: int


def _equivalent_width(cell: CellRuns, spec: Any) -> float:
    shape = cell.value(spec.shape) if spec.shape else None
    if shape in spec.average_width:
        params = (cell.usable[0].get("params") or {}).get("total") if cell.usable else None
        depth = cell.value(spec.depth)
        if not params or not depth:
            return float("nan")
        return math.sqrt(params / depth)
    return float(cell.value(spec.width))


def _cell_mean(cell: CellRuns, metric: str, estimator: str, log: bool) -> float | None:
    values = log_values(cell, metric, estimator) if log else list(estimate(cell, metric, estimator).per_run)
    return float(np.mean(values)) if values else None


def by_width(runs: StudyRuns, spec: Any) -> list[WidthPoint]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "by_width")
    cells = select(runs, spec.where)
    groups: dict[tuple[Any, Any, Any], list[CellRuns]] = {}
    for c in cells:
        groups.setdefault((c.value(spec.shape) if spec.shape else None, c.value(spec.series), c.value(spec.width)),
                          []).append(c)
    points = []
    for (shape, series, width), group in groups.items():
        means = [(m, _equivalent_width(c, spec), c) for c in group
                 if (m := _cell_mean(c, metric, spec.estimator, spec.log)) is not None]
        if not means:
            continue
        # The values averaged: one per cell (depth); a point of one cell averages its replicates
        # (that cell's: the group's other cells may have no usable run).
        ys = np.array([m for m, _, _ in means]) if len(means) > 1 else np.array(_run_values(means[0][2], metric, spec))
        points.append(WidthPoint(shape, series, width, float(np.nanmean([x for _, x, _ in means])), float(ys.mean()),
                                 float(ys.std(ddof=1)) if len(ys) > 1 else None, len(means)))
    return points


def _run_values(cell: CellRuns, metric: str, spec: Any) -> list[float]:
    if spec.log:
        return log_values(cell, metric, spec.estimator)
    return list(estimate(cell, metric, spec.estimator).per_run)


@dataclass(frozen=True)
class EfficiencyPoint:
    x: Any
    arm: Any  # the doubled arm: spec.weights or spec.biases
    mean: float  # mean over `over` of (log metric of the doubled arm - of the normal arm), nats
    sd: float | None
    n: int


def _match_keys(runs: StudyRuns, by: str, cells: list[CellRuns], extra: Sequence[str] = ()) -> list[str]:
    """Keys two cells of one comparison share: every varying key outside `by`'s zip group,
    plus `extra`, dropping keys constant over `cells`."""
    group = runs.zipped_with(by)
    keys = [k for k in runs.naming if k not in group and any(c.value(k) != cells[0].value(k) for c in cells)]
    return keys + [k for k in extra if k not in keys]


def _comparisons(runs: StudyRuns, cells: list[CellRuns], by: str, extra: Sequence[str],
                 what: str) -> tuple[list[str], dict[tuple[Any, ...], dict[Any, CellRuns]]]:
    """The cells of each comparison: (the keys they share, {shared values: {value of `by`: cell}})."""
    keys = _match_keys(runs, by, cells, extra)
    blocks: dict[tuple[Any, ...], dict[Any, CellRuns]] = {}
    for c in cells:
        side = blocks.setdefault(_key_tuple(c, keys), {})
        value = c.value(by)
        if value in side:
            raise UserError(f"analysis.{what}: cells {side[value].name} and {c.name} are both `{by}` = `{value}` "
                            f"in one comparison (keys {keys}); add the key that tells them apart to `match`, "
                            "or narrow the cells with `where`")
        side[value] = c
    return keys, blocks


def efficiency(runs: StudyRuns, spec: Any) -> list[EfficiencyPoint]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "efficiency")
    keys, blocks = _comparisons(runs, select(runs, spec.where), spec.arm, [spec.x], "efficiency")
    diffs: dict[tuple[Any, Any], list[float]] = {}
    x_index = keys.index(spec.x)
    for key, arms in blocks.items():
        if spec.normal not in arms:
            continue
        base = _cell_mean(arms[spec.normal], metric, spec.estimator, True)
        for doubled in (spec.weights, spec.biases):
            other = _cell_mean(arms[doubled], metric, spec.estimator, True) if doubled in arms else None
            if base is not None and other is not None:
                diffs.setdefault((key[x_index], doubled), []).append(other - base)
    return [EfficiencyPoint(x, arm, float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else None, len(d))
            for (x, arm), d in sorted(diffs.items(), key=lambda p: (str(p[0][1]), p[0][0]))]


# ---------------------------------------------------------------------------------------------
# failures: failed and diverged runs per group, Fisher exact against the baseline group.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureRow:
    group: Any
    runs: int  # finished runs: completed + diverged
    diverged: int
    failed: int  # completed but past the failure criterion
    p_value: float | None  # two-sided Fisher exact test against the baseline group


def failures(runs: StudyRuns, spec: Any) -> list[FailureRow]:
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


# ---------------------------------------------------------------------------------------------
# pairs: every baseline-against-variant comparison, Holm-adjusted across the family.
# ---------------------------------------------------------------------------------------------


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


def _counted(cell: CellRuns) -> tuple[float | None, float | None]:
    """(parameters, FLOPs per sample) of the cell's model, as its runs recorded them."""
    for doc in cell.docs:
        params = (doc.get("params") or {}).get("total")
        flops = (doc.get("complexity") or {}).get("flops")
        if params is not None:
            return float(params), None if flops is None else float(flops)
    return None, None


def fairness(runs: StudyRuns, base: CellRuns, variant: CellRuns) -> str:
    """How one comparison was made fair, in one line: tuning, capacity matching (with the
    parameter and FLOP ratios either way), replicates and why they stopped."""
    parts = [fairness_text(runs.tuning)]
    match = next((m for m in runs.matches if {m["cell"], m["reference"]} == {base.name, variant.name}), None)
    (p_b, f_b), (p_v, f_v) = _counted(base), _counted(variant)
    ratios = []
    if p_b and p_v:
        ratios.append(f"params {p_v / p_b:.2f}x")
    if f_b and f_v:
        ratios.append(f"FLOPs {f_v / f_b:.2f}x")
    ratio_text = f" ({', '.join(ratios)} of the baseline)" if ratios else ""
    if match is not None:
        parts.append(f"matched by {match['by']}: `{match['key']}` of {match['cell']} solved to {match['value']}, "
                     f"{match['mismatch']:+.2%}{ratio_text}")
    else:
        parts.append(f"not matched{ratio_text}")
    decision = next((c for c in (runs.sequential or {}).get("comparisons", [])
                     if (c["baseline"], c["variant"]) == (base.name, variant.name)), None)
    if decision is not None:
        parts.append(f"{decision['replicates']} replicates until decided: {decision['why']}")
    else:
        n_b, n_v = len(base.docs), len(variant.docs)
        parts.append(f"{n_b if n_b == n_v else f'{n_b} and {n_v}'} replicates, fixed in advance")
    return "; ".join(parts)


def fairness_lines(out: Path) -> list[str]:
    """The fairness line of every comparison of the study's `analysis.pairs` (for `compare`)."""
    runs = load_study_runs(out)
    spec = runs.analyses.get("pairs")
    if spec is None:
        return []
    return [f"{variant.name} against {base.name}: {fairness(runs, base, variant)}"
            for base, variant in pair_cells(runs, spec)]


def pair_cells(runs: StudyRuns, spec: Any) -> list[tuple[CellRuns, CellRuns]]:
    """(baseline cell, variant cell) of every comparison `pairs` makes."""
    _, blocks = _comparisons(runs, select(runs, spec.where), spec.by, spec.match, "pairs")
    return [(side[spec.baseline], cell) for side in blocks.values() if spec.baseline in side
            for value, cell in side.items() if value != spec.baseline]


def pairs(runs: StudyRuns, spec: Any) -> tuple[list[PairResult], str]:
    """The comparisons and the count line ("15 of 16 favour dac; 9 significant ...")."""
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "pairs")
    keys, blocks = _comparisons(runs, select(runs, spec.where), spec.by, spec.match, "pairs")
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
    return results, _count_line(results, spec)


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


# ---------------------------------------------------------------------------------------------
# complexity: the metric against GFLOPs and against parameters (DAC Figures 5-6).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComplexityPoint:
    panel: tuple[Any, ...]
    line: Any
    along: Any
    flops: float | None
    params: float | None
    value: float  # the spec's estimate (an error for accuracies)
    ci: float  # 95% CI half-width (0 with one replicate)


def complexity(runs: StudyRuns, spec: Any) -> tuple[list[ComplexityPoint], str]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "complexity")
    error = higher_is_better(metric)
    points = []
    for c in select(runs, spec.where):
        est = estimate(c, metric, spec.estimator)
        if est.value is None:
            continue
        flops = [((d.get("complexity") or {}).get("flops")) for d in c.usable]
        params = [(d.get("params") or {}).get("total") for d in c.usable]
        half = (est.ci[1] - est.value) if est.ci else 0.0
        value = 1.0 - est.value if error else est.value
        points.append(ComplexityPoint(_key_tuple(c, spec.panels), c.value(spec.lines), c.value(spec.along),
                                      _first_number(flops), _first_number(params), value, half))
    return points, ("test error" if error and metric == "test_acc" else
                    f"1 - {metric}" if error else metric)


def _first_number(values: list[Any]) -> float | None:
    return next((float(v) for v in values if isinstance(v, (int, float))), None)
