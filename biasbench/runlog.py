"""What a run reports each epoch besides its checkpoint: metrics.csv, TensorBoard, the epoch line.

`metrics.csv` is rewritten atomically after every epoch from the whole history (one row per
epoch, columns in the history's order), so it is always complete and never half-written (it is
not fsynced: the checkpoint holds the same history, and the next epoch rewrites it).
TensorBoard event files (`output.loggers: [..., tensorboard]`) go to `RUN/tensorboard/`, one scalar per
history field (`train/loss`, `val/acc`, `lr`, ...) at step = epoch. The epoch line is one plain
line per epoch that fits 80 columns without breaking a field, so logs stay grep-able.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_text, os_reason

LINE_WIDTH = 80


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue(), durable=False)  # rebuilt from the checkpoint's history


class TensorBoardLog:
    """Scalars of each epoch's history row. `resume_epoch`: events of later epochs written by an
    earlier, killed process are purged, so a resumed run's curves have no duplicates."""

    def __init__(self, folder: Path, resume_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        try:
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_epoch + 1 if resume_epoch else None)
        except OSError as e:
            raise UserError(f"cannot write `{folder}`: {os_reason(e)}") from None

    def add(self, row: dict[str, Any]) -> None:
        step = row["epoch"]
        try:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    split, _, metric = key.partition("_")
                    self.writer.add_scalar(f"{split}/{metric}" if metric else key, value, step)
            self.writer.flush()
        except OSError as e:
            raise UserError(f"cannot write `{self.folder}`: {os_reason(e)}") from None

    def close(self) -> None:
        self.writer.close()


def epoch_line(row: dict[str, Any], epochs: int, rate: float, prefix: str = "") -> str:
    """`epoch 3/15  loss 0.4321  train 97.12%  val 96.00%  test 95.50%  12,345/s`, at most
    LINE_WIDTH characters: the least important fields (rate, then train) go first when needed."""
    fields = [(0, f"epoch {row['epoch']}/{epochs}"), (0, f"loss {_num(row['train_loss'])}")]
    for split, rank in (("train", 2), ("val", 0), ("test", 0)):
        if f"{split}_acc" in row:
            fields.append((rank, f"{split} {100 * row[f'{split}_acc']:.2f}%"))
        elif split != "train" and f"{split}_loss" in row:
            fields.append((rank, f"{split} mse {_num(row[f'{split}_loss'])}"))
    fields.append((3, f"{rate:,.0f}/s"))
    if prefix:
        fields.insert(0, (0, prefix))
    for drop in (None, 3, 2):
        line = "  ".join(text for rank, text in fields if drop is None or rank < drop)
        if len(line) <= LINE_WIDTH:
            return line
    return line


def _num(v: float) -> str:
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def say(console: Any, text: str, style: str | None = None) -> None:
    """Print a message wrapped at spaces to the console's width (80 columns when it is not a
    terminal), never inside a word, number or path."""
    import textwrap

    width = console.width if console.is_terminal else LINE_WIDTH
    for line in textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]:
        console.print(line, style=style, highlight=False, markup=False, overflow="ignore", crop=False,
                      soft_wrap=True)
