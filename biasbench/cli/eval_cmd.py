"""`biasbench eval`: evaluate a checkpoint on a split of the data it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biasbench.cli.app import app
from biasbench.env import resolve_device
from biasbench.errors import UserError
from biasbench.termtable import print_table


@app.command("eval", epilog="Examples:\n\n  biasbench eval runs/quickstart/seed0/checkpoint.pt\n\n"
                            "  biasbench eval runs/quickstart/seed0 --which best   (best validation)\n\n"
                            "  biasbench eval CHECKPOINT --split val --data-root /data/cifar --json")
def eval_(
    checkpoint: Path = typer.Argument(..., help="A checkpoint.pt written by `biasbench train`, or its run folder."),
    which: str = typer.Option("last", "--which", help="In a run folder: last (checkpoint.pt) or best "
                              "(checkpoint_best.pt, the epoch with the best validation metric)."),
    split: str = typer.Option("test", "--split", help="test or val."),
    data_root: str | None = typer.Option(None, "--data-root", help="Where the data set lives now (data.root)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a checkpoint: loss and accuracy (or MSE) on the test or validation split."""
    from biasbench.checkpoint import load_checkpoint, recipe_from_checkpoint
    from biasbench.data.loader import make_eval_loader
    from biasbench.trainer import build_criterion, build_for_recipe, evaluate

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got `{split}`")
    checkpoint = _pick(checkpoint, which)
    ckpt = load_checkpoint(checkpoint)
    recipe = recipe_from_checkpoint(ckpt, data_root)
    dev = resolve_device(device)
    bundle, model = build_for_recipe(recipe, ckpt["replicate"], dev)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise UserError(f"`{checkpoint}` does not match the model its recipe builds (edited by hand?)") from None
    data = bundle.test if split == "test" else bundle.val
    if data is None:
        raise UserError("this run has no validation split (data.val_fraction was 0); use --split test")
    metrics = evaluate(model, make_eval_loader(bundle, data, recipe.data, recipe.train.eval_batch_size, dev),
                       build_criterion(recipe, bundle, model).to(dev))
    batch = ckpt["partial"]["loader"]["batch"] if ckpt.get("partial") else None  # a mid-epoch checkpoint
    out = {"checkpoint": str(checkpoint), "split": split, "epoch": ckpt["epoch"], "batch": batch, "samples": len(data),
           **metrics}
    if as_json:
        print(json.dumps(out, indent=1))
        return
    when = f"epoch {ckpt['epoch']}" + (f" and {batch} batches of epoch {ckpt['epoch'] + 1}" if batch else "")
    title = f"{recipe.output.name}, seed {ckpt['seed']}, {when} ({checkpoint.name}), {split} split"
    rows = [["samples", str(len(data))]] + [[k, f"{100 * v:.2f}%" if k.startswith("acc") else f"{v:.4f}"]
                                           for k, v in metrics.items()]
    print_table(title, ["metric", "value"], rows)  # one row per metric: fits 80


def _pick(path: Path, which: str) -> Path:
    """The checkpoint file: `path` itself, or in a run folder the last or the best one."""
    from biasbench.runfolder import RunPaths

    if which not in ("last", "best"):
        raise UserError(f"--which must be last or best, got `{which}`")
    folder = RunPaths(path) if path.is_dir() else RunPaths(path.parent) if path.name == "checkpoint.pt" else None
    if folder is None:
        if which == "best":
            raise UserError(f"--which best picks a file in a run folder; give the folder `{path.parent}` instead "
                            f"of `{path}`")
        return path
    chosen = folder.best_checkpoint if which == "best" else folder.checkpoint
    if which == "best" and not chosen.exists() and folder.checkpoint.exists():
        raise UserError(f"`{folder.dir}` has no checkpoint_best.pt (written since results schema 2, and only "
                        "with output.checkpoint: true); use --which last")
    return chosen
