"""`biasbench sweep`: run every cell and replicate of a study, locally or on a Slurm cluster."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from biasbench.cli.app import app
from biasbench.errors import UserError

BACKENDS = ("local", "slurm")


@app.command(epilog="Examples:\n\n  biasbench sweep studies/dac_sgemm.yaml --smoke --dry-run\n\n"
                    "  biasbench sweep studies/dac_sgemm.yaml --smoke --jobs 2\n\n"
                    "  biasbench sweep studies/dac_vgg_cifar.yaml --backend slurm --gpus 1\n\n"
                    "  biasbench report runs/studies/dac_sgemm_smoke --out report/\n\n"
                    "Run the same command again to finish a stopped sweep: finished runs are "
                    "skipped, interrupted ones resume from their checkpoints.")
def sweep(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml", help="Study file (see studies/)."),
    out: Path | None = typer.Option(None, "--out", help="Study folder (default runs/studies/NAME)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Local backend: runs at once (worker processes)."),
    backend: str = typer.Option("local", "--backend", help="local (worker processes) or slurm (job arrays)."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="",
                                 help="Print cells, run count and cost; train nothing."),
    smoke: bool = typer.Option(False, "--smoke", metavar="",
                               help="The study's smoke form (bundled data, minutes on a CPU)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (in each run)."),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition (launcher.partition)."),
    time_limit: str | None = typer.Option(None, "--time", help="Slurm time per job: minutes or HH:MM:SS."),
    gpus: int | None = typer.Option(None, "--gpus", min=0, help="Slurm GPUs per job (launcher.gpus_per_node)."),
    cpus: int | None = typer.Option(None, "--cpus", min=1, help="Slurm CPUs per job (launcher.cpus_per_task)."),
    mem_gb: float | None = typer.Option(None, "--mem-gb", min=0, help="Slurm memory per job in GB."),
    array_parallelism: int | None = typer.Option(None, "--array-parallelism", min=1,
                                                 help="Slurm: most array tasks running at once."),
    as_json: bool = typer.Option(False, "--json", metavar="",
                                 help="Print JSON (the plan with --dry-run, else the outcome)."),
) -> None:
    """Run a study: every cell of its grid, every replicate, with a manifest in the study folder.

    Idempotent: finished runs are skipped, interrupted ones resume exactly. Docs: docs/studies.md."""
    from biasbench.study import load_study

    if backend not in BACKENDS:
        raise UserError(f"--backend must be local or slurm, got `{backend}`")
    cluster = {"partition": partition, "time": time_limit, "gpus_per_node": gpus, "cpus_per_task": cpus,
               "mem_gb": mem_gb, "array_parallelism": array_parallelism}
    given = {k: v for k, v in cluster.items() if v is not None}
    if backend == "local" and given:
        raise UserError(f"--{next(iter(given)).split('_')[0]}... are Slurm options; add --backend slurm")
    if backend == "slurm":
        if jobs != 1:
            raise UserError("--jobs is for --backend local; on Slurm the array runs as many at once as the "
                            "cluster allows (--array-parallelism)")
        from biasbench.study.runner import check_slurm

        check_slurm()
    study = load_study(study_path, smoke=smoke)
    if study.sequential is not None:
        from biasbench.study.rounds import check_comparisons

        try:
            check_comparisons(study)
        except UserError as e:
            raise UserError(f"study `{study_path}`: {e}") from None
    launcher = replace(study.launcher, **given)
    out = out if out is not None else Path("runs") / "studies" / study.name
    console = Console(highlight=False)
    if dry_run:
        _print_plan(study, out, console, as_json)
        return
    _run(study, out, backend, jobs, device, launcher, console, as_json)


def _check_datas(study: Any) -> None:
    """Every cell's data is where its recipe says, before any worker or Slurm job starts."""
    from biasbench.data import check_data

    seen = set()
    for cell in study.cells:
        data = cell.recipe.data
        if (data.name, data.root, data.download) in seen:
            continue
        seen.add((data.name, data.root, data.download))
        try:
            check_data(data)
        except UserError as e:
            raise UserError(f"cell `{cell.name}`: {e}") from None


def _run(study: Any, out: Path, backend: str, jobs: int, device: str, launcher: Any, console: Console,
         as_json: bool) -> None:
    from biasbench.study.runner import run_sweep, worker_threads

    if out.exists() and not out.is_dir():
        raise UserError(f"--out `{out}` is a file; give a folder")
    _check_datas(study)
    where = f"{jobs} worker{'s' if jobs > 1 else ''} x {worker_threads(jobs)} thread(s)" if backend == "local" \
        else "Slurm job array"
    if not as_json:
        console.print(f"study {escape(study.name)}: {study.run_count()} runs in {len(study.cells)} cells, "
                      f"{where}; folder {escape(str(out))}")
        cores = worker_threads(1)
        if backend == "local" and jobs > cores:
            console.print(f"note: {jobs} workers on {cores} cores: they share the cores, one thread each")
    try:
        run_console = Console(highlight=False, quiet=as_json)
        decisions = None
        if study.sequential is not None:
            from biasbench.study.rounds import run_rounds

            study, sweep, decisions = run_rounds(study, out, run_console, backend=backend, jobs=jobs, device=device,
                                                 launcher=launcher)
        else:
            sweep = run_sweep(study, out, backend=backend, jobs=jobs, device=device, launcher=launcher,
                              console=run_console)
    except KeyboardInterrupt:
        Console(stderr=True, highlight=False).print(
            "interrupted: every running run kept its last checkpoint"
            + ("; the Slurm jobs keep running" if backend == "slurm" else "")
            + "; run the same command again to finish the study")
        raise typer.Exit(130) from None
    counts = sweep.manifest.counts()
    failed = sum(1 for r in sweep.manifest.runs.values() if r.get("failed"))
    if as_json:
        print(json.dumps({"study": study.name, "out": str(out), "counts": counts, "failed": failed,
                          "errors": sweep.errors, "notes": sweep.notes,
                          **({"comparisons": [d.record() for d in decisions]} if decisions is not None else {})},
                         indent=1))
    else:
        _print_outcome(study, out, counts, failed, sweep, console)
        if decisions is not None:
            _print_decisions(decisions, console)
    if sweep.errors:
        raise typer.Exit(1)


def _print_decisions(decisions: list[Any], console: Console) -> None:
    """How the comparisons of a `replicates: {until: decided}` study stopped."""
    from biasbench.termtable import wrap

    by_status = {s: sum(1 for d in decisions if d.status == s) for s in ("decided", "maximum", "continuing")}
    text = (f"comparisons: {by_status['decided']} decided, {by_status['maximum']} undecided at the maximum"
            + (f", {by_status['continuing']} still going on (a run failed; run the same command again)"
               if by_status["continuing"] else ""))
    for line in wrap(text, console.width):
        console.print(escape(line), overflow="ignore", crop=False, soft_wrap=True)


def _print_outcome(study: Any, out: Path, counts: dict[str, int], failed: int, sweep: Any, console: Console) -> None:
    parts = [f"{counts.get('completed', 0)} completed"]
    if study.failure is not None:
        parts[0] += f" ({failed} failed: {study.failure.describe()})"
    parts += [f"{counts.get('diverged', 0)} diverged", f"{counts.get('error', 0)} errors"]
    left = {k: v for k, v in counts.items() if k not in ("completed", "diverged", "error")}
    parts += [f"{v} {k}" for k, v in left.items()]
    console.print(f"{study.run_count()} runs: {', '.join(parts)}")
    if sweep.done_before:
        now = study.run_count() - sweep.done_before
        console.print(f"{sweep.done_before} of them were finished before this sweep and not trained again"
                      + ("" if now else "; nothing was left to train"))
    for note in sweep.notes:
        console.print(f"note: {escape(note)}")
    for line in sweep.errors[:5]:
        console.print(f"error in {escape(line)}")
    if len(sweep.errors) > 5:
        console.print(f"... {len(sweep.errors) - 5} more errors in {escape(str(out / 'study.json'))}")
    if sweep.errors:
        console.print("tracebacks are in each run's error.txt; run the same command again to retry them")
    console.print(f"report: biasbench report {escape(str(out))} --out {escape(str(out / 'report'))}")


def _print_plan(study: Any, out: Path, console: Console, as_json: bool) -> None:
    from biasbench.study.cost import estimate, si, summary

    costs = estimate(study.cells)
    total = summary(costs)
    if as_json:
        cells = [{"cell": c.name, "values": c.values, "runs": k.runs, "params": k.params, "flops_per_sample": k.flops,
                  "train_samples": k.samples, "epochs": k.epochs, "cost": k.total} for c, k in zip(study.cells, costs)]
        print(json.dumps({"study": study.name, "out": str(out), **total, "cells": cells,
                          "matches": [_match_json(m) for m in study.matches],
                          "sequential": None if study.sequential is None else vars(study.sequential)},
                         indent=1, default=str))
        # (`cells` is the list here; its length is the cell count)
        return
    console.print(f"study {escape(study.name)}: {total['runs']} runs in {total['cells']} cells "
                  f"(folder {escape(str(out))}; nothing is trained with --dry-run)")
    for text, style in _plan_table(study, costs, si, console.width):
        console.print(escape(text), style=style or None, overflow="ignore", crop=False, soft_wrap=True)
    cost = total["forward_flops_x_samples_x_epochs"]
    console.print(f"total: {total['runs']} runs, {si(cost, 'FLOP')} = forward FLOPs per sample x training samples x "
                  "epochs, summed over runs (a training step costs about 3 forward passes)"
                  + ("; ~ marks sample counts from the official data set size" if total["approximate"] else ""))
    _print_matches(study, console, si)
    _print_sequential(study, console)
    if total["cells_without_estimate"]:
        console.print(f"no estimate for {len(total['cells_without_estimate'])} cells: their data set's size is "
                      "not known without its files")


def _print_sequential(study: Any, console: Console) -> None:
    from biasbench.sequential import METHOD
    from biasbench.termtable import wrap

    seq = study.sequential
    if seq is None:
        return
    text = (f"replicates until decided: every cell starts with {seq.min}; the comparisons of analysis.pairs "
            f"still undecided get {seq.step} more seed(s) per round, up to {seq.max} ({METHOD}, alpha "
            f"{seq.alpha:g}); the runs and cost above are the first round's")
    for line in wrap(text, console.width):
        console.print(escape(line), overflow="ignore", crop=False, soft_wrap=True)


def _match_json(m: Any) -> dict[str, Any]:
    return {"cell": m.cell_name, "reference": m.reference_name, "key": m.key, "value": m.value, "by": m.by,
            "params": m.params, "reference_params": m.reference_params, "flops": m.flops,
            "reference_flops": m.reference_flops, "mismatch": m.mismatch, "tolerance": m.tolerance}


def _print_matches(study: Any, console: Console, si: Any) -> None:
    """The solved values of `match:` and the mismatch left, one row per solved cell."""
    from biasbench.study.naming import short_keys
    from biasbench.termtable import TextTable, render, wrap

    if not study.matches:
        return
    first = study.matches[0]
    for line in wrap(f"match: {first.key} solved so that each cell's {first.by} equal its reference's within "
                     f"{first.tolerance:.2%}:", console.width):
        console.print(escape(line), overflow="ignore", crop=False, soft_wrap=True)
    rows = []
    for m in study.matches:
        got, want = (m.params, m.reference_params) if m.by == "params" else (m.flops, m.reference_flops)
        rows.append([m.cell_name, str(m.value), si(got), m.reference_name, si(want), f"{m.mismatch:+.2%}"])
    heads = ["cell", short_keys([first.key])[first.key], first.by, "reference", f"ref {first.by}", "mismatch"]
    table = TextTable(heads, rows, left={0, 3})
    for text, style in render(table, console.width):
        console.print(escape(text), style=style or None, overflow="ignore", crop=False, soft_wrap=True)


def _plan_table(study: Any, costs: list[Any], si: Any, width: int) -> list[tuple[str, str]]:
    """One column per varying key when that fits `width`, else one per cell name (the table's
    usual blocks below it when even that is too wide)."""
    from biasbench.study.naming import short_keys, tag_value
    from biasbench.termtable import TextTable, fits, render

    short = short_keys(study.varying)
    heads = ["runs", "params", "FLOP/smp", "samples", "ep", "cost"]
    numbers = [[str(k.runs), si(k.params), si(k.flops), si(k.samples) + ("" if k.exact else "~"), str(k.epochs),
                si(k.total)] for k in costs]
    by_key = TextTable([short[k] for k in study.varying] + heads,
                       [[tag_value(c.values[k]) for k in study.varying] + n for c, n in zip(study.cells, numbers)],
                       left=set(range(len(study.varying))))
    if fits(by_key, width):
        return render(by_key, width)
    return render(TextTable(["cell"] + heads, [[c.name] + n for c, n in zip(study.cells, numbers)]), width)
