"""table: rows x columns of study keys, cells "value ± SE", best per row in bold (DAC Table 1,
DNRT Tables 1-2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasbench.errors import UserError
from biasbench.render import Block, fmt_est, is_percent
from biasbench.results import higher_is_better
from biasbench.study.analyses import Analysis, register, short
from biasbench.study.analysis import (
    CellRuns,
    Estimate,
    StudyRuns,
    check_metric,
    compared_key,
    estimate,
    key_tuple,
    ordered,
    select,
)
from biasbench.study.specs import Estimator, StudyKey, Where


@dataclass(frozen=True)
class TableSpec:
    """Rows and columns from study keys, cells "value +- SE", best per row in bold (DAC Table 1,
    DNRT Tables 1-2). With several column keys, "best" is chosen among the columns that share
    every column key but the last (Table 1: base against DAC within each data set and version)."""

    rows: list[StudyKey]
    columns: list[StudyKey]
    metric: str | None = None
    estimator: Estimator = "min_mean"
    where: Where = field(default_factory=dict)


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


def table(runs: StudyRuns, spec: TableSpec) -> list[TableResult]:
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "table")
    cells = select(runs, spec.where)
    used = set(spec.rows) | set(spec.columns)
    rest = [k for k in runs.naming if k not in used and any(cell.value(k) != cells[0].value(k) for cell in cells)]
    # Keys that follow the row and column keys (zipped with them) do not split tables.
    rest = [k for k in rest if not _follows(cells, k, list(used))]
    out = []
    for part in ordered([key_tuple(c, rest) for c in cells]):
        group = [c for c in cells if key_tuple(c, rest) == part]
        columns = ordered([key_tuple(c, spec.columns) for c in group])
        row_ids = ordered([key_tuple(c, spec.rows) for c in group])
        rows, best = [], []
        for rid in row_ids:
            ests: list[Estimate | None] = []
            for col in columns:
                match = [c for c in group if key_tuple(c, spec.rows) == rid and key_tuple(c, spec.columns) == col]
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
        k = key_tuple(c, keys)
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


def table_blocks(runs: StudyRuns, spec: TableSpec, tables: list[TableResult], figs: Path) -> list[Block]:
    blocks: list[Block] = []
    for t in tables:
        what = {"min_mean": "minimum over epochs of the replicate-mean", "robust": "robust best estimate of",
                "final": "final-epoch mean of", "best": "mean at the best-validation epoch of"}[t.estimator]
        unit = " (%)" if is_percent(t.metric, t.is_error) else ""
        name = ("test error" if t.is_error and t.metric == "test_acc" else t.metric) + unit
        text = f"{what[0].upper()}{what[1:]} {name}, ± one standard error over replicates; best per row in bold."
        blocks.append(("p", f"**{t.title}**: {what} {name}, ± one standard error over replicates; best per row in "
                            "bold." if t.title else text))
        headers = [" / ".join(map(short, t.row_keys))] + [" / ".join(map(str, c)) for c in t.columns]
        rows = [[" / ".join(map(str, rid))] + [fmt_est(e, t.metric) for e in ests] for rid, ests in t.rows]
        bold = [[False] + marks for marks in t.best]
        blocks.append(("table", (headers, rows, bold)))
    return blocks


def default_table(runs: StudyRuns) -> TableSpec | None:
    """Every cell: the compared key (the variant when it varies) as columns, the others as rows."""
    chosen = compared_key(runs)
    if chosen is None:
        return None
    naming, series = chosen
    return TableSpec(rows=[k for k in naming if k != series], columns=[series], estimator="best")


register(Analysis(
    "table", "Table", TableSpec, table, table_blocks, order=10, default=default_table,
    example={"rows": ["model.options.depth"], "columns": ["arm"], "metric": "test_loss", "estimator": "best",
             "where": {"model.options.shape": "rectangular", "units": 23}}))
