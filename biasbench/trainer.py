"""The one trainer: recipe -> run -> epochs -> checkpoint, results and logs.

`build_run` assembles everything a replicate trains with (data, model, criterion, optimiser,
schedule, loaders, precision) into one `Run`. `train_run` is the loop, read top to bottom: claim
the run folder (lock), decide how to start (new, resume, skip), restore, then per epoch train,
evaluate validation and test sets (we record everything; `compare` chooses the epoch honestly),
and record (history, test predictions, metrics.csv, TensorBoard, checkpoint, best checkpoint);
at the end, or when stopped, the results file and predictions.npz. A run stopped after epoch k
and resumed ends bit for bit like an uninterrupted one on the CPU: data order and augmentation
depend only on (seed, epoch), and the checkpoint (`biasbench.checkpoint`) holds every part's
state and the RNG states; with `output.checkpoint_every` the same holds from within an epoch
(the loader's position and the epoch's running sums are saved too). An optimiser step takes
`train.accumulate` batches; `train.ema` keeps an averaged copy evaluated beside the weights;
`train.early_stop` ends a run from its history (docs/long_runs.md). `train_recipe` runs every
replicate (seed + r), here or in worker processes that end with their parent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from biasbench.checkpoint import TrainingState, load_checkpoint, restore, save_checkpoint
from biasbench.data import DataBundle, build_data
from biasbench.data.loader import TensorLoader, make_eval_loader, make_train_loader
from biasbench.distributed import DistContext, wrap_model
from biasbench.early_stop import early_stop_due, needs
from biasbench.ema import ModelEma
from biasbench.env import environment, peak_memory_mb, reset_peak_memory
from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_json, check_writable, ensure_dir, hold_lock, refuse_if_locked, remove_orphans
from biasbench.layers.contract import kernels_to_warm
from biasbench.loggers import RunInfo, RunLoggers, check_loggers
from biasbench.losses import Criterion
from biasbench.models import build_model, model_hooks
from biasbench.models.convert import conversion
from biasbench.optim import L2Penalty, build_optimizer, build_scheduler
from biasbench.params import count_by_role
from biasbench.predictions import PredictionLog, describe, save_predictions
from biasbench.recipe import Recipe, parse_every
from biasbench.replicates import train_parallel
from biasbench.results import KIND, SCHEMA_VERSION, best_epoch
from biasbench.runfolder import RunPaths, Start, inspect_start, run_paths
from biasbench.runlog import epoch_line, say
from biasbench.stopping import Interrupted, signal_name, signal_of

__all__ = ["Interrupted", "Run", "build_run", "train_run", "train_recipe", "evaluate", "run_paths"]


# ---------------------------------------------------------------------------------------------
# Assembling a run (shared with eval).
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_for_recipe(recipe: Recipe, replicate: int, device: torch.device) -> tuple[DataBundle, torch.nn.Module]:
    from biasbench.memory import build_within_memory

    bundle = build_data(recipe.data, replicate=replicate)
    model = build_within_memory(
        lambda: build_model(recipe.model.name, recipe.model.variant, num_classes=bundle.num_outputs,
                            in_channels=bundle.input_shape[0], input_shape=bundle.input_shape,
                            variant_options=recipe.model.variant_options, **recipe.model.options),
        device, f"model `{recipe.model.name}` ({recipe.model.variant}) with {recipe.model.options or 'its defaults'}")
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
    ema: ModelEma | None = None  # train.ema
    # (seconds, samples) of this process's first training step: first-call work (a backward
    # kernel's JIT build, allocator growth, oneDNN plans, torch.compile) that samples per second
    # leaves out. None until it has run.
    first_step: tuple[float, int] | None = None

    def parts(self) -> dict[str, Any]:
        """The stateful parts a checkpoint saves (see biasbench.checkpoint.PARTS)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "criterion": self.criterion, "scaler": self.scaler, "ema": self.ema}

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
    check_loggers(recipe.output.loggers)
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
    if why := needs(recipe.train.early_stop, bundle.val is not None, bundle.task):
        raise UserError(why)
    train_loader = make_train_loader(bundle, recipe.data, recipe.train.batch_size, device, seed)
    optimizer, l2 = build_optimizer(model, recipe.optim)
    steps_per_epoch = math.ceil(len(train_loader) / recipe.train.accumulate)  # optimiser steps
    precision, note = resolve_precision(recipe.train.amp, device)
    return Run(
        recipe=recipe, seed=seed, replicate=replicate, device=device, ctx=ctx, paths=run_paths(recipe, seed),
        bundle=bundle, model=model, step_model=_lean(model, recipe, device, ctx), criterion=criterion,
        optimizer=optimizer, l2=l2,
        scheduler=build_scheduler(optimizer, recipe.schedule, recipe.optim.lr, steps_per_epoch, recipe.train.epochs),
        train_loader=train_loader,
        eval_loaders={name: make_eval_loader(bundle, split, recipe.data, recipe.train.eval_batch_size, device)
                      for name, split in (("val", bundle.val), ("test", bundle.test)) if split is not None},
        precision=precision, precision_note=note,
        scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None,
        ema=ModelEma(model, recipe.train.ema.decay) if recipe.train.ema is not None else None)


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
        state = restore(_same_threads(load_checkpoint(paths.checkpoint), paths.checkpoint, device), run.parts()) \
            if start.action == "resume" else run.new_state()
        if run.precision_note:
            say(console, run.precision_note)
        if (converted := conversion(run.model)) is not None:  # a timm: / torchvision: model
            say(console, converted.line())
        reset_peak_memory(run.device)
        warmup_s = warm_up(run, console)
        loggers = _open_loggers(run, state, fresh=start.action != "resume") if ctx.is_main else None
        status, stopped_by, signum, early = "completed", None, None, None
        saved_epoch = state.epoch if start.action == "resume" else None  # what checkpoint.pt holds
        wall_before, started = state.wall_time, time.perf_counter()

        def save_within_epoch() -> None:  # output.checkpoint_every: rank 0 writes, after a step
            nonlocal saved_epoch
            _save(run, state, wall_before + time.perf_counter() - started, best=False)
            saved_epoch = state.epoch

        within = WithinEpoch.of(recipe, save_within_epoch)
        try:
            with _progress_bar(console, (epochs - state.epoch) * len(run.train_loader), state.epoch, epochs) as bar:
                for epoch in range(state.epoch, epochs):
                    if (early := early_stop_due(state.history, recipe.train.early_stop)) is not None:
                        say(console, _early_stop_line(early))
                        break
                    if stop_after is not None and epoch >= stop_after:
                        status, stopped_by = "interrupted", "--stop-after"
                        break
                    row, rate = _train_and_evaluate(run, state, epoch, bar, within)
                    if not math.isfinite(row["train_loss"]):
                        status = "diverged"
                        say(console, f"epoch {epoch + 1}: loss is {row['train_loss']}; run diverged", "red")
                        break
                    say(console, epoch_line(row, epochs, rate, label))
                    if _record_epoch(run, state, row, loggers, wall_before + time.perf_counter() - started):
                        saved_epoch = state.epoch
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGUSR1 (biasbench.stopping)
            signum = signal_of(stop)
            status, stopped_by = "interrupted", signal_name(signum)
        except BaseException:  # an error: the loggers close (a tracker's run ends as failed)
            if loggers is not None:
                loggers.close()
            raise
        wall = wall_before + time.perf_counter() - started
        doc = _results_doc(run, status, stopped_by, state, wall, warmup_s, saved_epoch, early)
        if ctx.is_main:
            if state.predictions.epochs:
                save_predictions(paths.predictions, state.predictions.freeze())
            atomic_write_json(paths.results, doc)
            _finish_loggers(loggers, doc)
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
        if paths.kept_checkpoints.is_dir():  # output.keep's copies, named by progress
            orphans += remove_orphans(paths.kept_checkpoints, ["epoch*"])
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
    shutil.rmtree(paths.kept_checkpoints, ignore_errors=True)


def _train_and_evaluate(run: Run, state: TrainingState, epoch: int, bar: Progress | None,
                        within: WithinEpoch | None) -> tuple[dict[str, Any], float]:
    """One epoch (or the rest of one, after a mid-epoch checkpoint): train, then (unless the loss
    diverged) evaluate validation and test sets, with the EMA weights too, and add the epoch to
    the history and the test predictions. Returns the history row and the epoch's training
    samples per second (the process's first step left out)."""
    resumed = state.partial or {}
    lr = resumed.get("lr", run.optimizer.param_groups[0]["lr"])  # the epoch's (first step's) learning rate
    warming = run.first_step is None
    t0 = time.perf_counter()
    train_metrics = _train_epoch(run, state, epoch, bar, f"epoch {epoch + 1}/{run.recipe.train.epochs}", within, lr)
    seconds = resumed.get("seconds", 0.0) + time.perf_counter() - t0
    state.partial = None
    counted_s, counted_n = seconds, len(run.train_loader.y)
    if warming and run.first_step is not None:  # this epoch ran the process's first step
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
    if run.ema is not None:  # the averaged weights, beside the raw ones (ema_val_acc, ema_test_loss, ...)
        evals.update({f"ema_{name}": evaluate(run.ema.module, loader, run.criterion)
                      for name, loader in run.eval_loaders.items()})
    state.history.append(_epoch_row(epoch, lr, train_metrics, evals, seconds))
    if "test" in run.eval_loaders:  # (data.test_split: false has none)
        per_example = torch.cat(kept)
        state.predictions.add(epoch + 1, per_example, run.eval_loaders["test"].y,
                              example_loss=per_example if run.bundle.task == "regression" else None)
    state.epoch = epoch + 1
    return state.history[-1], rate


def _open_loggers(run: Run, state: TrainingState, fresh: bool) -> RunLoggers:
    """The run's `output.loggers` (rank 0 only); a tracker that cannot be reached is one warning."""
    out = run.recipe.output
    recorded = json.loads(json.dumps(_recorded_recipe(run.recipe)))  # as results.json has it: lists
    info = RunInfo(recipe=recorded, name=str(out.name), seed=run.seed, replicate=run.replicate,
                   folder=run.paths.dir, tags=dict(out.tags), start_epoch=state.epoch)
    return RunLoggers(out.loggers, info, fresh)


def _finish_loggers(loggers: RunLoggers | None, doc: dict[str, Any]) -> None:
    """After results.json is written (the trackers upload it): finish, then close the loggers."""
    if loggers is None:
        return
    try:
        loggers.finish(doc)
    finally:
        loggers.close()


def _record_epoch(run: Run, state: TrainingState, row: dict[str, Any], loggers: RunLoggers | None,
                  wall: float) -> bool:
    """After an epoch: the loggers (metrics.csv, TensorBoard, trackers), the checkpoint, and the
    best-validation copy when this epoch is the best so far (rank 0 only). True when a
    checkpoint was written."""
    if not run.ctx.is_main or loggers is None:
        return False
    loggers.epoch(row, state.history)
    if run.recipe.output.checkpoint:
        best = best_epoch(_evaluated(state.history), run.bundle.task)
        _save(run, state, wall, best=best.get("epoch") == row["epoch"])
        return True
    return False


def _save(run: Run, state: TrainingState, wall: float, best: bool) -> None:
    """checkpoint.pt (rank 0), also as checkpoint_best.pt when `best`, and, with output.keep K >
    1, as a kept copy in checkpoints/ of which the K newest stay."""
    if not run.ctx.is_main:
        return
    paths, keep = run.paths, run.recipe.output.keep
    also = [paths.best_checkpoint] if best else []
    if keep > 1:
        ensure_dir(paths.kept_checkpoints)
        also.append(paths.kept_checkpoint(state.epoch, state.partial["loader"]["batch"] if state.partial else None))
    save_checkpoint(paths.checkpoint, recipe=_recorded_recipe(run.recipe), seed=run.seed, replicate=run.replicate,
                    state=state, parts=run.parts(), wall_time=wall, also=also)
    if keep > 1:
        for old in sorted(paths.kept_checkpoints.glob("epoch*.pt"))[:-keep]:
            old.unlink(missing_ok=True)


def _early_stop_line(early: dict[str, Any]) -> str:
    epochs = f"{early['patience']} epoch{'s' if early['patience'] != 1 else ''}"
    return (f"early stop after epoch {early['stopped_after']}: {early['metric']} has not improved by more than "
            f"{early['min_delta']:g} for {epochs} (best {early['best']:.4g} at epoch {early['best_epoch']})")


def _evaluated(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [h for h in history if "test_loss" in h or "val_loss" in h]  # a diverged epoch has no evaluation


# ---------------------------------------------------------------------------------------------
# The pieces of an epoch.
# ---------------------------------------------------------------------------------------------


class WithinEpoch:
    """`output.checkpoint_every`: when a mid-epoch checkpoint is due, after an optimiser step.
    Every N steps counts the run's steps (the scheduler's count, so it survives a resume); every
    N seconds counts from this process's start or its last save. With several ranks the ranks
    agree (a time is rank 0's decision, shared), since each must add its sums to the checkpoint."""

    def __init__(self, steps: int | None, seconds: float | None, save: Any):
        self.steps, self.seconds, self.save, self.last = steps, seconds, save, time.perf_counter()

    @classmethod
    def of(cls, recipe: Recipe, save: Any) -> WithinEpoch | None:
        if recipe.output.checkpoint_every is None:
            return None
        unit, amount = parse_every(recipe.output.checkpoint_every)  # type: ignore[misc]  # validated
        return cls(int(amount), None, save) if unit == "steps" else cls(None, amount, save)

    def due(self, run: Run) -> bool:
        if self.steps is not None:
            return run.scheduler.last_epoch % self.steps == 0
        late = time.perf_counter() - self.last >= self.seconds
        if run.ctx.enabled:
            (late_on_main,) = run.ctx.sum(torch.tensor(float(late and run.ctx.is_main), device=run.device))
            late = bool(late_on_main.item())
        return late

    def saved(self) -> None:
        self.last = time.perf_counter()


@dataclass
class _EpochSums:
    """An epoch's running training sums, kept on the device (no host sync per step)."""

    loss: torch.Tensor
    correct: torch.Tensor
    n: int

    @classmethod
    def start(cls, saved: dict[str, Any] | None, device: torch.device, ctx: DistContext) -> _EpochSums:
        """Zero, or what a mid-epoch checkpoint saved: sums over all ranks, so only rank 0 takes them."""
        if saved is None or not ctx.is_main:
            return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0)
        return cls(saved["loss_sum"].to(device).clone(), saved["correct"].to(device).clone(), int(saved["n"]))

    def over_ranks(self, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, int]:
        loss, correct, n = ctx.sum(self.loss, self.correct, torch.tensor(self.n, device=self.loss.device))
        return loss, correct, int(n.item())


def _train_epoch(run: Run, state: TrainingState, epoch: int, bar: Progress | None, description: str,
                 within: WithinEpoch | None, lr: float) -> dict[str, float]:
    """One pass over the training data (the rest of one after a mid-epoch checkpoint), in
    optimiser steps of `train.accumulate` batches each; `lr`: the epoch's, for the checkpoint."""
    model, loader, criterion, ctx = run.step_model, run.train_loader, run.criterion, run.ctx
    model.train()
    resumed = state.partial
    loader.set_epoch(epoch, resumed["loader"] if resumed else None)
    sums = _EpochSums.start(resumed, loader.device, ctx)
    time_first = run.first_step is None and len(loader) > 1  # (a one-step epoch: nothing else to count)
    t0 = time.perf_counter()
    if bar is not None:
        bar.update(bar.task_ids[0], description=description)
    batches = iter(loader)
    while group := list(itertools.islice(batches, run.recipe.train.accumulate)):
        # a last batch smaller than the ranks: every rank skips it alike
        used = [(x, y) for x, y in group if len(y) >= ctx.world]
        if used:
            _accumulated_step(run, used, sums)
            if time_first:
                _end_first_step(run, t0, sum(len(y) for _, y in used))  # (all ranks together)
                time_first = False
            if within is not None and loader.position()["batch"] < len(loader) and within.due(run):
                _save_within_epoch(run, state, sums, t0, lr, resumed, within)
        if bar is not None:  # no per-step work for a bar nobody sees
            rate = sums.n * ctx.world / max(time.perf_counter() - t0, 1e-9)
            bar.update(bar.task_ids[0], advance=len(group), rate=f"{rate:,.0f}/s")
    loss_sum, correct, count = sums.over_ranks(ctx)
    count = max(count, 1)
    metrics = {"loss": loss_sum.item() / count}
    if criterion.task == "classification":
        metrics["acc"] = correct.item() / count
    return metrics


def _end_first_step(run: Run, t0: float, samples: int) -> None:
    """Record the first step's time, once its queued device work has finished (one sync)."""
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    run.first_step = (time.perf_counter() - t0, samples)


def _accumulated_step(run: Run, batches: list[tuple[Any, torch.Tensor]], sums: _EpochSums) -> None:
    """One optimiser step on the gradient of the mean loss over `batches` (their samples
    together, as one batch of them all would give): each batch's mean loss is weighted by its
    share of the samples."""
    total = sum(len(y) for _, y in batches)
    to_format = torch.channels_last if run.recipe.train.channels_last else torch.contiguous_format
    run.optimizer.zero_grad(set_to_none=True)
    for x, y in batches:
        weight = len(y) / total
        x, y, share = run.ctx.shard(x, y)
        if isinstance(x, torch.Tensor) and x.dim() == 4:  # image batches; other kinds' batches pass as they are
            x = x.contiguous(memory_format=to_format)
        with run.autocast():
            out = run.step_model(x)
            loss = run.criterion(out, y)
        scaled = loss * (share * weight) if share * weight != 1.0 else loss
        (scaled if run.scaler is None else run.scaler.scale(scaled)).backward()
        sums.loss.add_(loss.detach(), alpha=len(y))
        if run.criterion.task == "classification":
            sums.correct += (out.detach().argmax(1) == y).sum()
        sums.n += len(y)
    _optimizer_step(run)


def _save_within_epoch(run: Run, state: TrainingState, sums: _EpochSums, t0: float, lr: float,
                       resumed: dict[str, Any] | None, within: WithinEpoch) -> None:
    """A mid-epoch checkpoint: where the loader is, the epoch's sums over all ranks, its learning
    rate and seconds so far. The RNG states are saved as they are now, after the step."""
    loss_sum, correct, n = sums.over_ranks(run.ctx)
    earlier = resumed or {}
    state.partial = {"loader": run.train_loader.position(), "loss_sum": loss_sum.cpu(), "correct": correct.cpu(),
                     "n": n, "lr": lr,
                     "seconds": earlier.get("seconds", 0.0) + time.perf_counter() - t0}
    try:
        within.save()
    finally:
        state.partial = resumed  # the epoch's start is still what _train_and_evaluate reads
    within.saved()


def _optimizer_step(run: Run) -> None:
    """L2 penalty, clipping, optimiser and schedule step, and the EMA update, on the gradients
    the batches left; through the gradient scaler with fp16, unscaling first so that L2 and
    clipping act on the true gradients."""
    if run.scaler is not None:
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
    if run.ema is not None:
        run.ema.update(run.model)


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


def _same_threads(ckpt: dict[str, Any], path: Path, device: torch.device) -> dict[str, Any]:
    """On the CPU a run's numbers depend on the thread count (how matrix products split their
    sums), so a run resumes only with the thread count its checkpoint was written with: the
    result is then the one an uninterrupted run gives. (Checkpoints from before the count was
    recorded hold none and resume as they did.)"""
    saved, now = ckpt.get("threads"), torch.get_num_threads()
    if device.type == "cpu" and saved is not None and saved != now:
        raise UserError(f"`{path}` was trained on {saved} CPU thread(s) and this process has {now}: on the CPU "
                        f"the numbers depend on the thread count, so the run would not continue exactly; resume "
                        f"it with {saved} thread(s) (train: OMP_NUM_THREADS={saved}; a sweep: the --jobs it ran "
                        "with), or pass --overwrite to start it again")
    return ckpt


_ANNOUNCED: set[tuple[str, ...]] = set()  # kernels warm_up has said it builds, in this command


def warm_up(run: Run, console: Console) -> float:
    """Build the fused kernels the model's layers declare (`warm_up_kernel`, layers/contract.py)
    before the clock starts: the first run on a machine compiles them (10-20 s each on the CPU),
    which must not count as training time. One forward pass in eval mode on two test examples,
    RNG untouched. Returns the seconds it took."""
    kinds = kernels_to_warm(run.model, run.device)
    if not kinds:
        return 0.0
    where = "Triton" if run.device.type == "cuda" else "C++"
    if (where, *kinds) not in _ANNOUNCED:  # once per command (train_recipe clears it), not per replicate
        _ANNOUNCED.add((where, *kinds))
        say(console, f"{' and '.join(kinds)} layers: building the fused {where} kernels before timing (the first "
                     "run on a machine compiles them, 10-20 s each; later runs load them from the cache)")
    t0 = time.perf_counter()
    loader = run.eval_loaders["test" if "test" in run.eval_loaders else "val"]  # (data.test_split: false)
    x = next(iter(loader))[0][:2]  # whatever loader the split has: its first batch
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

    try:
        return complexity(model, input_shape)
    except Exception as e:  # counting must never lose a finished run's results
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


def _results_doc(run: Run, status: str, stopped_by: str | None, state: TrainingState, wall: float,
                 warmup_s: float, checkpoint_epoch: int | None, early: dict[str, Any] | None) -> dict[str, Any]:
    history = state.history
    rate = state.train_samples / state.train_time if state.train_time > 0 else 0.0
    precision = {"precision": run.precision, **({"precision_note": run.precision_note} if run.precision_note else {})}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "name": run.recipe.output.name,
        "status": status,
        "interrupted_by": stopped_by,
        # why the run ended: epochs (all of them), early_stop (with `early_stop` saying why), diverged, interrupted
        "stop_reason": "early_stop" if early is not None else {"completed": "epochs"}.get(status, status),
        "early_stop": early,
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
        "peak_memory_mb": peak_memory_mb(run.device),
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
                 console: Console | None = None, ctx: DistContext | None = None,
                 planned: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Train every replicate (seed + r). `jobs` > 1 runs replicates in parallel processes, with
    `threads` each (None: the cores shared out). `planned` is called once the replicates are
    planned, i.e. once no run folder was refused (the CLI's oversubscription warning waits for it:
    a refused command trains nothing and must print only its error)."""
    console = console or Console(quiet=True)
    ctx = ctx or DistContext()
    _ANNOUNCED.clear()  # the kernel-build line: once per command, whatever the replicates
    todo, done = plan_replicates(recipe, resume, overwrite, console, check=ctx.is_main)
    if planned is not None:
        planned()
    if jobs > 1 and len(todo) > 1:
        return _in_order(done | train_parallel(train_run, recipe, todo, device, resume=resume, fresh=overwrite,
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
