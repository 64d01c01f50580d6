"""`biasbench compare`: group runs, summarise them, compare against a baseline, gate CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biasbench.cli.app import app
from biasbench.errors import UserError


@app.command(
    epilog="Examples:\n\n  biasbench compare runs/                       (every results.json below runs/)\n\n"
    "  biasbench compare runs/base runs/dac --baseline baseline --json cmp.json\n\n"
    "  biasbench compare runs/reg --metric test_loss   (regression: MSE, lower is better)\n\n"
    "  biasbench compare /tmp/ci --gate recipes/gates/quickstart_smoke.yaml   (CI gate: exit 0/1/2)"
)
def compare(
    results: list[Path] = typer.Argument(
        ..., metavar="RESULTS...", help="results.json files or folders (recursive)."
    ),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Group label, run name or variant to compare against (default: the `baseline` variant).",
    ),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Per-epoch metric: test_acc (default for classification), test_loss (regression), val_acc...",
    ),
    estimator: str = typer.Option(
        "final",
        "--estimator",
        help="Per-replicate value compared: `final` epoch or `robust` (the paper's best-epoch window).",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Also write the summary as JSON to OUT (`-` for stdout only)."
    ),
    gate: Path | None = typer.Option(
        None,
        "--gate",
        metavar="GATE.yaml",
        help="Check the runs against a gate file "
        "(or a recipe's gate: section); exit 0 pass, 1 regression, 2 unusable input.",
    ),
) -> None:
    """Compare runs: replicates pooled per recipe, mean ± SE, the paper's estimators, CI and verdict."""
    from biasbench.compare import load_runs, summarize_runs

    runs = load_runs(results)
    if gate is not None:
        _gate(gate, runs, json_out)
        return
    result = summarize_runs(runs, metric=metric, baseline=baseline, estimator=estimator)
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(result.to_json(), indent=1))
        return
    print_compare(result, Console(highlight=False))
    if json_out is not None:
        _write_json(json_out, result.to_json())


def _write_json(path: Path, obj: object) -> None:
    from biasbench.fsutil import atomic_write_json

    if path.is_dir():
        raise UserError(f"--json `{path}` is a folder; give a file name")
    atomic_write_json(path, obj)


def _gate(path: Path, runs: list, json_out: Path | None) -> None:
    from dataclasses import asdict

    from biasbench.gate import format_result, load_gate, run_gate

    g = load_gate(path)
    result = run_gate(g, runs)
    lines = format_result(result, g.inconclusive_fails)
    code = result.exit_code(g.inconclusive_fails)
    doc = {**asdict(result), "outcome": result.outcome, "exit_code": code}
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(doc, indent=1, default=str))
    else:
        print("\n".join(lines))
        if json_out is not None:
            _write_json(json_out, doc)
    sys.stdout.flush()
    if code:
        raise typer.Exit(code)


def print_compare(result, console: Console) -> None:
    from biasbench.compare import comparison_table, group_table

    headers, rows = group_table(result)
    title = f"{result.metric} ({'higher' if result.higher_is_better else 'lower'} is better)"
    console.print(_table(title, headers, rows))
    if result.comparisons:
        headers, rows = comparison_table(result)
        console.print(_table(f"against {result.baseline}", headers, rows))
    for note in result.notes:
        console.print(f"note: {escape(note)}")


def _table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=escape(title))
    for i, h in enumerate(headers):
        table.add_column(escape(h), justify="left" if i == 0 or h == "verdict" else "right", overflow="fold")
    for r in rows:
        table.add_row(*(escape(c) for c in r))  # labels hold [key=value]: not markup
    return table
