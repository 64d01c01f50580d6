"""`biasbench train`: run a recipe's replicates and write checkpoints and results files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from biasbench.cli.app import app
from biasbench.env import resolve_device
from biasbench.errors import UserError
from biasbench.recipe import Recipe, load_recipe, recipe_yaml
from biasbench.runlog import say
from biasbench.termtable import print_table


@app.command(epilog="Examples:\n\n  biasbench train recipes/quickstart.yaml\n\n"
                    "  biasbench train recipes/quickstart.yaml --set model.variant=dac\n\n"
                    "  (writes runs/quickstart/variant=dac/seed0, beside the baseline)\n\n"
                    "  biasbench train recipes/resnet32_dac.yaml --replicates 5 --set optim.lr=0.05\n\n"
                    "  biasbench train recipes/resnet32_dac.yaml --smoke   (a tiny run)\n\n"
                    "  biasbench train recipes/quickstart.yaml --resume   (continue a run)\n\n"
                    "  biasbench train recipes/quickstart.yaml --dry-run   (trains nothing)\n\n"
                    "  biasbench train recipes/mnist1d_mlp.yaml --replicates 4 --jobs 2\n\n"
                    "  torchrun --nproc_per_node 2 -m biasbench train recipes/quickstart.yaml\n\n"
                    "Exit codes: 0 done, 2 bad input, 130/143/138 stopped by Ctrl-C/SIGTERM/SIGUSR1 "
                    "(checkpoint and results kept: rerun with --resume).")
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="Recipe file (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a recipe key: --set optim.lr=0.05 (repeatable). "
                                   "Keys that change the experiment name a subfolder: runs/NAME/lr=0.05/seed0."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the first replicate (train.seed)."),
    replicates: int | None = typer.Option(None, "--replicates", help="Number of replicates (train.replicates)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (output.dir)."),
    resume: bool = typer.Option(False, "--resume", metavar="",
                                help="Continue runs from their checkpoints; skip finished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="",
                                   help="Start again over runs already in the output folder."),
    smoke: bool = typer.Option(False, "--smoke", metavar="",
                               help="Apply the recipe's smoke-sized overrides; runs are named "
                                    "NAME_smoke so they never mix with full runs."),
    stop_after: int | None = typer.Option(None, "--stop-after", min=1,
                                          help="Stop each run resumably after this epoch (for time-limited jobs)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Run this many replicates at once, as processes."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="CPU threads per training process (default: every core; with "
                                            "--jobs, the cores shared out). Runs side by side: make them add up "
                                            "to the cores."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="",
                                 help="Print the resolved recipe and each replicate's run "
                                      "folder; train nothing."),
    json_out: Path | None = typer.Option(None, "--json", metavar="OUT",
                                         help="Also write the final table as JSON to OUT (`-`: stdout only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="Print only the final table."),
) -> None:
    """Train a recipe: every replicate, with checkpoints each epoch and one results JSON per run.

    Under `torchrun --nproc_per_node N -m biasbench train RECIPE`, the N processes train each run together (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) and rank 0 writes the files."""  # noqa: E501 (one paragraph: --help wraps it)
    import torch

    from biasbench.distributed import from_environment
    from biasbench.replicates import worker_threads
    from biasbench.running import registered
    from biasbench.stopping import StoppedBeforeTraining, signal_of, stop_on_signals
    from biasbench.trainer import train_recipe

    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    if dry_run and json_out is not None:
        raise UserError("--json writes the table of trained runs and --dry-run trains nothing; drop one of them")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out `{out}` is a file; give a folder")
    if json_out is not None and str(json_out) != "-":
        from biasbench.fsutil import check_output_file

        check_output_file(json_out, "--json")  # before training, not after it
    recipe, notes = resolve_recipe(recipe_path, set_, seed=seed, replicates=replicates, out=out, smoke=smoke)
    if dry_run:
        print_dry_run(recipe, notes, resume, overwrite)
        return
    dev = resolve_device(device)
    ctx = from_environment(dev.type)  # several ranks when started by torchrun
    if ctx.enabled:
        if jobs > 1:
            raise UserError("--jobs runs replicates as separate processes; under torchrun use one job per rank")
        if dev.type == "cuda":
            dev = torch.device("cuda", ctx.local_rank)
    to_stdout = json_out is not None and str(json_out) == "-"
    console = Console(quiet=quiet or not ctx.is_main, highlight=False, stderr=to_stdout)
    for note in notes:
        say(console, note)
    if threads is not None:
        torch.set_num_threads(threads)
    workers = min(jobs, recipe.train.replicates)  # (one replicate trains here, whatever --jobs says)
    total = torch.get_num_threads() if workers == 1 else workers * worker_threads(jobs, threads)
    with stop_on_signals(), registered(total, f"train {recipe_path}") as crowded:
        def warn_if_crowded() -> None:
            if crowded and ctx.is_main:
                say(Console(stderr=True, highlight=False), crowded, "yellow")
        try:
            docs = train_recipe(recipe, dev, resume=resume, overwrite=overwrite, stop_after=stop_after, jobs=jobs,
                                threads=threads, console=console, ctx=ctx, planned=warn_if_crowded)
        except KeyboardInterrupt as e:  # (once training began, the trainer raises Interrupted instead)
            raise StoppedBeforeTraining(signal_of(e)) from None
    if not ctx.is_main:
        return
    rows = summary_rows(docs)
    if to_stdout:
        print(json.dumps(rows, indent=1))
        return
    print_runs_table(rows, recipe, Console(highlight=False))
    if json_out is not None:
        from biasbench.cli.compare_cmd import write_json

        write_json(json_out, rows)


def resolve_recipe(path: Path, sets: list[str], *, seed: int | None = None, replicates: int | None = None,
                   out: Path | None = None, smoke: bool = False) -> tuple[Recipe, list[str]]:
    """The recipe to train, with the run name extended by the overrides that change the
    experiment (`NAME/variant=dac`), and the lines that say so."""
    from biasbench.runfolder import experiment_overrides, run_tag

    place = [f"train.seed={seed}"] * (seed is not None) + [f"train.replicates={replicates}"] * (
        replicates is not None) + [f"output.dir={out}"] * (out is not None)
    recipe = load_recipe(path, [*sets, *place], smoke=smoke)
    from biasbench.data import check_data
    from biasbench.models import check_model

    m = recipe.model
    check_model(m.name, m.variant, m.variant_options, **m.options)  # refused before anything is printed
    check_data(recipe.data)
    notes = []
    if smoke:
        smoke_keys = ", ".join(f"{k}={v}" for k, v in recipe.smoke.items())
        notes.append(f"--smoke: {smoke_keys}; runs are named {recipe.output.name} (never mixed with full runs)")
    if sets:
        changed = experiment_overrides(load_recipe(path, place, smoke=smoke).to_dict(), recipe.to_dict())
        tag = run_tag(changed)
        if tag:
            recipe.output.name = f"{recipe.output.name}/{tag}"
            notes.append(f"--set changes the experiment ({', '.join(changed)}): runs go to "
                         f"{Path(recipe.output.dir) / recipe.output.name}/, beside the recipe's own")
    return recipe, notes


# ---------------------------------------------------------------------------------------------
# --dry-run
# ---------------------------------------------------------------------------------------------


def print_dry_run(recipe: Recipe, notes: list[str], resume: bool, overwrite: bool) -> None:
    import textwrap

    from biasbench.runfolder import inspect_start, run_paths

    def comment(text: str) -> None:
        print("\n".join(textwrap.wrap(text, 80, initial_indent="# ", subsequent_indent="#   ",
                                       break_long_words=False, break_on_hyphens=False)))

    comment(f"resolved recipe (from {recipe.source}); --dry-run trains nothing")
    for note in notes:
        comment(note)
    print(recipe_yaml(recipe), end="")  # as `biasbench recipe show` prints it
    comment(f"{recipe.train.replicates} run folder(s):")
    for r in range(recipe.train.replicates):
        seed = recipe.train.seed + r
        paths = run_paths(recipe, seed)
        try:
            start = inspect_start(paths, recipe, seed, resume=resume, overwrite=overwrite)
            what = {"new": "new run", "resume": f"resumes after epoch {start.epoch}", "skip": "finished, skipped",
                    "restart": "starts again"}[start.action]
        except UserError as e:
            what = f"refused: {e}"
        comment(f"seed {seed}: {paths.dir} ({what})")


# ---------------------------------------------------------------------------------------------
# The final table.
# ---------------------------------------------------------------------------------------------


def summary_rows(docs: list[dict]) -> list[dict[str, Any]]:
    """One row per run: what the table shows and --json writes."""
    rows = []
    for d in docs:
        metric = "acc" if d["task"] == "classification" else "loss"
        final, best = d.get("final", {}), d.get("best", {})
        rows.append({"seed": d["seed"], "status": d["status"], "stop_reason": d.get("stop_reason"),
                     "epochs": d["epochs_completed"], "metric": metric,
                     f"test_{metric}": final.get(f"test_{metric}"),
                     "selected_by": best.get("selected_by"), "best_epoch": best.get("epoch"),
                     "best_value": best.get(best["selected_by"]) if best else None,
                     f"test_{metric}_at_best": best.get(f"test_{metric}"),
                     "params": d["params"]["total"], "images_per_second": d["images_per_second"],
                     "wall_time_s": d["wall_time_s"], "name": d["name"],
                     "recipe_path": d["recipe_path"]})
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    metric = row["metric"]
    fmt = (lambda v: f"{100 * v:.2f}%") if metric == "acc" else (lambda v: f"{v:.4g}")
    test, at_best = row[f"test_{metric}"], row[f"test_{metric}_at_best"]
    status = "early stop" if row["stop_reason"] == "early_stop" else row["status"]  # completed, but said why
    return [str(row["seed"]), status, str(row["epochs"]), fmt(test) if test is not None else "-",
            f"{fmt(row['best_value'])} @{row['best_epoch']}" if row["best_epoch"] else "-",
            fmt(at_best) if at_best is not None else "-", f"{row['params']:,}",
            f"{row['images_per_second']:,.0f}"]


def print_runs_table(rows: list[dict[str, Any]], recipe: Recipe, console: Console) -> None:
    """A table on a terminal; plain aligned lines (one per run, grep-able) otherwise. Short
    headers: it fits 80 columns."""
    from biasbench.runfolder import run_paths

    metric = rows[0]["metric"] if rows else "acc"
    sel = rows[0]["selected_by"] if rows and rows[0]["selected_by"] else f"val_{metric}"
    headers = ["seed", "status", "ep", f"test {metric}", f"best {sel.split('_')[0]} @ep", "test @ep", "params",
               "samples/s"]
    title = f"{recipe.output.name}: {recipe.model.name}/{recipe.model.variant} on {recipe.data.name}"
    print_table(title, headers, [_cells(r) for r in rows], stream=console.file)
    if rows:
        spent, where = sum(r["wall_time_s"] for r in rows), run_paths(recipe, rows[0]["seed"]).dir.parent
        runs = f"summed over {len(rows)} runs" if len(rows) > 1 else "one run"
        kept = "results and checkpoints" if recipe.output.checkpoint else "results (output.checkpoint: false)"
        say(console, f"training time {spent:.1f} s ({runs}); {kept}: {where}/seed*/")
        say(console, "samples/s: training steps only; kernel builds and each process's first step "
                     "(first-call warm-ups) are left out (results: warmup_s)")
    sys.stdout.flush()
