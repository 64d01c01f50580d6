"""Run folders: where a run's files live, what name tells experiments apart, what is in one.

A replicate's folder is `output.dir / output.name / seedS`, holding

| file                 | written                                                            |
|----------------------|--------------------------------------------------------------------|
| `checkpoint.pt`      | after every epoch (atomically): everything needed to resume         |
| `checkpoint_best.pt` | when the validation metric improves: the same content at that epoch |
| `checkpoints/`       | `output.keep: K` > 1: the K newest, `epochE.pt`, mid-epoch `epochE-batchB.pt` |
| `results.json`       | at the end, and when a run is interrupted                           |
| `predictions.npz`    | with results.json: per-epoch test predictions                       |
| `metrics.csv`        | after every epoch: the history so far (`output.loggers` has `csv`)  |
| `tensorboard/`       | with `output.loggers: [..., tensorboard]`                           |
| `trackers.json`      | with mlflow / wandb loggers: their run ids, so a resume continues them |
| `wandb/`             | with the wandb logger: W&B's own files (offline runs to sync)      |
| `.lock`              | while a process trains there: holds the PID of that process         |

`run_tag` turns the overrides that change an experiment into a readable folder name component:
`train R --set model.variant=dac` writes `runs/R/variant=dac/seed0`, beside the baseline's
`runs/R/seed0`, never over it. `inspect_start` decides, from what a folder holds, whether a run
starts, resumes, is skipped or must be refused, with one line saying which and why.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from biasbench.checkpoint import load_checkpoint
from biasbench.errors import UserError
from biasbench.predictions import FILE as PREDICTIONS_FILE
from biasbench.recipe import Recipe, experiment_identity, known_keys
from biasbench.results import load_results

TAG_MAX = 96  # characters; longer tags keep a readable prefix and end in a hash
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


class _InRun:
    """A file of the run folder, read as an attribute: `paths.results` is `paths.dir / "results.json"`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, paths: RunPaths, owner: type | None = None) -> Path:
        return paths.dir / self.name


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    checkpoint = _InRun("checkpoint.pt")
    best_checkpoint = _InRun("checkpoint_best.pt")
    kept_checkpoints = _InRun("checkpoints")
    results = _InRun("results.json")
    predictions = _InRun(PREDICTIONS_FILE)
    metrics_csv = _InRun("metrics.csv")
    tensorboard = _InRun("tensorboard")
    lock = _InRun(".lock")

    def kept_checkpoint(self, epochs_done: int, batch: int | None) -> Path:
        """The name of a kept copy, zero-padded so that names sort by progress: `epochE.pt` after
        epoch E, `epochE-batchB.pt` after batch B of epoch E (which sorts before `epochE.pt`)."""
        if batch:
            return self.kept_checkpoints / f"epoch{epochs_done + 1:05d}-batch{batch:07d}.pt"
        return self.kept_checkpoints / f"epoch{epochs_done:05d}.pt"

    def written_files(self) -> list[Path]:
        """Every file a run writes (what --overwrite replaces, what orphans are named after)."""
        return [self.checkpoint, self.best_checkpoint, self.results, self.predictions, self.metrics_csv]


def run_paths(recipe: Recipe, seed: int) -> RunPaths:
    return RunPaths(Path(recipe.output.dir) / str(recipe.output.name) / f"seed{seed}")


# ---------------------------------------------------------------------------------------------
# Folder names for experiments.
# ---------------------------------------------------------------------------------------------


def run_tag(overrides: Mapping[str, Any]) -> str:
    """A stable, readable, filesystem-safe name for a set of dotted overrides.

    {"model.variant": "dac", "optim.lr": 0.01} -> "variant=dac,lr=0.01". Keys are shortened to
    the shortest dotted suffix that no other given key and no other recipe key shares (`X.name`
    reads `X`: "model=resnet20"); fields follow the recipe's section order, whatever order they
    came in; lists join with '+'. A tag longer than TAG_MAX characters, or one whose values
    needed characters replaced to be safe in a file name, keeps a readable prefix and ends in
    `~` + 8 hex digits of a hash of the whole mapping, so different mappings never share a tag.
    An empty mapping gives "".
    """
    if not overrides:
        return ""
    schema = known_keys()
    keys = sorted(overrides, key=lambda k: _schema_position(k, schema))
    lossy = False
    fields = []
    for key in keys:
        value, exact = _format_value(overrides[key])
        name = _short_name(key, keys, schema)
        safe_name = _safe(name)
        lossy |= not exact or safe_name != name
        fields.append(f"{safe_name}={value}")
    tag = ",".join(fields)
    if not lossy and len(tag) <= TAG_MAX:
        return tag
    digest = hashlib.sha1(json.dumps({k: overrides[k] for k in keys}, sort_keys=True, default=repr).encode())
    suffix = "~" + digest.hexdigest()[:8]
    head = ""
    for f in fields:  # whole fields only: never a number cut in half
        if len(head) + len(f) + 1 + len(suffix) > TAG_MAX:
            break
        head = f"{head},{f}" if head else f
    return (head or fields[0][: TAG_MAX - len(suffix)]) + suffix


def _format_value(v: Any) -> tuple[str, bool]:
    """(text, exact): exact is False when characters had to be replaced to be file-name safe."""
    if isinstance(v, (list, tuple)) and v and all(_is_scalar(x) for x in v):
        parts = [_format_value(x) for x in v]
        return "+".join(t for t, _ in parts), all(ok and "+" not in t for t, ok in parts)
    text = _scalar_text(v) if _is_scalar(v) else json.dumps(v, sort_keys=True, separators=(",", ":"), default=repr)
    safe = _safe(text)
    return safe, safe == text and text != ""


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _scalar_text(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def _safe(text: str) -> str:
    return "".join(c if c in _SAFE else "_" for c in text)


def _short_name(key: str, given: list[str], schema: list[str]) -> str:
    parts = key.split(".")
    if len(parts) == 2 and parts[1] == "name":
        return parts[0]  # model.name -> model (no other key reads that way)
    others = [k for k in [*given, *schema] if k != key]
    for n in range(1, len(parts)):
        cand = ".".join(parts[-n:])
        if not any(k == cand or k.endswith("." + cand) for k in others):
            return cand
    return key


def _schema_position(key: str, schema: list[str]) -> tuple[int, str]:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):  # a free-form key (model.options.width) sorts with its parent
        prefix = ".".join(parts[:n])
        if prefix in schema:
            return schema.index(prefix), key
    return len(schema), key


def experiment_overrides(base: Mapping[str, Any], final: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted keys whose value in recipe dict `final` differs from `base` and that change the
    experiment (settings of place and speed, recipe.RESULT_NEUTRAL_KEYS, do not). Free-form
    option mappings are compared key by key: {"model.options.width": 32}."""
    old, new = experiment_identity(dict(base)), experiment_identity(dict(final))
    out: dict[str, Any] = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(a.keys() | b.keys()):
                if a.get(sub) != b.get(sub):
                    out[f"{key}.{sub}"] = b.get(sub)
        else:
            out[key] = list(b) if isinstance(b, tuple) else b
    return out


# ---------------------------------------------------------------------------------------------
# What a folder holds, and what starting a run there means.
# ---------------------------------------------------------------------------------------------

Action = Literal["new", "resume", "skip", "restart"]


@dataclass
class Start:
    """How a run begins in its folder: `new` (nothing there), `resume` (from checkpoint.pt),
    `skip` (already finished: `results` is its document), `restart` (replace what is there once
    the new run is built). `note` is the line that tells the user, or None."""

    action: Action
    note: str | None = None
    results: dict[str, Any] | None = None
    epoch: int = 0


def inspect_start(paths: RunPaths, recipe: Recipe, seed: int, *, resume: bool, overwrite: bool) -> Start:
    """Decide how a run starts in `paths.dir`; refuse in one line where no choice is safe.

    Never silently starts over and never discards a usable checkpoint: a checkpoint is resumed
    even when results.json is missing or unreadable (it is rewritten), and an interrupted run
    whose checkpoint is gone is refused unless it never had one (output.checkpoint: false)."""
    where = paths.dir
    if where.exists() and not where.is_dir():
        raise UserError(f"output path `{where}` is a file; choose another folder with --out")
    has_ckpt, has_results = paths.checkpoint.exists(), paths.results.exists()
    if not (has_ckpt or has_results):
        return Start("new", f"{where}: nothing to resume yet, starting a new run" if resume else None)
    if overwrite:
        return Start("restart", f"{where}: --overwrite replaces the run there")
    if not resume:
        raise UserError(f"`{where}` already holds a run; pass --resume to continue it, --overwrite to start "
                        "again, or keep both with --out DIR or --set output.name=NAME")
    results, problem = _read_results(paths)
    if results is not None:
        check_same_experiment(paths.results, results["recipe"], results["seed"], recipe, seed)
        if results["status"] in ("completed", "diverged"):
            return Start("skip", f"{where}: already {results['status']}, skipped", results=results)
    if has_ckpt:
        ckpt = load_checkpoint(paths.checkpoint)
        check_same_experiment(paths.checkpoint, ckpt["recipe"], ckpt["seed"], recipe, seed)
        note = f"resuming {where} after epoch {ckpt['epoch']}"
        if ckpt.get("partial"):
            note += f" and {ckpt['partial']['loader']['batch']} batches of epoch {ckpt['epoch'] + 1}"
        if problem:
            note += f" (its results.json was unreadable: {problem}; it will be rewritten)"
        return Start("resume", note, epoch=int(ckpt["epoch"]))
    if results is None:
        raise UserError(f"cannot resume `{where}`: results.json is unreadable ({problem}) and there is no "
                        "checkpoint.pt; pass --overwrite to start again")
    if results["checkpoint_epoch"] is None:  # output.checkpoint: false, or stopped within epoch 1
        return Start("restart", f"{where}: interrupted after {results['epochs_completed']} epoch(s) with no "
                                "checkpoint to continue from; starting it again from epoch 1")
    raise UserError(f"cannot resume `{where}`: its results say checkpoint.pt holds epoch "
                    f"{results['checkpoint_epoch']}, but the file is missing (moved or deleted?); put it back, or "
                    "pass --overwrite to start again")


def _read_results(paths: RunPaths) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None), or (None, why it is unreadable), or (None, None) when there is none."""
    if not paths.results.exists():
        return None, None
    try:
        return load_results(paths.results), None
    except UserError as e:
        return None, str(e).replace(f"`{paths.results}` ", "").replace(f"`{paths.results}`", "the file")


def check_same_experiment(path: Path, recorded: dict[str, Any], recorded_seed: int, recipe: Recipe,
                          seed: int) -> None:
    """--resume continues a run only with the experiment that wrote it (settings of speed or
    place, such as data.workers or output.dir, may change)."""
    old, new = experiment_identity(recorded), experiment_identity(recipe.to_dict())
    if old != new or recorded_seed != seed:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        what = f"recipe keys {', '.join(changed[:4])}" if changed else f"seed {recorded_seed}"
        raise UserError(f"`{path}` was written with other settings ({what} differ); resume with the same "
                        "recipe and overrides, pass --overwrite to start again, or choose another --out")
