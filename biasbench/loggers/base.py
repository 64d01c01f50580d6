"""The logger interface: what every `output.loggers` entry implements, and the registry.

A logger gets the run's `RunInfo` when the run starts (after the folder is claimed, rank 0
only), each epoch's history row, and the finished results document once `results.json` is
written. Local loggers (csv, tensorboard) fail like any write (one line, exit 2); remote
trackers (mlflow, wandb) must never stop a training: `RunLoggers` turns their errors into one
warning line and drops the tracker for the rest of the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from biasbench.errors import UserError, warn
from biasbench.fsutil import atomic_write_json
from biasbench.registry import Registry

TRACKERS_FILE = "trackers.json"  # the remote run ids of a run folder, so a resumed run continues them


@dataclass(frozen=True)
class RunInfo:
    recipe: dict[str, Any]  # the resolved recipe, as results.json records it
    name: str  # output.name: the experiment, which groups its replicates
    seed: int
    replicate: int
    folder: Path  # RUN folder (DIR/NAME/seedS)
    tags: dict[str, str]  # output.tags (a study adds its name, the cell and the cell's values)
    start_epoch: int = 0  # epochs already done (a resumed run)

    @property
    def group(self) -> str:
        """What identifies the experiment across processes: its folder, absolute."""
        return str(self.folder.parent.resolve())


class RunLogger(Protocol):
    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None: ...

    def finish(self, doc: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LoggerSpec:
    name: str
    summary: str
    modules: tuple[str, ...]  # what it imports (none: always there)
    extra: str | None  # `pip install 'biasbench[EXTRA]'`, also the package's name
    remote: bool  # a tracking service: its failures warn, never stop training
    open: Callable[[RunInfo, TrackerIds], RunLogger]

    def missing(self) -> str | None:
        """Why this logger cannot run here, or None."""
        try:
            for module in self.modules:
                __import__(module)  # imported, not just found: a broken install counts
            return None
        except ImportError:
            pass
        return (f"output.loggers: `{self.name}` needs the {self.extra} package: pip install "
                f"'biasbench[{self.extra}]' (or remove it from output.loggers)")


LOGGERS: Registry[LoggerSpec] = Registry("logger")


def register_logger(name: str, *, summary: str, modules: tuple[str, ...] = (), extra: str | None = None,
                    remote: bool = False) -> Callable[[Any], Any]:
    def add(cls: Any) -> Any:
        LOGGERS.register(name)(LoggerSpec(name, summary, modules, extra, remote, cls))
        return cls

    return add


@dataclass
class TrackerIds:
    """RUN/trackers.json: {tracker: run id}, written when a tracker creates its run."""

    path: Path
    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path, fresh: bool) -> TrackerIds:
        path = folder / TRACKERS_FILE
        if fresh or not path.exists():
            return cls(path)
        try:
            ids = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            ids = {}
        return cls(path, {k: v for k, v in ids.items() if isinstance(v, str)} if isinstance(ids, dict) else {})

    def get(self, tracker: str) -> str | None:
        return self.ids.get(tracker)

    def set(self, tracker: str, run_id: str) -> None:
        self.ids[tracker] = run_id
        atomic_write_json(self.path, self.ids)


class RunLoggers:
    """Every logger of a run. Remote trackers that fail (at start or later) are warned about in
    one line and dropped; training goes on."""

    def __init__(self, names: list[str], info: RunInfo, fresh: bool):
        self.loggers: list[tuple[LoggerSpec, RunLogger]] = []
        ids = TrackerIds.read(info.folder, fresh)
        for name in names:
            spec = LOGGERS.get(name)
            if spec.remote:
                self._guarded(spec, lambda spec=spec: self.loggers.append((spec, spec.open(info, ids))))
            else:
                self.loggers.append((spec, spec.open(info, ids)))

    def _guarded(self, spec: LoggerSpec, call: Callable[[], Any]) -> bool:
        try:
            call()
            return True
        except UserError as e:
            warn(f"{spec.name}: {e}; training goes on without it")
        except Exception as e:  # a tracker's failure must not cost the training
            warn(f"{spec.name}: {type(e).__name__}: {str(e)[:300]}; training goes on without it")
        return False

    def _each(self, call: Callable[[RunLogger], None]) -> None:
        for spec, logger in list(self.loggers):
            if not spec.remote:
                call(logger)
            elif not self._guarded(spec, lambda logger=logger: call(logger)):
                self.loggers.remove((spec, logger))

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self._each(lambda logger: logger.epoch(row, history))

    def finish(self, doc: dict[str, Any]) -> None:
        self._each(lambda logger: logger.finish(doc))

    def close(self) -> None:
        self._each(lambda logger: logger.close())


def check_loggers(names: list[str]) -> None:
    """Before anything is built: every logger known and installed (one line otherwise)."""
    for name in names:
        if (why := LOGGERS.get(name).missing()) is not None:
            raise UserError(why)


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """A history row's metrics without the epoch (the step), as numbers."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}


def artifacts(folder: Path) -> list[Path]:
    """What a finished run uploads: results.json, metrics.csv and any figures in the folder."""
    names = ["results.json", "metrics.csv"]
    return [folder / n for n in names if (folder / n).exists()] + sorted(folder.glob("*.png"))
