"""The one trainer: recipe -> model + data -> epochs -> checkpoint + results file.

`train_recipe` runs every replicate of a recipe (replicate r uses seed + r) and returns the
results documents; `train_run` is one replicate. Each epoch trains, then evaluates validation
and test sets (we record everything; `compare` chooses the epoch honestly), then writes a
checkpoint atomically. A run stopped after epoch k and resumed ends bit for bit like an
uninterrupted one on the CPU: data order and augmentation depend only on (seed, epoch), and the
checkpoint holds model, optimiser, scheduler, loss state and RNG states.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from biasbench.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from biasbench.data import DataBundle, build_data
from biasbench.data.loader import TensorLoader, make_eval_loader, make_train_loader
from biasbench.distributed import DistContext, wrap_model
from biasbench.env import environment
from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_json, ensure_dir
from biasbench.losses import Criterion
from biasbench.models import build_model, model_hooks
from biasbench.models.convert import conversion
from biasbench.optim import build_optimizer, build_scheduler
from biasbench.params import count_by_role
from biasbench.recipe import Recipe, from_dict
from biasbench.results import KIND, SCHEMA_VERSION, best_epoch


class Interrupted(Exception):
    """Ctrl-C during training: the checkpoint and an `interrupted` results file are on disk."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


@dataclass
class RunPaths:
    dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def results(self) -> Path:
        return self.dir / "results.json"


def run_paths(recipe: Recipe, seed: int) -> RunPaths:
    return RunPaths(Path(recipe.output.dir) / str(recipe.output.name) / f"seed{seed}")


# ---------------------------------------------------------------------------------------------
# Building the pieces of a run from a recipe (shared by train and eval).
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_for_recipe(recipe: Recipe, replicate: int, device: torch.device) -> tuple[DataBundle, torch.nn.Module]:
    bundle = build_data(recipe.data, replicate=replicate)
    model = build_model(recipe.model.name, recipe.model.variant, num_classes=bundle.num_outputs,
                        in_channels=bundle.input_shape[0], input_shape=bundle.input_shape,
                        variant_options=recipe.model.variant_options, **recipe.model.options)
    configure_parameters(model, recipe)
    return bundle, model.to(device)


def configure_parameters(model: torch.nn.Module, recipe: Recipe) -> None:
    """`train.weight_init` and `train.trainable` (bias-only learning, see biasbench.bias_only)."""
    from biasbench.bias_only import apply_trainable, init_weights

    try:
        init_weights(model, recipe.train.weight_init)
        apply_trainable(model, recipe.train.trainable)
    except ValueError as e:
        raise UserError(f"recipe key `train.trainable`: {e}") from None


def build_criterion(recipe: Recipe, bundle: DataBundle, model: torch.nn.Module) -> Criterion:
    hooks = model_hooks(model)  # stateful terms a variant attaches (ARR); build_model refused misfits
    return Criterion(bundle.task, recipe.train.label_smoothing, dict(hooks.loss_terms) if hooks else {})


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TensorLoader, criterion: Criterion) -> dict[str, float]:
    """Mean task loss and accuracy (classification) over a split. Labels feed no loss term."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    # A model whose inputs carry a group id (multi-task: the task) reports accuracy per group too.
    hooks = model_hooks(model)
    groups = hooks.metric_groups if hooks and criterion.task == "classification" else None
    group_hits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for x, y in loader:
        out = model(x)
        loss_sum += criterion.task_loss(out, y) * len(y)
        if criterion.task == "classification":
            correct += (out.argmax(1) == y).sum()
            if groups is not None:
                _add_group_hits(group_hits, *groups(x), out.argmax(1) == y)
        n += len(y)
    metrics = {"loss": loss_sum.item() / max(n, 1)}
    if criterion.task == "classification":
        metrics["acc"] = correct.item() / max(n, 1)
    for name, (hits, count) in group_hits.items():
        metrics[f"acc_{name}"] = hits.item() / max(count.item(), 1)
    return metrics


def _add_group_hits(sums: dict[str, tuple[torch.Tensor, torch.Tensor]], group: torch.Tensor, names: list[str],
                    hit: torch.Tensor) -> None:
    hits = torch.bincount(group, weights=hit.float(), minlength=len(names))
    counts = torch.bincount(group, minlength=len(names)).float()
    for i, name in enumerate(names):
        h, c = sums.get(name, (0.0, 0.0))
        sums[name] = (h + hits[i], c + counts[i])


# ---------------------------------------------------------------------------------------------
# One replicate.
# ---------------------------------------------------------------------------------------------


def train_run(recipe: Recipe, seed: int, replicate: int, device: torch.device, *, resume: bool = False,
              stop_after: int | None = None, console: Console | None = None,
              ctx: DistContext | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train one replicate; `stop_after` ends it resumably (status `interrupted`) after that epoch.

    With a `DistContext` of several ranks (torchrun), the ranks share each global batch. `fresh`
    (--overwrite) replaces an earlier run in the folder, once everything has been built: bad
    input never costs the earlier run its files."""
    console = console or Console(quiet=True)
    ctx = ctx or DistContext()
    paths = run_paths(recipe, seed)
    seed_everything(seed)
    bundle, model = build_for_recipe(recipe, replicate, device)
    converted = conversion(model)  # a timm: / torchvision: model: what convert did and left
    if converted is not None:
        console.print(converted.line())
    criterion = build_criterion(recipe, bundle, model).to(device)
    step_model = _lean(model, recipe, device, ctx)  # what the training step calls (DDP / compiled)
    train_loader = make_train_loader(bundle, recipe.data, recipe.train.batch_size, device, seed)
    eval_loaders = {name: make_eval_loader(bundle, split, recipe.data, recipe.train.eval_batch_size, device)
                    for name, split in (("val", bundle.val), ("test", bundle.test)) if split is not None}
    optimizer, l2 = build_optimizer(model, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.schedule, recipe.optim.lr, len(train_loader), recipe.train.epochs)
    if ctx.enabled and len(criterion.terms):
        # Each rank would update the running means from its shard alone: not what one process does.
        raise UserError(f"variant `{recipe.model.variant}` keeps per-class running means in its loss, which "
                        "data-parallel training does not synchronise yet; train it in one process")
    ensure_dir(paths.dir)  # only now: bad input above leaves no empty run folder behind
    if fresh and ctx.is_main:
        for stale in (paths.results, paths.checkpoint):
            stale.unlink(missing_ok=True)

    history: list[dict[str, Any]] = []
    start_epoch, train_time, train_samples, wall_before = 0, 0.0, 0, 0.0
    if resume and paths.checkpoint.exists():
        ckpt = load_checkpoint(paths.checkpoint)
        _check_same_experiment(paths.checkpoint, ckpt["recipe"], ckpt["seed"], recipe, seed)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        criterion.load_state_dict(ckpt["criterion"])
        set_rng_state(ckpt["rng"])
        history, start_epoch = list(ckpt["history"]), ckpt["epoch"]
        train_time, train_samples, wall_before = ckpt["train_time"], ckpt["train_samples"], ckpt["wall_time"]
        console.print(f"resuming {paths.dir} after epoch {start_epoch}")

    status = "completed"
    started = time.perf_counter()
    epochs = recipe.train.epochs
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:
        try:
            for epoch in range(start_epoch, epochs):
                if stop_after is not None and epoch >= stop_after:
                    status = "interrupted"
                    break
                task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=len(train_loader), rate="")
                lr = optimizer.param_groups[0]["lr"]  # the epoch's (first step's) learning rate
                t0 = time.perf_counter()
                train_metrics = _train_epoch(step_model, train_loader, epoch, criterion, optimizer, scheduler, l2,
                                             recipe.train, ctx, progress, task)
                dt_train = time.perf_counter() - t0
                train_time += dt_train
                train_samples += len(train_loader.y)
                progress.remove_task(task)
                if not math.isfinite(train_metrics["loss"]):
                    status = "diverged"
                    history.append(_epoch_row(epoch, lr, train_metrics, {}, dt_train))
                    console.print(f"[red]epoch {epoch + 1}: loss is {train_metrics['loss']}; run diverged[/red]")
                    break
                evals = {name: evaluate(model, loader, criterion) for name, loader in eval_loaders.items()}
                row = _epoch_row(epoch, lr, train_metrics, evals, dt_train)
                history.append(row)
                console.print(_epoch_line(row, epochs, len(train_loader.y) / dt_train))
                if recipe.output.checkpoint and ctx.is_main:
                    save_checkpoint(paths.checkpoint, {
                        "recipe": _comparable(recipe), "seed": seed, "replicate": replicate, "epoch": epoch + 1,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "criterion": criterion.state_dict(),
                        "rng": rng_state(), "history": history, "train_time": train_time,
                        "train_samples": train_samples,
                        "wall_time": wall_before + time.perf_counter() - started})
        except KeyboardInterrupt:
            status = "interrupted"
    wall = wall_before + time.perf_counter() - started
    doc = _results_doc(recipe, seed, replicate, status, history, bundle, model, device, wall,
                       train_samples / train_time if train_time > 0 else 0.0, ctx)
    if ctx.is_main:
        atomic_write_json(paths.results, doc)
    ctx.barrier()
    if status == "interrupted" and stop_after is None:
        raise Interrupted(paths.dir)
    return doc


def _lean(model: torch.nn.Module, recipe: Recipe, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    """The lean path's model transforms: channels_last, DDP across ranks, torch.compile."""
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = wrap_model(model, ctx, device)
    if recipe.train.compile:
        step_model = torch.compile(step_model)
    return step_model


def _train_epoch(model, loader, epoch, criterion, optimizer, scheduler, l2, cfg, ctx, progress, task):
    """One pass over the training data. Sums stay on the device: no host sync per step."""
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    autocast = (torch.autocast(loader.device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
                else contextlib.nullcontext())
    to_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if len(y) < ctx.world:  # a last batch smaller than the ranks: every rank skips it alike
            continue
        x, y, share = ctx.shard(x, y)
        if isinstance(x, torch.Tensor) and x.dim() == 4:  # (not a graph batch)
            x = x.contiguous(memory_format=to_format)
        with autocast:
            out = model(x)
            loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        (loss * share if share != 1.0 else loss).backward()
        l2.apply()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum.add_(loss.detach(), alpha=len(y))
        if criterion.task == "classification":
            correct += (out.detach().argmax(1) == y).sum()
        n += len(y)
        if not progress.disable:  # no per-step work for a bar nobody sees
            done = (step + 1) * loader.batch_size
            progress.update(task, advance=1, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} samples/s")
    loss_sum, correct, total = ctx.sum(loss_sum, correct, torch.tensor(n, device=loader.device))
    count = max(int(total.item()), 1)
    metrics = {"loss": loss_sum.item() / count}
    if criterion.task == "classification":
        metrics["acc"] = correct.item() / count
    return metrics


def _epoch_row(epoch, lr, train_metrics, evals, seconds) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 4)}
    row.update({f"train_{k}": v for k, v in train_metrics.items()})
    for split, metrics in evals.items():
        row.update({f"{split}_{k}": v for k, v in metrics.items()})
    return row


def _epoch_line(row: dict[str, Any], epochs: int, rate: float) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"loss {row['train_loss']:.4f}"]
    for split in ("train", "val", "test"):
        if f"{split}_acc" in row:
            parts.append(f"{split} acc {100 * row[f'{split}_acc']:.2f}%")
        elif split != "train" and f"{split}_loss" in row:
            parts.append(f"{split} mse {row[f'{split}_loss']:.4f}")
    parts.append(f"{rate:,.0f} samples/s")
    return " | ".join(parts)


def _comparable(recipe: Recipe) -> dict[str, Any]:
    """The recipe as recorded: everything but where it was read from and the smoke block."""
    d = recipe.to_dict()
    d.pop("source", None)
    d.pop("smoke", None)
    return d


def _check_same_experiment(path: Path, recorded: dict[str, Any], recorded_seed: int, recipe: Recipe,
                           seed: int) -> None:
    """--resume continues a run only with the experiment that wrote it (settings of speed or
    place, such as data.workers or output.dir, may change)."""
    from biasbench.recipe import experiment_identity

    old, new = experiment_identity(recorded), experiment_identity(_comparable(recipe))
    if old != new or recorded_seed != seed:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        what = f"recipe keys {', '.join(changed[:4])}" if changed else f"seed {recorded_seed}"
        raise UserError(f"`{path}` was written with other settings ({what} differ); resume with the same "
                        "recipe and overrides, pass --overwrite to start again, or choose another --out")


def describe_model(model: torch.nn.Module) -> dict[str, Any]:
    return {**count_by_role(model), "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _complexity(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """MACs and FLOPs per sample (biasbench.count), or None for a model the counter cannot trace."""
    from biasbench.count import complexity

    hooks = model_hooks(model)
    if hooks is not None and hooks.spec.inputs == "graphs":
        return {"error": "not counted: count runs one sample of a fixed shape, a graph model reads a whole graph"}
    try:
        return complexity(model, input_shape)
    except Exception as e:  # counting must never lose a finished run's results
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


def _results_doc(recipe, seed, replicate, status, history, bundle, model, device, wall, rate,
                 ctx: DistContext) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "name": recipe.output.name,
        "status": status,
        "seed": seed,
        "replicate": replicate,
        "recipe": _comparable(recipe),
        "recipe_path": recipe.source,
        "task": bundle.task,
        "epochs_completed": len(history),
        "history": history,
        "final": history[-1] if history else {},
        "best": best_epoch([h for h in history if "test_loss" in h], bundle.task),
        "params": describe_model(model),
        "complexity": _complexity(model, bundle.input_shape),
        **({"conversion": converted.to_dict()} if (converted := conversion(model)) else {}),
        "wall_time_s": round(wall, 3),
        "images_per_second": round(rate, 1),
        "data": bundle.describe(),
        "environment": {**environment(device), "world_size": ctx.world},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# All replicates of a recipe.
# ---------------------------------------------------------------------------------------------


def train_recipe(recipe: Recipe, device: torch.device, *, resume: bool = False, overwrite: bool = False,
                 stop_after: int | None = None, jobs: int = 1, console: Console | None = None,
                 ctx: DistContext | None = None) -> list[dict[str, Any]]:
    """Train every replicate (seed + r). `jobs` > 1 runs replicates in parallel processes."""
    console = console or Console(quiet=True)
    ctx = ctx or DistContext()
    todo, done = _plan_replicates(recipe, resume, overwrite, console)
    if jobs > 1 and len(todo) > 1:
        docs = done | _train_parallel(recipe, todo, device, resume, overwrite, stop_after, jobs, console)
    else:
        docs = dict(done)
        for r, seed in todo:
            console.rule(f"{recipe.output.name} · replicate {r + 1}/{recipe.train.replicates} · seed {seed}")
            docs[r] = train_run(recipe, seed, r, device, resume=resume, stop_after=stop_after, console=console,
                                ctx=ctx, fresh=overwrite)
    return [docs[r] for r in sorted(docs)]


def _plan_replicates(recipe, resume, overwrite, console) -> tuple[list[tuple[int, int]], dict[int, dict]]:
    """Check every replicate's folder before training any: (replicates to run, finished ones)."""
    from biasbench.results import load_results

    todo, done = [], {}
    for r in range(recipe.train.replicates):
        seed = recipe.train.seed + r
        paths = run_paths(recipe, seed)
        if paths.dir.exists() and not paths.dir.is_dir():
            raise UserError(f"output path `{paths.dir}` is a file; choose another folder with --out")
        if (paths.results.exists() or paths.checkpoint.exists()) and not (resume or overwrite):
            raise UserError(f"`{paths.dir}` already holds a run; pass --resume to continue it, --overwrite "
                            "to start again, or --out to write elsewhere")
        if resume and paths.results.exists():
            previous = load_results(paths.results)
            _check_same_experiment(paths.results, previous["recipe"], previous["seed"], recipe, seed)
            if previous["status"] in ("completed", "diverged"):
                console.print(f"{paths.dir}: already {previous['status']}, skipped")
                done[r] = previous
                continue
        if resume and paths.checkpoint.exists():
            ckpt = load_checkpoint(paths.checkpoint)
            _check_same_experiment(paths.checkpoint, ckpt["recipe"], ckpt["seed"], recipe, seed)
        todo.append((r, seed))
    return todo, done


def _replicate_worker(recipe: Recipe, r: int, seed: int, device: str, resume: bool, fresh: bool,
                      stop_after: int | None, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    try:
        return train_run(recipe, seed, r, torch.device(device), resume=resume, stop_after=stop_after, fresh=fresh)
    except Interrupted:
        return json.loads(run_paths(recipe, seed).results.read_text())


def _train_parallel(recipe, todo, device, resume, fresh, stop_after, jobs, console) -> dict[int, dict]:
    """Replicates as separate processes; CPU threads are split between them."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    threads = max(1, (os.cpu_count() or 1) // jobs)
    console.print(f"training {len(todo)} replicates, {jobs} at a time ({threads} threads each)")
    docs: dict[int, dict] = {}
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_replicate_worker, recipe, r, seed, str(device), resume, fresh, stop_after, threads): r
                   for r, seed in todo}
        try:
            for fut in cf.as_completed(futures):
                doc = fut.result()
                docs[futures[fut]] = doc
                console.print(f"seed {doc['seed']}: {doc['status']} after {doc['epochs_completed']} epochs")
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise Interrupted(run_paths(recipe, todo[0][1]).dir.parent) from None
    if any(d["status"] == "interrupted" for d in docs.values()) and stop_after is None:
        raise Interrupted(run_paths(recipe, todo[0][1]).dir.parent)
    return docs


def recipe_from_checkpoint(ckpt: dict[str, Any], data_root: str | None = None) -> Recipe:
    recipe = from_dict(ckpt["recipe"])
    if data_root is not None:
        recipe = replace(recipe, data=replace(recipe.data, root=data_root))
    return recipe
