"""What every study analysis shares: a study's runs, read once, and one number per cell.

`read_study_runs(DIR)` reads the manifest and every run's results file once; `estimate` gives a
cell's value of a metric under an estimator (cached: several analyses ask for the same one);
`select`, `comparisons` and `pair_cells` pick and pair cells by their keys. The analyses
themselves (`table`, `by_width`, ...) are one file each in `analyses/`, which also reads a
study's `analysis:` section (`analyses.load_study_runs`). Runs that diverged or failed the
study's criterion are counted by `failures` and left out of every other analysis, as the DAC
paper does ("failed training experiments were excluded from further analysis as outliers").

The two tests of the study report are `stats.fisher_failures` (scipy) and `stats.holm`
(statsmodels), the same functions `compare` uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biasbench import stats
from biasbench.errors import UserError, did_you_mean
from biasbench.results import KIND, SCHEMA_VERSION, check_results, higher_is_better, load_results
from biasbench.study.manifest import Manifest
from biasbench.study.specs import Failure, read_spec
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
    analysis_section: dict[str, Any] | None = None  # the study file's `analysis:` as written (None: absent)

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


def read_study_runs(out: Path) -> StudyRuns:
    """The manifest of DIR and every run's results file, once each (the `analysis:` section
    unread: `analyses.load_study_runs` reads it)."""
    manifest = Manifest.read(out)
    study = manifest.doc["study"]
    document = study["document"]
    failure = _failure_rule(document)
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
    return StudyRuns(Path(out), study["name"], cells, study["varying"], study.get("naming", study["varying"]),
                     study["zip_groups"], failure, {}, statuses, errors,
                     matches=study.get("matches", []), sequential=manifest.doc.get("sequential"),
                     tuning=manifest.doc.get("tune"),
                     analysis_section=document.get("analysis"))


def compared_key(runs: StudyRuns) -> tuple[list[str], str] | None:
    """For a study without `analysis:`: the varying keys that name cells, and the one compared
    (the variant when it varies, else the last); None for a single cell."""
    naming = [k for k in runs.naming if k in runs.varying]
    if not naming:
        return None
    return naming, "model.variant" if "model.variant" in naming else naming[-1]


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


def key_tuple(cell: CellRuns, keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(cell.value(k) for k in keys)


def ordered(values: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def cell_mean(cell: CellRuns, metric: str, estimator: str, log: bool) -> float | None:
    values = log_values(cell, metric, estimator) if log else list(estimate(cell, metric, estimator).per_run)
    return float(np.mean(values)) if values else None


def match_keys(runs: StudyRuns, by: str, cells: list[CellRuns], extra: Sequence[str] = ()) -> list[str]:
    """Keys two cells of one comparison share: every varying key outside `by`'s zip group,
    plus `extra`, dropping keys constant over `cells`."""
    group = runs.zipped_with(by)
    keys = [k for k in runs.naming if k not in group and any(c.value(k) != cells[0].value(k) for c in cells)]
    return keys + [k for k in extra if k not in keys]


def comparisons(runs: StudyRuns, cells: list[CellRuns], by: str, extra: Sequence[str],
                 what: str) -> tuple[list[str], dict[tuple[Any, ...], dict[Any, CellRuns]]]:
    """The cells of each comparison: (the keys they share, {shared values: {value of `by`: cell}})."""
    keys = match_keys(runs, by, cells, extra)
    blocks: dict[tuple[Any, ...], dict[Any, CellRuns]] = {}
    for c in cells:
        side = blocks.setdefault(key_tuple(c, keys), {})
        value = c.value(by)
        if value in side:
            raise UserError(f"analysis.{what}: cells {side[value].name} and {c.name} are both `{by}` = `{value}` "
                            f"in one comparison (keys {keys}); add the key that tells them apart to `match`, "
                            "or narrow the cells with `where`")
        side[value] = c
    return keys, blocks


def counted(cell: CellRuns) -> tuple[float | None, float | None]:
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
    (p_b, f_b), (p_v, f_v) = counted(base), counted(variant)
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


def pair_cells(runs: StudyRuns, spec: Any) -> list[tuple[CellRuns, CellRuns]]:
    """(baseline cell, variant cell) of every comparison `pairs` makes."""
    _, blocks = comparisons(runs, select(runs, spec.where), spec.by, spec.match, "pairs")
    return [(side[spec.baseline], cell) for side in blocks.values() if spec.baseline in side
            for value, cell in side.items() if value != spec.baseline]
