"""`biasbench train`: run a recipe's replicates and write checkpoints and results files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from biasbench.cli.app import app
from biasbench.env import resolve_device
from biasbench.errors import UserError
from biasbench.recipe import load_recipe


@app.command(epilog="Examples:\n\n  biasbench train recipes/quickstart.yaml\n\n"
                    "  biasbench train recipes/resnet32_dac.yaml --replicates 5 --set optim.lr=0.05\n\n"
                    "  biasbench train recipes/resnet32_dac.yaml --smoke   (tiny run to check a recipe)\n\n"
                    "  biasbench train recipes/quickstart.yaml --resume    (continue an interrupted run)\n\n"
                    "  biasbench train recipes/mnist1d_mlp.yaml --replicates 4 --jobs 2\n\n"
                    "  torchrun --nproc_per_node 2 -m biasbench train recipes/quickstart.yaml")
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="Recipe file (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set optim.lr=0.05 (repeatable)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the first replicate (train.seed)."),
    replicates: int | None = typer.Option(None, "--replicates", help="Number of replicates (train.replicates)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (output.dir)."),
    resume: bool = typer.Option(False, "--resume", help="Continue runs from their checkpoints; skip finished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again over runs already in the output folder."),
    smoke: bool = typer.Option(False, "--smoke", help="Apply the recipe's smoke-sized overrides."),
    stop_after: int | None = typer.Option(None, "--stop-after", min=1,
                                          help="Stop each run resumably after this epoch (for time-limited jobs)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Run this many replicates at once, as processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final table."),
) -> None:
    """Train a recipe: every replicate, with checkpoints each epoch and one results JSON per run.

    Under `torchrun --nproc_per_node N -m biasbench train RECIPE`, the N processes train each run
    together (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) and rank 0 writes the files."""
    import torch

    from biasbench.distributed import from_environment
    from biasbench.trainer import train_recipe

    overrides = list(set_)
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if replicates is not None:
        overrides.append(f"train.replicates={replicates}")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out `{out}` is a file; give a folder")
        overrides.append(f"output.dir={out}")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pick one")
    recipe = load_recipe(recipe_path, overrides, smoke=smoke)
    dev = resolve_device(device)
    ctx = from_environment(dev.type)  # several ranks when started by torchrun
    if ctx.enabled:
        if jobs > 1:
            raise UserError("--jobs runs replicates as separate processes; under torchrun use one job per rank")
        if dev.type == "cuda":
            dev = torch.device("cuda", ctx.local_rank)
    console = Console(quiet=quiet or not ctx.is_main, highlight=False)
    docs = train_recipe(recipe, dev, resume=resume, overwrite=overwrite, stop_after=stop_after, jobs=jobs,
                        console=console, ctx=ctx)
    if ctx.is_main:
        print_runs_table(docs, recipe, Console(highlight=False))


def print_runs_table(docs: list[dict], recipe, console: Console) -> None:
    from biasbench.trainer import run_paths

    task = docs[0]["task"] if docs else "classification"
    metric = "acc" if task == "classification" else "loss"
    fmt = (lambda v: f"{100 * v:.2f}%") if metric == "acc" else (lambda v: f"{v:.4f}")
    table = Table(title=f"{recipe.output.name}: {recipe.model.name}/{recipe.model.variant} on {recipe.data.name}")
    # Short headers: the table must fit an 80-column terminal.
    for col in ("seed", "status", "ep", f"test {metric}", "best val @ep", "test @ep", "params", "img/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for d in docs:
        final, best = d.get("final", {}), d.get("best", {})
        val_key = best.get("selected_by", f"test_{metric}")
        table.add_row(str(d["seed"]), d["status"], str(d["epochs_completed"]),
                      fmt(final[f"test_{metric}"]) if f"test_{metric}" in final else "-",
                      f"{fmt(best[val_key])} @{best['epoch']}" if best else "-",
                      fmt(best[f"test_{metric}"]) if best else "-",
                      f"{d['params']['total']:,}", f"{d['images_per_second']:,.0f}")
    console.print(table)
    if docs:
        wall, where = sum(d["wall_time_s"] for d in docs), run_paths(recipe, docs[0]["seed"]).dir.parent
        console.print(f"wall time {wall:.1f} s; results and checkpoints: {where}/seed*/")
