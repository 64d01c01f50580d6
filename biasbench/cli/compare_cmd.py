"""`biasbench compare`: group runs, summarise them, compare against a baseline, gate CI."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from biasbench.cli import options
from biasbench.cli.app import app
from biasbench.errors import UserError

if TYPE_CHECKING:
    from biasbench.gate import Gate


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
    "  biasbench compare /tmp/ci --gate recipes/gates/quickstart_smoke.yaml\n\n"
    "  biasbench compare /tmp/ci --gate G.yaml --junit gate.xml --summary gate.md",
)
def compare(
    results: list[Path] = options.RESULTS,
    baseline: str | None = options.BASELINE,
    metric: str | None = options.METRIC,
    estimator: str | None = options.ESTIMATOR,
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Also write the summary as JSON to OUT (`-`: JSON on stdout only)."),
    gate: Path | None = typer.Option(
        None, "--gate", metavar="GATE.yaml", help="Check the runs against a gate file (or a recipe's gate: "
        "section); exit 0 pass, 1 regression, 2 unusable input. The gate names its own reference, metrics and "
        "estimators, so --baseline, --metric and --estimator are refused with it."),
    junit: Path | None = typer.Option(
        None, "--junit", metavar="FILE", help="With --gate: also write the checks as JUnit XML (one test case per "
        "metric and rule) for GitHub, GitLab or Jenkins test reports."),
    summary: Path | None = typer.Option(
        None, "--summary", metavar="FILE", help="With --gate: also write a Markdown summary (table, verdict, a "
        "marker line for one updatable pull-request comment); appended to $GITHUB_STEP_SUMMARY when set."),
    history: Path | None = typer.Option(
        None, "--history", metavar="FILE", help="With --gate: read the gate's earlier figures from FILE (JSON "
        "lines) for `history:` rules, then append this run's figures with the commit."),
) -> None:
    from biasbench.compare import load_runs, summarize_runs

    ci_files = {"--junit": junit, "--summary": summary, "--history": history}
    if gate is None and (needs := [k for k, v in ci_files.items() if v is not None]):
        raise UserError(f"{', '.join(needs)} report a gate: add --gate GATE.yaml (docs/ci.md)")
    if json_out is not None and str(json_out) != "-":
        from biasbench.fsutil import check_output_file

        check_output_file(json_out, "--json")  # before reading and computing
    if gate is not None:
        given = [name for name, value in (("--baseline", baseline), ("--metric", metric),
                                          ("--estimator", estimator)) if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} cannot be used with --gate: the gate file sets its reference, "
                            "metrics and estimators (docs/ci.md); drop the option or change the gate file")
        from biasbench.gate import load_gate

        checked = load_gate(gate)  # the gate file is checked before any results are read
        _gate(gate, checked, load_runs(results), json_out, GateOutputs(junit, summary, history))
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
    from biasbench.study.analyses.pairs import fairness_lines
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


@dataclass(frozen=True)
class GateOutputs:
    junit: Path | None = None
    summary: Path | None = None
    history: Path | None = None


def _gate(path: Path, g: Gate, runs: list, json_out: Path | None, outputs: GateOutputs) -> None:
    from dataclasses import asdict

    from biasbench import gate_ci
    from biasbench.gate import format_result, run_gate
    from biasbench.termtable import emit, output_width

    past = gate_ci.read_history(outputs.history) if outputs.history is not None else None
    result = run_gate(g, runs, past)  # a `history:` rule without --history: refused in one line
    code = result.exit_code(g.inconclusive_fails)
    _write_ci_files(result, g.inconclusive_fails, outputs, runs)
    doc = {**asdict(result), "outcome": result.outcome, "exit_code": code}
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(doc, indent=1, default=str))
    else:
        if json_out is not None:
            write_json(json_out, doc)
        emit(format_result(result, g.inconclusive_fails, output_width()))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in gate_ci.github_annotations(result, path, g.inconclusive_fails):
            print(line)
    sys.stdout.flush()
    if code:
        raise typer.Exit(code)


def _write_ci_files(result, inconclusive_fails: bool, outputs: GateOutputs, runs: list) -> None:
    """JUnit, the Markdown summary (also to $GITHUB_STEP_SUMMARY) and the history entry."""
    from biasbench import gate_ci
    from biasbench.fsutil import atomic_write_text, writing

    for option, target in (("--junit", outputs.junit), ("--summary", outputs.summary)):
        if target is not None and target.is_dir():
            raise UserError(f"{option} `{target}` is a folder; give a file name")
    if outputs.junit is not None:
        with writing(outputs.junit, "give --junit a path in a writable folder"):
            atomic_write_text(outputs.junit, gate_ci.junit_xml(result, inconclusive_fails))
    markdown = gate_ci.summary_markdown(result, inconclusive_fails, gate_ci.ci_link())
    if outputs.summary is not None:
        with writing(outputs.summary, "give --summary a path in a writable folder"):
            atomic_write_text(outputs.summary, markdown)
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        target = Path(step_summary)
        with writing(target, "GITHUB_STEP_SUMMARY names a file GitHub Actions provides"), target.open("a") as f:
            f.write(markdown)  # GitHub's step summary is appended to, by each step that writes it
    if outputs.history is not None:
        gate_ci.append_history(outputs.history, gate_ci.history_entry(result, gate_ci.commit_of(runs)))


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
