"""Per-run loggers chosen by `output.loggers`: csv, tensorboard, mlflow, wandb (docs/loggers.md).

Each logger is one file here that registers itself with `@register_logger`; this package
imports them all.
"""

from __future__ import annotations

import biasbench.loggers as _package
from biasbench.loggers.base import LOGGERS, RunInfo, RunLoggers, check_loggers, register_logger
from biasbench.plugins import import_submodules

import_submodules(_package)

__all__ = ["LOGGERS", "RunInfo", "RunLoggers", "check_loggers", "register_logger"]
