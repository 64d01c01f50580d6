"""`biasbench sweep`: run every cell and replicate of a study, locally or on a Slurm cluster."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from biasbench.cli.app import app
from biasbench.errors import UserError
from biasbench.runlog import say

BACKENDS = ("local", "slurm")


@app.command(epilog="Examples:\n\n  biasbench sweep studies/dac_sgemm.yaml --smoke --dry-run\n\n"
                    "  biasbench sweep studies/dac_sgemm.yaml --smoke --jobs 2\n\n"
                    "  biasbench sweep studies/dac_vgg_cifar.yaml --gpus 0,1,2,3 --workers-per-gpu 2\n\n"
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
    gpus: str | None = typer.Option(None, "--gpus", help="Local: devices 0,1,2,3 or all, one worker each "
                                    "(CUDA_VISIBLE_DEVICES); Slurm: GPUs per job (launcher.gpus_per_node)."),
    workers_per_gpu: int | None = typer.Option(None, "--workers-per-gpu", min=1,
                                               help="Local with --gpus: workers sharing each GPU (default 1)."),
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
    slots, device = _local_gpus(backend, gpus, workers_per_gpu, jobs, device)
    cluster = {"partition": partition, "time": time_limit, "gpus_per_node": _slurm_gpus(gpus) if backend == "slurm"
               else None, "cpus_per_task": cpus, "mem_gb": mem_gb, "array_parallelism": array_parallelism}
    given = {k: v for k, v in cluster.items() if v is not None}
    if backend == "local" and given:
        raise UserError(f"--{next(iter(given)).split('_')[0]}... are Slurm options; add --backend slurm")
    if backend == "slurm":
        if jobs != 1:
            raise UserError("--jobs is for --backend local; on Slurm the array runs as many at once as the "
                            "cluster allows (--array-parallelism)")
        from biasbench.study.runner import check_slurm

        check_slurm()
    study = load_study(study_path, smoke=smoke, plan_over=PLANNED_OVER if dry_run else None)
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
        _print_plan(study, out, console, as_json, launcher if backend == "slurm" else None)
        return
    _run(study, out, backend, len(slots) if slots else jobs, device, launcher, console, as_json, slots)


def _local_gpus(backend: str, gpus: str | None, per_gpu: int | None, jobs: int, device: str
                ) -> tuple[list[dict[str, str]] | None, str]:
    """The local backend's worker environments for --gpus (None without), and the device runs use."""
    if backend != "local" or gpus is None:
        if per_gpu is not None:
            raise UserError("--workers-per-gpu shares the devices of --gpus among local workers; add --gpus "
                            "0,1,... (local backend)")
        return None, device
    if jobs != 1:
        raise UserError("--jobs and --gpus both set the number of local workers; with --gpus there are "
                        "(devices x --workers-per-gpu) workers: drop --jobs")
    if device == "cpu":
        raise UserError("--gpus pins each worker to a CUDA device, but --device is cpu; drop one of them")
    from biasbench.study.gpus import slots_for

    return slots_for(gpus, per_gpu or 1), "cuda"


def _slurm_gpus(gpus: str | None) -> int | None:
    if gpus is None:
        return None
    if not gpus.strip().isdigit():
        raise UserError(f"--gpus with --backend slurm is a number of GPUs per job, got `{gpus}` (device lists "
                        "are for --backend local)")
    return int(gpus)


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


def _slurm_backend(launcher: Any) -> Any:
    """The Slurm backend, imported only for --backend slurm: it needs the optional submitit."""
    from biasbench.study.slurm import SlurmBackend

    return SlurmBackend(launcher)


def _run(study: Any, out: Path, backend: str, jobs: int, device: str, launcher: Any, console: Console,
         as_json: bool, slots: list[dict[str, str]] | None = None) -> None:
    from biasbench.running import registered
    from biasbench.study.runner import run_sweep, worker_threads

    if out.exists() and not out.is_dir():
        raise UserError(f"--out `{out}` is a file; give a folder")
    _check_datas(study)
    where = f"{jobs} worker{'s' if jobs > 1 else ''} x {worker_threads(jobs)} thread(s)" if backend == "local" \
        else "Slurm job array"
    if slots:
        where += f" on GPUs {','.join(dict.fromkeys(s['CUDA_VISIBLE_DEVICES'] for s in slots))}"
    if not as_json:
        say(console, f"study {study.name}: {study.run_count()} runs in {len(study.cells)} cells, "
                      f"{where}; folder {str(out)}")
        cores = worker_threads(1)
        if backend == "local" and jobs > cores:
            say(console, f"note: {jobs} workers on {cores} cores: they share the cores, one thread each")
    # Locally the workers' threads count against this machine's cores (Slurm runs elsewhere).
    workers = min(jobs, study.run_count())
    crowding = registered(workers * worker_threads(jobs), f"sweep {study.name}") if backend == "local" \
        else contextlib.nullcontext()
    try:
        with crowding as crowded:
            if crowded:
                Console(stderr=True, highlight=False).print(escape(crowded), style="yellow")
            run_console = Console(highlight=False, quiet=as_json)
            remote = _slurm_backend(launcher) if backend == "slurm" else None
            decisions = None
            if study.tune is not None:  # the searches first; the cells then train their best values
                from biasbench.study.tune_search import run_tuning, slurm_batch

                study = run_tuning(study, out, run_console, jobs=jobs, device=device, slots=slots, backend=remote,
                                   batch=slurm_batch(launcher))
            if study.sequential is not None:
                from biasbench.study.rounds import run_rounds

                study, sweep, decisions = run_rounds(study, out, run_console, backend=remote, jobs=jobs,
                                                     device=device, slots=slots)
            else:
                sweep = run_sweep(study, out, backend=remote, jobs=jobs, device=device, console=run_console,
                                  slots=slots)
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
                          **({"tune": study.tuned} if study.tuned is not None else {}),
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
    say(console, f"{study.run_count()} runs: {', '.join(parts)}")
    if sweep.done_before:
        now = study.run_count() - sweep.done_before
        say(console, f"{sweep.done_before} of them were finished before this sweep and not trained again"
                      + ("" if now else "; nothing was left to train"))
    for note in sweep.notes:
        say(console, f"note: {note}")
    for line in sweep.errors[:5]:
        say(console, f"error in {line}")
    if len(sweep.errors) > 5:
        say(console, f"... {len(sweep.errors) - 5} more errors in {str(out / 'study.json')}")
    if sweep.errors:
        say(console, "tracebacks are in each run's error.txt; run the same command again to retry them")
    say(console, f"report: biasbench report {str(out)} --out {str(out / 'report')}")


SHOWN_CELLS = 100  # plan rows printed; the rest are counted (--json lists every cell)
PLANNED_OVER = 2_000  # a study of more cells is counted for --dry-run, not built (load_study's plan_over)


def _print_plan(study: Any, out: Path, console: Console, as_json: bool, launcher: Any = None) -> None:
    """The plan; `launcher`: the Slurm launcher with --backend slurm (None: local)."""
    from biasbench.study.cost import planned, si, summary

    costs = planned(study)
    values = study.plan.values if study.plan is not None else [c.values for c in study.cells]
    total = summary(costs)
    if as_json:
        cells = [{"cell": k.cell, "values": v, "runs": k.runs, "params": k.params, "flops_per_sample": k.flops,
                  "train_samples": k.samples, "epochs": k.epochs, "cost": k.total} for v, k in zip(values, costs)]
        print(json.dumps({"study": study.name, "out": str(out), **total, "cells": cells,
                          "matches": [_match_json(m) for m in study.matches],
                          "sequential": None if study.sequential is None else vars(study.sequential),
                          "tune": None if study.tune is None else {
                              **vars(study.tune), "slurm_batch": _tune_batch(launcher)}},
                         indent=1, default=str))
        # (`cells` is the list here; its length is the cell count)
        return
    say(console, f"study {study.name}: {total['runs']} runs in {total['cells']} cells "
                  f"(folder {str(out)}; nothing is trained with --dry-run)")
    shown = min(len(costs), SHOWN_CELLS)
    for text, style in _plan_table(study, values[:shown], costs[:shown], si, console.width):
        console.print(escape(text), style=style or None, overflow="ignore", crop=False, soft_wrap=True)
    if len(costs) > shown:
        say(console, f"... and {len(costs) - shown} more cells (the first {shown} are shown; --json lists "
                      "every cell)")
    if study.plan is not None:
        say(console, f"{len(study.cells)} of the {len(costs)} cells' recipes were built and checked (one per "
                      "distinct model, data and train setting and per grid value); the sweep checks every cell")
    cost = total["forward_flops_x_samples_x_epochs"]
    say(console, f"total: {total['runs']} runs, {si(cost, 'FLOP')} = forward FLOPs per sample x training samples x "
                  "epochs, summed over runs (a training step costs about 3 forward passes)"
                  + ("; ~ marks sample counts from the official data set size" if total["approximate"] else ""))
    _print_matches(study, console, si)
    _print_sequential(study, console)
    _print_tuning(study, console, launcher)
    if total["cells_without_estimate"]:
        say(console, f"no estimate for {len(total['cells_without_estimate'])} cells: their data set's size is "
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


def _tune_batch(launcher: Any) -> int | None:
    """Trials per Slurm job array (None: the local backend, which imports no Optuna for a plan)."""
    if launcher is None:
        return None
    from biasbench.study.tune_search import slurm_batch

    return slurm_batch(launcher)


def _print_tuning(study: Any, console: Console, launcher: Any) -> None:
    from biasbench.study.tune import plan_text
    from biasbench.termtable import wrap

    if study.tune is None:
        return
    text = plan_text(study)
    if launcher is not None:
        from biasbench.study.tune_search import SLURM_BATCH

        where = "launcher.array_parallelism" if launcher.array_parallelism else f"the default, {SLURM_BATCH}"
        text += (f"; on Slurm the trials go in job arrays of {_tune_batch(launcher)} ({where}), each finished "
                 "trial told to Optuna by this sweep")
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


def _plan_table(study: Any, values: list[dict[str, Any]], costs: list[Any], si: Any,
                width: int) -> list[tuple[str, str]]:
    """One column per varying key when that fits `width`, else one per cell name (the table's
    usual blocks below it when even that is too wide)."""
    from biasbench.study.naming import short_keys, tag_value
    from biasbench.termtable import TextTable, fits, render

    short = short_keys(study.varying)
    heads = ["runs", "params", "FLOP/smp", "samples", "ep", "cost"]
    numbers = [[str(k.runs), si(k.params), si(k.flops), si(k.samples) + ("" if k.exact else "~"), str(k.epochs),
                si(k.total)] for k in costs]
    by_key = TextTable([short[k] for k in study.varying] + heads,
                       [[tag_value(v[k]) for k in study.varying] + n for v, n in zip(values, numbers)],
                       left=set(range(len(study.varying))))
    if fits(by_key, width):
        return render(by_key, width)
    return render(TextTable(["cell"] + heads, [[k.cell] + n for k, n in zip(costs, numbers)]), width)
