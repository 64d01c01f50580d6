"""Checkpoints: the whole schema of what a run saves, how it is restored, and version checks.

A checkpoint is a zip-format `torch.save` of one dict, written atomically after every epoch:

| key                                   | content                                                   |
|---------------------------------------|-----------------------------------------------------------|
| `format`, `version`                   | "biasbench-checkpoint", VERSION; other versions refused   |
| `recipe`, `seed`, `replicate`         | the resolved recipe (as `Recipe.to_dict()`) and the run   |
| `epoch`                               | epochs completed                                          |
| `partial`                             | None after an epoch; within one: position, sums, lr, seconds (*) |
| `model`, `optimizer`, `scheduler`, `criterion`, `scaler`, `ema` | each part's `state_dict()` (**) |
| `rng`                                 | torch, Python (and CUDA) random states when it was written |
| `history`, `predictions`              | per-epoch metrics; the `PredictionLog` of test predictions |
| `train_time`, `train_samples`, `wall_time` | the clocks, so a resumed run reports the whole run's cost |

(*) `output.checkpoint_every`: the loader's position in the epoch, the epoch's running loss and
accuracy sums (over all ranks), its learning rate and seconds so far. (**) `scaler`: None without
fp16; `ema`: None without train.ema.

Everything is a tensor or a plain container, so `load_checkpoint` reads it with
`weights_only=True`: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import pickle
import random
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write
from biasbench.predictions import PredictionLog

FORMAT = "biasbench-checkpoint"
VERSION = 3  # 2: test predictions, gradient scaler, best-validation copy; 3: mid-epoch position, EMA
READABLE = (2, 3)  # a version-2 file is a version-3 file after an epoch, without EMA
PARTS = ("model", "optimizer", "scheduler", "criterion", "scaler", "ema")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainingState:
    """What a run accumulates as it trains, besides its parts' own state."""

    predictions: PredictionLog
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0  # seconds inside training steps (for images_per_second)
    train_samples: int = 0
    wall_time: float = 0.0  # seconds of training and evaluation in earlier processes
    # Within epoch `epoch` + 1 (a mid-epoch checkpoint): loader position, running sums, lr, seconds.
    partial: dict[str, Any] | None = None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: Path, *, recipe: dict[str, Any], seed: int, replicate: int, state: TrainingState,
                    parts: Mapping[str, Stateful | None], wall_time: float, also: list[Path] | None = None) -> None:
    """Write the checkpoint of `state` (after `state.epoch` epochs, and `state.partial` of the
    next); `also`: more names (written first) for the same content: the best-validation
    checkpoint, a kept copy (output.keep)."""
    doc = {"format": FORMAT, "version": VERSION, "recipe": recipe, "seed": seed, "replicate": replicate,
           "epoch": state.epoch, "rng": rng_state(), "history": state.history,
           "predictions": state.predictions.state_dict(), "train_time": state.train_time,
           "train_samples": state.train_samples, "wall_time": wall_time, "partial": state.partial,
           "threads": torch.get_num_threads()}  # CPU numbers depend on it: a resume must match (trainer)
    for name in PARTS:
        part = parts.get(name)
        doc[name] = part.state_dict() if part is not None else None
    atomic_write(path, lambda f: torch.save(doc, f), also=also or [])


def restore(ckpt: dict[str, Any], parts: Mapping[str, Stateful | None]) -> TrainingState:
    """Load every part's state and the RNG states; returns the run's accumulated state."""
    for name in PARTS:
        part, saved = parts.get(name), ckpt.get(name)
        if part is not None and saved is not None:  # a scaler only exists on CUDA with fp16
            part.load_state_dict(saved)
    set_rng_state(ckpt["rng"])
    log = PredictionLog.from_state_dict(ckpt["predictions"])
    log.truncate(ckpt["epoch"])
    return TrainingState(predictions=log, epoch=int(ckpt["epoch"]), history=list(ckpt["history"]),
                         train_time=float(ckpt["train_time"]), train_samples=int(ckpt["train_samples"]),
                         wall_time=float(ckpt["wall_time"]), partial=ckpt.get("partial"))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `biasbench train`; anything else is one line saying what the
    file is and what is expected."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint `{path}` does not exist")
    if path.is_dir():
        hint = path / "checkpoint.pt"
        raise UserError(f"`{path}` is a folder; give the checkpoint file" + (f" `{hint}`" if hint.exists() else ""))
    expected = "give a checkpoint.pt written by `biasbench train`"
    kind = _sniff(path)
    if kind == "results":
        beside = path.with_name("checkpoint.pt")
        where = (f"the run's checkpoint is `{beside}`" if beside.exists() else
                 "this run kept no checkpoint beside it (output.checkpoint: false?)")
        raise UserError(f"`{path}` is a biasbench results file, not a checkpoint; {where} "
                        "(`biasbench report` reads results files)")
    if kind != "zip":
        raise UserError(f"`{path}` is {kind}, not a biasbench checkpoint; {expected}")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise UserError(f"`{path}` is a PyTorch file holding pickled Python objects (a whole model saved "
                        f"with torch.save(model)?), which is never loaded: it could run code; {expected}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError):
        raise UserError(f"`{path}` is not a readable checkpoint (corrupt or truncated zip archive); "
                        f"{expected}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"`{path}` is a PyTorch file but not a biasbench checkpoint (a plain state_dict?); "
                        f"{expected}")
    if doc.get("version") not in READABLE:
        raise UserError(f"`{path}` is a biasbench checkpoint of format version {doc.get('version')!r}; this "
                        f"biasbench reads versions {', '.join(map(str, READABLE))}: re-run the training, or use "
                        "the release that wrote it")
    return doc


def _sniff(path: Path) -> str:
    """'zip' for torch's format, 'results' for a results file, else what the file is, in words."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise UserError(f"cannot read `{path}`: {e.strerror or e}") from None
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if not head:
        return "an empty file"
    if head[:1] == b"\x80":
        return "a Python pickle (not the zip format biasbench writes)"
    if head.lstrip()[:1] == b"{":
        try:
            doc = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return "a text file"
        return "results" if isinstance(doc, dict) and doc.get("kind") == "biasbench-run" else "a JSON file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "a binary file of an unknown format"


def recipe_from_checkpoint(ckpt: dict[str, Any], data_root: str | None = None) -> Any:
    from biasbench.data import dataset_info
    from biasbench.recipe import from_dict

    recipe = from_dict(ckpt["recipe"])
    if data_root is not None:
        info = dataset_info(recipe.data.name)
        if info.bundled or not info.reads_root:  # it would be ignored: say so instead
            raise UserError(f"--data-root: data set `{recipe.data.name}` is not read from a data root "
                            f"({'bundled' if info.bundled else 'built from other data sets'}); drop the option")
        recipe = replace(recipe, data=replace(recipe.data, root=data_root))
    return recipe
