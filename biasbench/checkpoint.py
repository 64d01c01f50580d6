"""Checkpoints: everything a run needs to continue bit for bit, written atomically."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import torch

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write

FORMAT = "biasbench-checkpoint"
VERSION = 1


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


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    doc = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(doc, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint `{path}` does not exist")
    if path.is_dir():
        hint = path / "checkpoint.pt"
        raise UserError(f"`{path}` is a folder; give the checkpoint file" + (f" `{hint}`" if hint.exists() else ""))
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"`{path}` is not a readable checkpoint (corrupt or truncated?): {first[:120]}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"`{path}` is not a biasbench checkpoint (a plain PyTorch file?); "
                        "give a checkpoint.pt written by `biasbench train`")
    if doc.get("version") != VERSION:
        raise UserError(f"`{path}` is a biasbench checkpoint of format version {doc.get('version')!r}; "
                        f"this biasbench reads version {VERSION}")
    return doc
