"""`biasbench report DIR --out R` on a study folder: the analyses of its `analysis:` section as
Markdown (report.md, figures linked), one self-contained HTML file (report.html), the figures as
PNG (figures/*.png) and every number as JSON (study_report.json).

The document: the study's runs and their statuses, then one section per analysis of
`analysis:` (or chosen from the grid) in the analyses' order; each analysis (analyses/, one file
each) computes its numbers and renders its blocks, which `biasbench.render` writes. Figures
follow the DAC paper's: the baseline orange and DAC blue, error bars as the paper draws them
(sample SD over depths in Figures 3-4, 95% CIs in Figures 5-6), axes in SI units.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

from biasbench import render
from biasbench.fsutil import atomic_write_json, atomic_write_text, ensure_dir
from biasbench.render import Block
from biasbench.study import analyses
from biasbench.study.analysis import StudyRuns
from biasbench.study.tune import tuning_blocks

# ---------------------------------------------------------------------------------------------
# The document.
# ---------------------------------------------------------------------------------------------


def _status_blocks(runs: StudyRuns) -> list[Block]:
    counts: dict[str, int] = {}
    for status in runs.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    failed = sum(1 for c in runs.cells for d in c.docs if runs.failure and runs.failure.failed(d))
    crit = f"; {failed} completed runs failed the criterion ({runs.failure.describe()})" if runs.failure else ""
    blocks: list[Block] = [("p", f"{len(runs.statuses)} runs in {len(runs.cells)} cells: "
                                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + crit
                                 + ". Diverged and failed runs are counted under failures and left out of every "
                                   "other analysis; runs not finished are left out everywhere.")]
    if runs.errors:
        blocks.append(("list", [f"{k}: {v}" for k, v in sorted(runs.errors.items())]))
    if not any(cell.usable for cell in runs.cells):
        blocks.append(("p", "**No usable run**: every run diverged, failed the criterion or did not finish, so "
                            "every analysis below except the failure counts is empty."))
    threads = sorted({str((d.get("environment") or {}).get("threads")) for c in runs.cells for d in c.docs
                      if str((d.get("environment") or {}).get("device", "")).startswith("cpu")})
    if len(threads) > 1:  # README, Reproducibility: a seed fixes a CPU run at one thread count
        blocks.append(("p", f"The CPU runs trained on different thread counts ({', '.join(threads)}): on the CPU "
                            "a seed's numbers depend on the thread count, so compare cells knowing it."))
    return blocks


def write_study_report(out_dir: Path, target: Path) -> Path:
    """Write report.md, report.html, figures/*.png and study_report.json into `target`."""
    runs = analyses.load_study_runs(out_dir)
    target = ensure_dir(Path(target))
    figs = ensure_dir(target / "figures")
    blocks: list[Block] = [
        ("h1", f"Study {runs.name}"),
        ("p", f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} from `{out_dir}`. "
              "Statistics: docs/studies.md."),
        ("h2", "Runs"), *_status_blocks(runs)]
    if runs.tuning is not None:  # `tune:` (biasbench/study/tune.py renders its section)
        blocks += [("h2", "Tuning"), *tuning_blocks(runs.tuning, figs)]
    numbers: dict[str, Any] = {}
    usable = any(cell.usable for cell in runs.cells)
    chosen = [a for a in analyses.ordered() if a.name in runs.analyses]
    for analysis in chosen:
        spec = runs.analyses[analysis.name]
        if not usable and analysis.needs_usable_runs:  # all-diverged is a result: its counts are above
            blocks += [("h2", analysis.title), ("p", "Empty: no run completed without failing, so there is nothing "
                                                     "to estimate.")]
            numbers[analysis.name] = None
            continue
        numbers[analysis.name] = analysis.compute(runs, spec)
        blocks += [("h2", analysis.title), *analysis.render(runs, spec, numbers[analysis.name], figs)]
    if runs.chosen_analyses:
        names = ", ".join(f"`{a.name}`" for a in chosen) or "none (a single cell)"
        blocks.insert(2, ("p", f"The study has no `analysis:` section: the analyses below ({names}) were chosen "
                               "from its grid (docs/studies.md); add an `analysis:` section to choose others."))
    atomic_write_text(target / "report.md", render.markdown(blocks, target))
    atomic_write_text(target / "report.html", render.html(blocks, runs.name, target))
    atomic_write_json(target / "study_report.json", _jsonable(numbers))
    return target / "report.md"


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
