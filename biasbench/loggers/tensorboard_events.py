"""`tensorboard`: event files in RUN/tensorboard/, one scalar per history field at step = epoch."""

from __future__ import annotations

from typing import Any

from biasbench.loggers.base import RunInfo, TrackerIds, register_logger
from biasbench.runlog import TensorBoardLog


@register_logger("tensorboard", summary="event files in RUN/tensorboard/",
                 modules=("tensorboard", "torch.utils.tensorboard"), extra="tensorboard")
class TensorBoardEvents:
    def __init__(self, info: RunInfo, ids: TrackerIds):
        self.log = TensorBoardLog(info.folder / "tensorboard", info.start_epoch)

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.log.add(row)

    def finish(self, doc: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.log.close()
