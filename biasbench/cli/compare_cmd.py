"""`biasbench compare`: group runs, summarise them, compare against a baseline, gate CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from biasbench.cli.app import app
from biasbench.errors import UserError


@app.command(
    help="Compare runs: replicates pooled per recipe, one estimator, both tests, Holm, verdicts.\n\n"
    "Each group (one recipe, its seeds pooled) gets a mean +- SE of the chosen estimator and counts of "
    "completed, diverged and interrupted runs. Against the baseline: the difference with a 95% CI, a t-test "
    "over replicates, a bootstrap over test examples and seeds (when the runs recorded per-example "
    "predictions), Holm's adjustment over the comparisons, a verdict, and failed trainings with Fisher's exact "
    "test. Statistics: docs/compare.md.",
    epilog="Examples:\n\n  biasbench compare runs/                  (every results.json below runs/)\n\n"
    "  biasbench compare runs/base runs/dac --baseline baseline --json cmp.json\n\n"
    "  biasbench compare runs/ --estimator robust    (the DAC paper's window)\n\n"
    "  biasbench compare runs/reg --metric test_loss  (regression: MSE)\n\n"
    "  biasbench compare /tmp/ci --gate recipes/gates/quickstart_smoke.yaml",
)
def compare(
    results: list[Path] = typer.Argument(..., metavar="RESULTS...", help="results.json files or folders (recursive)."),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Group label, run name or variant to compare against (default: the `baseline` "
        "variant)."),
    metric: str | None = typer.Option(
        None, "--metric", help="Per-epoch metric: test_acc (default for classification), test_loss (regression), "
        "val_acc..."),
    estimator: str | None = typer.Option(
        None, "--estimator", help="Per-replicate value, for every table: final (last epoch, the default), robust "
        "(the DAC paper's window around the best validation epoch) or min_mean (the best replicate-mean epoch)."),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Also write the summary as JSON to OUT (`-`: JSON on stdout only)."),
    gate: Path | None = typer.Option(
        None, "--gate", metavar="GATE.yaml", help="Check the runs against a gate file (or a recipe's gate: "
        "section); exit 0 pass, 1 regression, 2 unusable input. The gate names its own reference, metrics and "
        "estimators, so --baseline, --metric and --estimator are refused with it."),
) -> None:
    from biasbench.compare import load_runs, summarize_runs

    if gate is not None:
        given = [name for name, value in (("--baseline", baseline), ("--metric", metric),
                                          ("--estimator", estimator)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} cannot be used with --gate: the gate file sets its reference, "
                            "metrics and estimators (docs/ci.md); drop the option or change the gate file")
        runs = load_runs(results)
        _gate(gate, runs, json_out)
        return
    runs = load_runs(results)
    rule = _study_failure_rule(results)
    result = summarize_runs(runs, metric=metric, baseline=baseline, estimator=estimator or "final",
                            failure=rule.failed if rule else None)
    if rule is not None:
        result.notes.insert(0, f"failed trainings by the study's rule: {rule.describe()}")
    result.notes += [f"fairness of the study's comparison {line}" for line in _study_fairness(results)]
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(result.to_json(), indent=1))
        return
    if json_out is not None:
        write_json(json_out, result.to_json())  # before printing: a bad path fails before any output
    print_compare(result)


def _study_failure_rule(results: list[Path]):
    """A single study folder's `failure:` rule, which its runs are judged by (as its report does)."""
    from biasbench.study.analysis import study_failure_rule
    from biasbench.study.manifest import is_study_folder

    if len(results) == 1 and is_study_folder(results[0]):
        return study_failure_rule(results[0])
    return None


def _study_fairness(results: list[Path]) -> list[str]:
    """A single study folder: how each of its `analysis.pairs` comparisons was made fair."""
    from biasbench.study.analysis import fairness_lines
    from biasbench.study.manifest import is_study_folder

    if len(results) == 1 and is_study_folder(results[0]):
        return fairness_lines(results[0])
    return []


def write_json(path: Path, obj: Any) -> None:
    from biasbench.fsutil import atomic_write_json, writing

    if path.is_dir():
        raise UserError(f"--json `{path}` is a folder; give a file name")
    with writing(path, "give --json a path in a writable folder"):
        atomic_write_json(path, obj)


def _gate(path: Path, runs: list, json_out: Path | None) -> None:
    from dataclasses import asdict

    from biasbench.gate import format_result, load_gate, run_gate
    from biasbench.termtable import emit, output_width

    g = load_gate(path)
    result = run_gate(g, runs)
    code = result.exit_code(g.inconclusive_fails)
    doc = {**asdict(result), "outcome": result.outcome, "exit_code": code}
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(doc, indent=1, default=str))
    else:
        if json_out is not None:
            write_json(json_out, doc)
        emit(format_result(result, g.inconclusive_fails, output_width()))
    sys.stdout.flush()
    if code:
        raise typer.Exit(code)


def print_compare(result) -> None:
    from biasbench.tables import comparison_table, failures_table, group_table
    from biasbench.termtable import emit, notes, output_width, render

    width = output_width()
    lines = render(group_table(result), width)
    if result.comparisons:
        lines += [("", ""), *render(comparison_table(result), width)]
    failures = failures_table(result)
    if failures is not None:
        lines += [("", ""), *render(failures, width)]
    if result.notes:
        lines += [("", ""), *notes(result.notes, width)]
    emit(lines)
