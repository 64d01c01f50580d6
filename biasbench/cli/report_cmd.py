"""`biasbench report`: a Markdown/HTML report with figures, or runs' histories in the terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from biasbench.cli import options
from biasbench.cli.app import app
from biasbench.errors import UserError
from biasbench.fsutil import new_folder


@app.command(
    help="Write a report (tables, learning curves, estimates, metric vs FLOPs/params, provenance), or show "
    "histories.\n\nWithout --out, a single results file (or --history) prints the per-epoch history as a table.",
    epilog="Examples:\n\n  biasbench report runs/ --out reports/today    (report.md + figures/)\n\n"
    "  biasbench report runs/base runs/dac --out rep --format html --estimator robust\n\n"
    "  biasbench report runs/quickstart/seed0/results.json    (its history)\n\n"
    "  biasbench report runs/ --history              (every run's history)\n\n"
    "  biasbench report runs/ --history --json -     (the histories as JSON)\n\n"
    "  biasbench report runs/studies/dac_sgemm --out rep    (a study folder: its analyses)",
)
def report(
    results: list[Path] = options.RESULTS,
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the report (report.md or .html, figures/*.png and .json, compare.json)."),
    fmt: str = typer.Option("md", "--format", help="md (Markdown, figures as relative links) or html (one file)."),
    baseline: str | None = options.BASELINE,
    metric: str | None = options.METRIC,
    estimator: str | None = options.ESTIMATOR,
    history: bool = typer.Option(False, "--history", metavar="",
                                 help="Print each run's per-epoch history in the terminal."),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Write what is shown as JSON to OUT (`-`: stdout only): the histories, "
        "or with --out the comparison (as compare.json)."),
) -> None:
    from biasbench.compare import load_runs, summarize_runs
    from biasbench.report import write_report

    given = {"--baseline": baseline, "--metric": metric, "--estimator": None if estimator == "final" else estimator,
             "--json": json_out}
    if _study_report(results, out, history, [k for k, v in given.items() if v is not None]):
        return
    if json_out is not None and str(json_out) != "-":
        from biasbench.fsutil import check_output_file

        check_output_file(json_out, "--json")  # before the report is written
    runs = load_runs(results)
    if history or out is None:
        if out is None and not history and len(runs) > 1:
            raise UserError(f"{len(runs)} results files given: pass --out DIR to write a report, or --history to "
                            "print each run's history")
        if out is None:
            _show_histories(runs, json_out)
            return
        _show_histories(runs, None)
    result = summarize_runs(runs, metric=metric, baseline=baseline, estimator=estimator or "final")
    with new_folder(out) as where:  # a new report folder appears whole or not at all
        target = out / write_report(result, runs, where, fmt).relative_to(where)
    if json_out is not None:
        _json(json_out, result.to_json())
    if json_out is None or str(json_out) != "-":
        from biasbench.termtable import emit, output_width, wrap

        emit([(t, "") for t in wrap(f"report: {target}", output_width())])


def _json(path: Path, doc: object) -> None:
    from biasbench.cli.compare_cmd import write_json

    if str(path) == "-":
        print(json.dumps(doc, indent=1))
    else:
        write_json(path, doc)


def _show_histories(runs: list, json_out: Path | None) -> None:
    from biasbench.tables import history_table
    from biasbench.termtable import emit, output_width, render, wrap

    if json_out is not None:
        from biasbench.compare import jsonable

        _json(json_out, jsonable([{"path": str(r.path), "name": r.doc.get("name"), "seed": r.seed, "status": r.status,
                          "best_epoch": (r.doc.get("best") or {}).get("epoch"), "history": r.history} for r in runs]))
        if str(json_out) == "-":
            return
    width = output_width()
    # Paths relative to the runs' common folder, named once: long absolute paths would not fit.
    parent = Path(os.path.commonpath([r.path.parent.resolve() for r in runs]))
    lines = [(t, "") for t in wrap(f"results in {parent}{os.sep}", width)]
    for run in runs:
        where = os.path.relpath(run.path.resolve(), parent)
        lines += [("", ""), *render(history_table(run.doc, where), width)]
    emit(lines)


def _study_report(results: list[Path], out: Path | None, history: bool, options: list[str]) -> bool:
    """A study folder (it holds a study manifest) gets the study report of its `analysis:`
    (Markdown and HTML both, whatever --format says)."""
    from biasbench.study.manifest import is_study_folder

    if len(results) != 1 or history or out is None or not is_study_folder(results[0]):
        return False
    if "--json" in options:
        raise UserError(f"`{results[0]}` is a study folder: --json does not apply to its report, which writes its "
                        f"numbers to {out / 'study_report.json'}; drop --json")
    if options:
        raise UserError(f"`{results[0]}` is a study folder: its report draws the study's `analysis:` section, "
                        f"where {options[0]} does not apply; set the metric and baseline there, or give the "
                        "run folders to get the plain report")
    from biasbench.study.report import write_study_report

    with new_folder(out) as where:
        target = out / write_study_report(results[0], where).relative_to(where)
    from biasbench.termtable import emit, output_width, wrap

    emit([(t, "") for t in wrap(f"study report: {target} (and report.html, figures/, study_report.json)",
                                output_width())])
    return True
