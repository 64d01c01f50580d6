"""Per-example test predictions of a run, one row per epoch: `predictions.npz` beside results.json.

Replicate statistics see seed noise only. With the prediction of every test example at every
epoch, `compare` can also see the test set's own sampling noise (a paired test over examples
and seeds), at whichever epoch an estimator picks. Stored compactly:

| array    | shape  | dtype           | meaning                                              |
|----------|--------|-----------------|------------------------------------------------------|
| `epochs` | (E,)   | int32           | the 1-based epoch of each row (as in the history)    |
| `target` | (N,)   | int16 / int32   | classification: the true class of each test example  |
| `pred`   | (E, N) | int16 / int32   | classification: the predicted class                  |
| `loss`   | (E, N) | float32         | regression: the per-example task loss (squared error) |

A classification run has `target` and `pred`; a regression run has `loss`. The results file
names the file under its `predictions` key (see `describe`).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write

FILE = "predictions.npz"
SPLIT = "test"


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max else np.dtype(np.int32)


@dataclass
class TestPredictions:
    """Predictions on the test split, one row per recorded epoch."""

    __test__ = False  # not a pytest class, whatever its name
    epochs: np.ndarray
    target: np.ndarray | None = None
    pred: np.ndarray | None = None
    loss: np.ndarray | None = None

    @property
    def task(self) -> str:
        return "classification" if self.pred is not None else "regression"

    @property
    def examples(self) -> int:
        return int((self.pred if self.pred is not None else self.loss).shape[1])

    def row(self, epoch: int) -> int:
        """Index of a 1-based epoch; one clear error when it was not recorded."""
        hits = np.flatnonzero(self.epochs == epoch)
        if not len(hits):
            raise KeyError(f"epoch {epoch} has no recorded predictions (have {self.epochs.tolist()})")
        return int(hits[0])

    def correct(self, epoch: int) -> np.ndarray:
        """(N,) bool: which test examples the model classified correctly at `epoch`."""
        if self.pred is None or self.target is None:
            raise ValueError("a regression run has per-example losses, not correctness")
        return self.pred[self.row(epoch)] == self.target

    def example_loss(self, epoch: int) -> np.ndarray:
        if self.loss is None:
            raise ValueError("a classification run stores predicted classes, not per-example losses")
        return self.loss[self.row(epoch)]


@dataclass
class PredictionLog:
    """What the trainer appends to after each evaluation of the test split; checkpointed."""

    task: str
    num_classes: int = 0
    epochs: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    target: np.ndarray | None = None

    def add(self, epoch: int, outputs: torch.Tensor, targets: torch.Tensor, example_loss: torch.Tensor | None = None
            ) -> None:
        """Record one epoch: `outputs` are the model's outputs over the whole split, in order
        ((N, classes) scores, or the (N,) predicted classes)."""
        if self.task == "classification":
            dtype = _label_dtype(self.num_classes)
            pred = outputs if outputs.dim() == 1 else outputs.argmax(1)
            self.rows.append(pred.cpu().numpy().astype(dtype))
            if self.target is None:
                self.target = targets.cpu().numpy().astype(dtype)
        else:
            if example_loss is None:
                raise ValueError("a regression run records per-example losses")
            self.rows.append(example_loss.detach().float().cpu().numpy().astype(np.float32))
        self.epochs.append(int(epoch))

    def truncate(self, epochs: int) -> None:
        """Keep the first `epochs` rows (a resumed run continues after its checkpointed epoch)."""
        del self.epochs[epochs:], self.rows[epochs:]

    def freeze(self) -> TestPredictions:
        stacked = np.stack(self.rows) if self.rows else None
        epochs = np.asarray(self.epochs, dtype=np.int32)
        if self.task == "classification":
            return TestPredictions(epochs, target=self.target, pred=stacked)
        return TestPredictions(epochs, loss=stacked)

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "num_classes": self.num_classes, "epochs": list(self.epochs),
                "rows": [torch.from_numpy(r) for r in self.rows],
                "target": None if self.target is None else torch.from_numpy(self.target)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PredictionLog:
        target = state["target"]
        return cls(state["task"], state["num_classes"], list(state["epochs"]), [r.numpy() for r in state["rows"]],
                   None if target is None else target.numpy())


def save_predictions(path: Path, preds: TestPredictions) -> None:
    arrays = {k: v for k, v in (("epochs", preds.epochs), ("target", preds.target), ("pred", preds.pred),
                                 ("loss", preds.loss)) if v is not None}

    def write(f: Any) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getvalue())

    atomic_write(Path(path), write)


def describe(preds: TestPredictions) -> dict[str, Any]:
    """The results file's `predictions` entry."""
    return {"file": FILE, "split": SPLIT, "epochs": int(len(preds.epochs)), "examples": preds.examples,
            "stored": "predicted class" if preds.task == "classification" else "per-example loss"}


def load_predictions(path: str | Path) -> TestPredictions:
    """Read `predictions.npz` (or the one beside a results.json / in a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    elif path.name != FILE:
        path = path.with_name(FILE)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"`{path}` does not exist: the run recorded no per-example predictions") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"`{path}` is not a readable predictions file (corrupt or truncated?): {e}") from None
    preds = TestPredictions(arrays.get("epochs", np.zeros(0, np.int32)), arrays.get("target"), arrays.get("pred"),
                            arrays.get("loss"))
    rows = preds.pred if preds.pred is not None else preds.loss
    if rows is None or rows.ndim != 2 or rows.shape[0] != len(preds.epochs) or (
            preds.pred is not None and (preds.target is None or preds.target.shape != (rows.shape[1],))):
        raise UserError(f"`{path}` does not hold per-epoch test predictions in biasbench's layout "
                        "(epochs, target + pred, or loss); re-run the training that wrote it")
    return preds
