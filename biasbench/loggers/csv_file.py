"""`csv`: RUN/metrics.csv, the whole history rewritten atomically after every epoch."""

from __future__ import annotations

from typing import Any

from biasbench.loggers.base import RunInfo, TrackerIds, register_logger
from biasbench.runlog import write_metrics_csv


@register_logger("csv", summary="RUN/metrics.csv, one row per epoch (the default)")
class CsvLog:
    def __init__(self, info: RunInfo, ids: TrackerIds):
        self.path = info.folder / "metrics.csv"

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        write_metrics_csv(self.path, history)

    def finish(self, doc: dict[str, Any]) -> None:
        pass  # written each epoch

    def close(self) -> None:
        pass
