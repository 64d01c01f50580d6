"""The one trainer: recipe -> run -> epochs -> checkpoint, results and logs.

`build_run` assembles everything a replicate trains with (data, model, criterion, optimiser,
schedule, loaders, precision) into one `Run`. `train_run` is the loop, read top to bottom: claim
the run folder (lock), decide how to start (new, resume, skip), restore, then per epoch train,
evaluate validation and test sets (we record everything; `compare` chooses the epoch honestly),
and record (history, test predictions, metrics.csv, TensorBoard, checkpoint, best checkpoint);
at the end, or when stopped, the results file and predictions.npz. A run stopped after epoch k
and resumed ends bit for bit like an uninterrupted one on the CPU: data order and augmentation
depend only on (seed, epoch), and the checkpoint (`biasbench.checkpoint`) holds every part's
state and the RNG states. `train_recipe` runs every replicate (seed + r), here or in worker
processes that end with their parent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from biasbench.checkpoint import TrainingState, load_checkpoint, restore, save_checkpoint
from biasbench.data import DataBundle, build_data
from biasbench.data.loader import TensorLoader, make_eval_loader, make_train_loader
from biasbench.distributed import DistContext, wrap_model
from biasbench.env import environment
from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_json, check_writable, ensure_dir, hold_lock, refuse_if_locked, remove_orphans
from biasbench.losses import Criterion
from biasbench.models import build_model, model_hooks
from biasbench.models.convert import conversion
from biasbench.optim import L2Penalty, build_optimizer, build_scheduler
from biasbench.params import count_by_role
from biasbench.predictions import PredictionLog, describe, save_predictions
from biasbench.recipe import Recipe
from biasbench.results import KIND, SCHEMA_VERSION, best_epoch
from biasbench.runfolder import RunPaths, Start, inspect_start, run_paths
from biasbench.runlog import TensorBoardLog, epoch_line, say, tensorboard_missing, write_metrics_csv
from biasbench.stopping import Interrupted, signal_name, signal_of

__all__ = ["Interrupted", "Run", "build_run", "train_run", "train_recipe", "evaluate", "run_paths"]


# ---------------------------------------------------------------------------------------------
# Assembling a run (shared with eval).
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


def resolve_precision(amp: str, device: torch.device) -> tuple[str, str | None]:
    """(precision trained in: fp32 | bf16 | fp16, the line saying why it differs from `amp`)."""
    if amp == "fp16" and device.type != "cuda":
        return "bf16", ("train.amp fp16 needs CUDA (its gradient scaler); training in bf16 autocast on the "
                        f"{device.type.upper()} instead")
    return {"none": "fp32"}.get(amp, amp), None


@dataclass
class Run:
    """Everything one replicate trains with, assembled once by `build_run`."""

    recipe: Recipe
    seed: int
    replicate: int
    device: torch.device
    ctx: DistContext
    paths: RunPaths
    bundle: DataBundle
    model: torch.nn.Module  # the plain module: evaluation, checkpoints, counting
    step_model: torch.nn.Module  # what a training step calls (channels_last, DDP, compiled)
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    l2: L2Penalty
    train_loader: Any  # TensorLoader or ImageLoader (biasbench.data.loader.make_train_loader)
    eval_loaders: dict[str, Any]  # TensorLoader or FileEvalLoader (biasbench.data.loader.make_eval_loader)
    precision: str  # fp32, bf16 or fp16: what autocast runs in
    precision_note: str | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA only
    # (seconds, samples) of this process's first training step: first-call work (a backward
    # kernel's JIT build, allocator growth, oneDNN plans, torch.compile) that samples per second
    # leaves out. None until it has run.
    first_step: tuple[float, int] | None = None

    def parts(self) -> dict[str, Any]:
        """The stateful parts a checkpoint saves (see biasbench.checkpoint.PARTS)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "criterion": self.criterion, "scaler": self.scaler}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def new_state(self) -> TrainingState:
        return TrainingState(predictions=PredictionLog(self.bundle.task, num_classes=self.bundle.num_outputs))


def build_run(recipe: Recipe, seed: int, replicate: int, device: torch.device, ctx: DistContext | None = None) -> Run:
    """Data, model, criterion, optimiser, schedule, loaders and precision for one replicate.
    Bad input fails here, before anything is written."""
    ctx = ctx or DistContext()
    if recipe.output.tensorboard and (why := tensorboard_missing()):
        raise UserError(why)
    seed_everything(seed)
    bundle, model = build_for_recipe(recipe, replicate, device)
    if recipe.train.channels_last and len(bundle.input_shape) != 3:  # a no-op there: refuse, do not ignore
        raise UserError(f"train.channels_last is a memory format for images (C, H, W); data set "
                        f"`{recipe.data.name}` gives inputs of shape {tuple(bundle.input_shape)}: drop it")
    criterion = build_criterion(recipe, bundle, model).to(device)
    if ctx.enabled and len(criterion.terms):
        # Each rank would update the running means from its shard alone: not what one process does.
        raise UserError(f"variant `{recipe.model.variant}` keeps per-class running means in its loss, which "
                        "data-parallel training does not synchronise yet; train it in one process")
    train_loader = make_train_loader(bundle, recipe.data, recipe.train.batch_size, device, seed)
    optimizer, l2 = build_optimizer(model, recipe.optim)
    precision, note = resolve_precision(recipe.train.amp, device)
    return Run(
        recipe=recipe, seed=seed, replicate=replicate, device=device, ctx=ctx, paths=run_paths(recipe, seed),
        bundle=bundle, model=model, step_model=_lean(model, recipe, device, ctx), criterion=criterion,
        optimizer=optimizer, l2=l2,
        scheduler=build_scheduler(optimizer, recipe.schedule, recipe.optim.lr, len(train_loader), recipe.train.epochs),
        train_loader=train_loader,
        eval_loaders={name: make_eval_loader(bundle, split, recipe.data, recipe.train.eval_batch_size, device)
                      for name, split in (("val", bundle.val), ("test", bundle.test)) if split is not None},
        precision=precision, precision_note=note,
        scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None)


def _lean(model: torch.nn.Module, recipe: Recipe, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    """The lean path's model transforms: channels_last, DDP across ranks, torch.compile."""
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = wrap_model(model, ctx, device)
    if recipe.train.compile:
        step_model = torch.compile(step_model)
    return step_model


# ---------------------------------------------------------------------------------------------
# One replicate.
# ---------------------------------------------------------------------------------------------


def train_run(recipe: Recipe, seed: int, replicate: int, device: torch.device, *, resume: bool = False,
              stop_after: int | None = None, console: Console | None = None, ctx: DistContext | None = None,
              fresh: bool = False, label: str = "") -> dict[str, Any]:
    """Train one replicate and return its results document.

    `resume` continues from the folder's checkpoint (or skips a finished run); `fresh`
    (--overwrite) replaces an earlier run once everything has been built, so bad input never
    costs it its files. `stop_after` ends the run resumably (status `interrupted`) after that
    epoch. A stop signal (see biasbench.stopping) ends it the same way and raises Interrupted.
    `label` prefixes each epoch line (the seed, when replicates train side by side)."""
    console = console or Console(quiet=True)
    run = build_run(recipe, seed, replicate, device, ctx)
    paths, ctx, epochs = run.paths, run.ctx, recipe.train.epochs
    with _claim_folder(run, resume, fresh, console) as start:
        if start.action == "skip":
            return start.results
        state = restore(load_checkpoint(paths.checkpoint), run.parts()) if start.action == "resume" else run.new_state()
        if run.precision_note:
            say(console, run.precision_note)
        if (converted := conversion(run.model)) is not None:  # a timm: / torchvision: model
            say(console, converted.line())
        warmup_s = warm_up(run, console)
        tensorboard = TensorBoardLog(paths.tensorboard, state.epoch) if recipe.output.tensorboard and ctx.is_main \
            else None
        status, stopped_by, signum = "completed", None, None
        saved_epoch = state.epoch if start.action == "resume" else None  # what checkpoint.pt holds
        wall_before, started = state.wall_time, time.perf_counter()
        try:
            with _progress_bar(console, (epochs - state.epoch) * len(run.train_loader), state.epoch, epochs) as bar:
                for epoch in range(state.epoch, epochs):
                    if stop_after is not None and epoch >= stop_after:
                        status, stopped_by = "interrupted", "--stop-after"
                        break
                    row, rate = _train_and_evaluate(run, state, epoch, bar)
                    if not math.isfinite(row["train_loss"]):
                        status = "diverged"
                        say(console, f"epoch {epoch + 1}: loss is {row['train_loss']}; run diverged", "red")
                        break
                    say(console, epoch_line(row, epochs, rate, label))
                    if _record_epoch(run, state, row, tensorboard, wall_before + time.perf_counter() - started):
                        saved_epoch = state.epoch
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGUSR1 (biasbench.stopping)
            signum = signal_of(stop)
            status, stopped_by = "interrupted", signal_name(signum)
        finally:
            if tensorboard is not None:
                tensorboard.close()
        wall = wall_before + time.perf_counter() - started
        doc = _results_doc(run, status, stopped_by, state, wall, warmup_s, saved_epoch)
        if ctx.is_main:
            if state.predictions.epochs:
                save_predictions(paths.predictions, state.predictions.freeze())
            atomic_write_json(paths.results, doc)
        ctx.barrier()
    if signum is not None:
        raise Interrupted(paths.dir, signum, saved_epoch, doc)
    return doc


@contextlib.contextmanager
def _claim_folder(run: Run, resume: bool, fresh: bool, console: Console):
    """Create the run folder, check it is writable, lock it for this process (rank 0), decide
    how the run starts (under the lock), clear what a restart replaces and remove temporary
    files a killed run left. Yields the `Start`; the lock is held until the block ends."""
    paths, ctx = run.paths, run.ctx
    if not ctx.is_main:  # rank 0 prepares the folder; the others read the same decision
        ctx.barrier()
        yield inspect_start(paths, run.recipe, run.seed, resume=resume, overwrite=False)
        return
    ensure_dir(paths.dir)  # only now: bad input (caught while building) leaves no empty run folder
    check_writable(paths.dir)
    with hold_lock(paths.lock, f"run folder `{paths.dir}`"):
        start = inspect_start(paths, run.recipe, run.seed, resume=resume, overwrite=fresh)
        if start.note and start.action != "skip":
            say(console, start.note)
        orphans = remove_orphans(paths.dir, [p.name for p in paths.written_files()])
        if orphans:
            say(console, f"{paths.dir}: removed {len(orphans)} temporary file(s) left by a killed run")
        if start.action == "restart":
            _clear(paths)
        ctx.barrier()
        yield start


def _clear(paths: RunPaths) -> None:
    import shutil

    for stale in paths.written_files():
        stale.unlink(missing_ok=True)
    shutil.rmtree(paths.tensorboard, ignore_errors=True)


def _train_and_evaluate(run: Run, state: TrainingState, epoch: int, bar: Progress | None
                        ) -> tuple[dict[str, Any], float]:
    """One epoch: train, then (unless the loss diverged) evaluate validation and test sets and
    add the epoch to the history and the test predictions. Returns the history row and the
    epoch's training samples per second (the process's first step left out)."""
    lr = run.optimizer.param_groups[0]["lr"]  # the epoch's (first step's) learning rate
    warming = run.first_step is None
    t0 = time.perf_counter()
    train_metrics = _train_epoch(run, epoch, bar, f"epoch {epoch + 1}/{run.recipe.train.epochs}")
    seconds = time.perf_counter() - t0
    counted_s, counted_n = seconds, len(run.train_loader.y)
    if warming and run.first_step is not None:  # this epoch ran the first step
        counted_s, counted_n = counted_s - run.first_step[0], counted_n - run.first_step[1]
    state.train_time += counted_s
    state.train_samples += counted_n
    rate = counted_n / counted_s if counted_s > 0 else 0.0
    if not math.isfinite(train_metrics["loss"]):
        state.history.append(_epoch_row(epoch, lr, train_metrics, {}, seconds))
        return state.history[-1], rate
    kept: list[torch.Tensor] = []
    evals = {name: evaluate(run.model, loader, run.criterion, keep=kept if name == "test" else None)
             for name, loader in run.eval_loaders.items()}
    per_example = torch.cat(kept)
    state.history.append(_epoch_row(epoch, lr, train_metrics, evals, seconds))
    state.predictions.add(epoch + 1, per_example, run.eval_loaders["test"].y,
                          example_loss=per_example if run.bundle.task == "regression" else None)
    state.epoch = epoch + 1
    return state.history[-1], rate


def _record_epoch(run: Run, state: TrainingState, row: dict[str, Any], tensorboard: TensorBoardLog | None,
                  wall: float) -> bool:
    """After an epoch: metrics.csv, TensorBoard, the checkpoint, and the best-validation copy
    when this epoch is the best so far (rank 0 only). True when a checkpoint was written."""
    if not run.ctx.is_main:
        return False
    paths = run.paths
    write_metrics_csv(paths.metrics_csv, state.history)
    if tensorboard is not None:
        tensorboard.add(row)
    if run.recipe.output.checkpoint:
        best = best_epoch(_evaluated(state.history), run.bundle.task)
        save_checkpoint(paths.checkpoint, recipe=_recorded_recipe(run.recipe), seed=run.seed,
                        replicate=run.replicate, state=state, parts=run.parts(), wall_time=wall,
                        best=paths.best_checkpoint if best.get("epoch") == row["epoch"] else None)
        return True
    return False


def _evaluated(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [h for h in history if "test_loss" in h]  # a diverged epoch has no evaluation


# ---------------------------------------------------------------------------------------------
# The pieces of an epoch.
# ---------------------------------------------------------------------------------------------


def _train_epoch(run: Run, epoch: int, bar: Progress | None, description: str) -> dict[str, float]:
    """One pass over the training data. Sums stay on the device: no host sync per step."""
    model, loader, criterion, ctx = run.step_model, run.train_loader, run.criterion, run.ctx
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    to_format = torch.channels_last if run.recipe.train.channels_last else torch.contiguous_format
    time_first = run.first_step is None and len(loader) > 1  # (a one-step epoch: nothing else to count)
    t0 = time.perf_counter()
    if bar is not None:
        bar.update(bar.task_ids[0], description=description)
    for x, y in loader:
        if len(y) < ctx.world:  # a last batch smaller than the ranks: every rank skips it alike
            continue
        batch = len(y)  # (all ranks together)
        x, y, share = ctx.shard(x, y)
        if isinstance(x, torch.Tensor) and x.dim() == 4:  # (not a graph batch)
            x = x.contiguous(memory_format=to_format)
        with run.autocast():
            out = model(x)
            loss = criterion(out, y)
        _optimizer_step(run, loss * share if share != 1.0 else loss)
        loss_sum.add_(loss.detach(), alpha=len(y))
        if criterion.task == "classification":
            correct += (out.detach().argmax(1) == y).sum()
        n += len(y)
        if time_first:
            _end_first_step(run, t0, batch)
            time_first = False
        if bar is not None:  # no per-step work for a bar nobody sees
            rate = n * ctx.world / max(time.perf_counter() - t0, 1e-9)
            bar.update(bar.task_ids[0], advance=1, rate=f"{rate:,.0f}/s")
    loss_sum, correct, total = ctx.sum(loss_sum, correct, torch.tensor(n, device=loader.device))
    count = max(int(total.item()), 1)
    metrics = {"loss": loss_sum.item() / count}
    if criterion.task == "classification":
        metrics["acc"] = correct.item() / count
    return metrics


def _end_first_step(run: Run, t0: float, samples: int) -> None:
    """Record the first step's time, once its queued device work has finished (one sync)."""
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    run.first_step = (time.perf_counter() - t0, samples)


def _optimizer_step(run: Run, loss: torch.Tensor) -> None:
    """Backward, L2 penalty, clipping, optimiser and schedule step; through the gradient scaler
    with fp16, unscaling first so that L2 and clipping act on the true gradients."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        loss.backward()
    else:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    run.l2.apply()
    if run.recipe.train.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.recipe.train.grad_clip)
    if run.scaler is None:
        run.optimizer.step()
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.scheduler.step()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TensorLoader, criterion: Criterion,
             keep: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Mean task loss and accuracy (classification) over a split. Labels feed no loss term.
    `keep`: a list that receives, per batch in order, the predicted classes (classification) or
    the per-example losses (regression): the run's test predictions."""
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
            pred = out.argmax(1)
            correct += (pred == y).sum()
            if groups is not None:
                _add_group_hits(group_hits, *groups(x), pred == y)
            if keep is not None:
                keep.append(pred)
        elif keep is not None:
            keep.append(criterion.example_loss(out, y))
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


def _epoch_row(epoch, lr, train_metrics, evals, seconds) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 4)}
    row.update({f"train_{k}": v for k, v in train_metrics.items()})
    for split, metrics in evals.items():
        row.update({f"{split}_{k}": v for k, v in metrics.items()})
    return row


def _progress_bar(console: Console, total_steps: int, done: int, epochs: int
                  ) -> contextlib.AbstractContextManager[Progress | None]:
    """A transient bar over the whole run's steps, with rate, elapsed time and ETA; None (and no
    per-step work) when the console is not a terminal."""
    if not console.is_terminal or console.quiet:
        return contextlib.nullcontext(None)
    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), TaskProgressColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   console=console, transient=True)
    bar.add_task(f"epoch {done + 1}/{epochs}", total=total_steps, rate="")
    return bar


def warm_up(run: Run, console: Console) -> float:
    """Build the fused kernels a model's DAC or RAA layers call before the clock starts: the first
    run on a machine compiles them (10-20 s each on the CPU), which must not count as training
    time. One forward pass in eval mode on two test examples, RNG untouched. Returns the seconds
    it took."""
    from biasbench.layers.dac import DACConv2d, DACLinear
    from biasbench.layers.raa import RAA, RAA2d

    modules = list(run.model.modules())
    kinds = ["DAC"] * any(isinstance(m, (DACConv2d, DACLinear)) for m in modules) + \
        ["RAA"] * (run.device.type == "cpu" and any(isinstance(m, (RAA, RAA2d)) for m in modules))
    if not kinds:  # (RAA has no CUDA kernel: nothing to build there)
        return 0.0
    where = "Triton" if run.device.type == "cuda" else "C++"
    say(console, f"{' and '.join(kinds)} layers: building the fused {where} kernels before timing (the first "
                 "run on a machine compiles them, 10-20 s each; later runs load them from the cache)")
    t0 = time.perf_counter()
    x = next(iter(run.eval_loaders["test"]))[0][:2]  # whatever loader the split has: its first batch
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []), torch.no_grad():
        run.model.eval()
        run.model(x)
    seconds = time.perf_counter() - t0
    if seconds > 1.0:
        say(console, f"kernels ready after {seconds:.1f} s (not counted in samples per second)")
    return seconds


# ---------------------------------------------------------------------------------------------
# The results document.
# ---------------------------------------------------------------------------------------------


def _recorded_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as recorded: everything but where it was read from and the smoke block."""
    d = recipe.to_dict()
    d.pop("source", None)
    d.pop("smoke", None)
    return d


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


def _results_doc(run: Run, status: str, stopped_by: str | None, state: TrainingState, wall: float,
                 warmup_s: float, checkpoint_epoch: int | None) -> dict[str, Any]:
    history = state.history
    rate = state.train_samples / state.train_time if state.train_time > 0 else 0.0
    precision = {"precision": run.precision, **({"precision_note": run.precision_note} if run.precision_note else {})}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "name": run.recipe.output.name,
        "status": status,
        "interrupted_by": stopped_by,
        "checkpoint_epoch": checkpoint_epoch,
        "seed": run.seed,
        "replicate": run.replicate,
        "recipe": _recorded_recipe(run.recipe),
        "recipe_path": run.recipe.source,
        "task": run.bundle.task,
        "epochs_completed": len(history),
        "history": history,
        "final": history[-1] if history else {},
        "best": best_epoch(_evaluated(history), run.bundle.task),
        "params": describe_model(run.model),
        "complexity": _complexity(run.model, run.bundle.input_shape),
        **({"conversion": converted.to_dict()} if (converted := conversion(run.model)) else {}),
        "wall_time_s": round(wall, 3),
        "images_per_second": round(rate, 1),
        "warmup_s": round(warmup_s + (run.first_step[0] if run.first_step else 0.0), 3),
        "predictions": describe(state.predictions.freeze()) if state.predictions.epochs else None,
        "data": run.bundle.describe(),
        "environment": {**environment(run.device), "world_size": run.ctx.world, **precision},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# All replicates of a recipe.
# ---------------------------------------------------------------------------------------------


def train_recipe(recipe: Recipe, device: torch.device, *, resume: bool = False, overwrite: bool = False,
                 stop_after: int | None = None, jobs: int = 1, threads: int | None = None,
                 console: Console | None = None, ctx: DistContext | None = None) -> list[dict[str, Any]]:
    """Train every replicate (seed + r). `jobs` > 1 runs replicates in parallel processes, with
    `threads` each (None: the cores shared out)."""
    console = console or Console(quiet=True)
    ctx = ctx or DistContext()
    todo, done = plan_replicates(recipe, resume, overwrite, console, check=ctx.is_main)
    if jobs > 1 and len(todo) > 1:
        from biasbench.replicates import train_parallel

        return _in_order(done | train_parallel(recipe, todo, device, resume=resume, fresh=overwrite,
                                               stop_after=stop_after, jobs=jobs, threads=threads,
                                               console=console))
    docs = dict(done)
    for r, seed in todo:
        heading = f"{recipe.output.name}: replicate {r + 1}/{recipe.train.replicates}, seed {seed}"
        console.rule(heading) if console.is_terminal else say(console, heading)
        docs[r] = train_run(recipe, seed, r, device, resume=resume, stop_after=stop_after, console=console,
                            ctx=ctx, fresh=overwrite)
    return _in_order(docs)


def _in_order(docs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [docs[r] for r in sorted(docs)]


def plan_replicates(recipe: Recipe, resume: bool, overwrite: bool, console: Console, check: bool = True
                    ) -> tuple[list[tuple[int, int]], dict[int, dict[str, Any]]]:
    """Check every replicate's folder before training any: (replicates to run, finished ones).
    Refuses in one line what `train_run` would refuse (a folder in use, a run of another
    experiment, an unwritable place), so that replicate 3 does not fail after 1 and 2 trained."""
    todo, done = [], {}
    for r in range(recipe.train.replicates):
        seed = recipe.train.seed + r
        paths = run_paths(recipe, seed)
        if check:
            check_writable(paths.dir)
            refuse_if_locked(paths.lock, f"run folder `{paths.dir}`")
        start: Start = inspect_start(paths, recipe, seed, resume=resume, overwrite=overwrite)
        if start.action == "skip":
            say(console, start.note)
            done[r] = start.results
        else:
            todo.append((r, seed))
    return todo, done
