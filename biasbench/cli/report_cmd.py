"""`biasbench report`: a Markdown/HTML report with figures, or one run's history in the terminal."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biasbench.cli.app import app
from biasbench.errors import UserError


@app.command(
    epilog="Examples:\n\n  biasbench report runs/ --out reports/today            (report.md + figures/)\n\n"
    "  biasbench report runs/base runs/dac --out rep --format html --baseline baseline\n\n"
    "  biasbench report runs/quickstart/quickstart/seed0/results.json   (history table)\n\n"
    "  biasbench report runs/ --history                     (every run's history table)\n\n"
    "  biasbench report runs/studies/dac_sgemm --out rep    (a study folder: the study's analyses)"
)
def report(
    results: list[Path] = typer.Argument(
        ..., metavar="RESULTS...", help="results.json files or folders (recursive)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the report (report.md/html, figures/, compare.json)."
    ),
    fmt: str = typer.Option(
        "md", "--format", help="md (Markdown, figures as relative links) or html (one file)."
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Group label, run name or variant to compare against."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="Per-epoch metric (default test_acc, or test_loss for regression)."
    ),
    estimator: str = typer.Option(
        "final", "--estimator", help="final or robust (values compared per replicate)."
    ),
    history: bool = typer.Option(
        False, "--history", help="Print each run's per-epoch history in the terminal."
    ),
) -> None:
    """Write a report (tables, learning curves, accuracy vs GFLOPs/params, provenance), or show histories.

    Without --out, a single results file (or --history) prints the per-epoch history as a table.
    """
    from biasbench.compare import load_runs, summarize_runs
    from biasbench.report import write_report

    console = Console(highlight=False)
    given = {"--baseline": baseline, "--metric": metric, "--estimator": None if estimator == "final" else estimator}
    if _study_report(results, out, history, [k for k, v in given.items() if v is not None], console):
        return
    runs = load_runs(results)
    if history or out is None:
        if out is None and not history and len(runs) > 1:
            raise UserError(
                f"{len(runs)} results files given: pass --out DIR to write a report, or --history to "
                "print each run's history"
            )
        for run in runs:
            print_history(run.path, run.doc, console)
        if out is None:
            return
    result = summarize_runs(runs, metric=metric, baseline=baseline, estimator=estimator)
    target = write_report(result, runs, out, fmt)
    console.print(f"report: {escape(str(target))}")


def print_history(path: Path, doc: dict, console: Console) -> None:
    from biasbench.report import history_rows

    headers, rows = history_rows(doc)
    table = Table(
        title=escape(f"{doc.get('name')} · seed {doc.get('seed')} · {doc.get('status')} · {path}"),
        caption="* the epoch with the best validation metric",
    )
    for h in headers:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _study_report(results: list[Path], out: Path | None, history: bool, options: list[str], console: Console) -> bool:
    """A study folder (it holds a study manifest) gets the study report of its `analysis:`
    (Markdown and HTML both, whatever --format says)."""
    from biasbench.study.manifest import is_study_folder

    if len(results) != 1 or history or out is None or not is_study_folder(results[0]):
        return False
    if options:
        raise UserError(f"`{results[0]}` is a study folder: its report draws the study's `analysis:` section, "
                        f"where {options[0]} does not apply; set the metric and baseline there, or give the "
                        "run folders to get the plain report")
    from biasbench.study.report import write_study_report

    target = write_study_report(results[0], out)
    console.print(f"study report: {escape(str(target))} (and report.html, figures/, study_report.json)")
    return True
