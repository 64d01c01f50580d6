"""The typed parts of a study file: `failure:`, `analysis:` and `launcher:`.

Each part is a small frozen dataclass read from the study's mapping by `read_spec`, which refuses
unknown options (with a suggestion) and wrong types, naming the key path in the study file. The
analyses declare theirs in their own files (`analyses/`), naming study keys as `StudyKey`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from biasbench.errors import UserError, did_you_mean

Estimator = Literal["final", "best", "robust", "min_mean"]


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_text(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def read_spec(cls: type, raw: Any, where: str) -> Any:
    """`raw` (a mapping from the study file) -> `cls`, refusing unknown keys and wrong types."""
    if raw is None or raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of options, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise UserError(f"unknown key `{where}.{key}`{did_you_mean(str(key), names)}; known: {', '.join(names)}")
        tp = hints[key]
        if typing.get_origin(tp) is list and not isinstance(value, list):
            value = [value]  # a single key where a list of keys is allowed
        if not _type_ok(value, tp):
            raise UserError(f"`{where}.{key}` must be {_type_text(tp)}, got {value!r}")
        kwargs[key] = value
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise UserError(f"{where} needs `{missing[0]}`")
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# failure: what counts as a failed training besides divergence.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A completed run failed when `metric` (at the final epoch, or at the epoch with the best
    validation metric) is above `above` or below `below`: the DAC paper counts trainings that
    "failed to reach a suitable error level" next to diverged ones."""

    metric: str
    above: float | None = None
    below: float | None = None
    at: Literal["final", "best"] = "final"

    def check(self, where: str) -> None:
        if (self.above is None) == (self.below is None):
            raise UserError(f"{where} needs exactly one of `above` or `below` (a threshold on `{self.metric}`)")
        if not self.metric.startswith(("train_", "val_", "test_")):
            raise UserError(f"`{where}.metric` must name a per-epoch metric such as val_loss or test_acc, "
                            f"got `{self.metric}`")

    def failed(self, doc: dict[str, Any]) -> bool:
        """True when a completed run crosses the threshold (runs of other statuses: False)."""
        if doc.get("status") != "completed":
            return False
        row = doc.get("final" if self.at == "final" else "best") or {}
        value = row.get(self.metric)
        if value is None:
            recorded = sorted(k for k in row if k.startswith(("train_", "val_", "test_")))
            raise UserError(f"failure metric `{self.metric}` is not in the results (they record "
                            f"{', '.join(recorded)}){did_you_mean(self.metric, recorded)}; fix `failure.metric`")
        return value > self.above if self.above is not None else value < self.below  # type: ignore[operator]

    def describe(self) -> str:
        op, limit = (">", self.above) if self.above is not None else ("<", self.below)
        return f"{self.metric} {op} {limit:g} at the {self.at} epoch"


# ---------------------------------------------------------------------------------------------
# analysis: the study-level tables and figures of the report (computed in analysis.py).
# Keys (rows, series, ...) name study keys: dotted recipe keys or labels of the grid and zip.
# `where` keeps cells whose key has the value (or one of the values) given.
# ---------------------------------------------------------------------------------------------


# An analysis's spec (one file each in analyses/) types the fields that name study keys as
# `StudyKey` (or a list of them, or `Where`): the keys are checked against the study's keys
# before anything runs (`study_keys`), whatever the analysis calls its fields.
STUDY_KEY = "study key"
StudyKey = Annotated[str, STUDY_KEY]
Where = Annotated[dict[str, Any], STUDY_KEY]  # the keys of the mapping are study keys


def _names_keys(tp: Any) -> bool:
    """True when the type hint is (a union or list of) one annotated as study keys."""
    if typing.get_origin(tp) is Annotated:
        return STUDY_KEY in tp.__metadata__
    return any(_names_keys(arg) for arg in typing.get_args(tp))


def study_keys(spec: Any) -> list[str]:
    """The study keys an analysis's spec names: the values of its `StudyKey` fields (and lists
    of them) and the keys of its `Where` mappings."""
    hints = typing.get_type_hints(type(spec), include_extras=True)
    keys: list[str] = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if value is None or not _names_keys(hints[f.name]):
            continue
        keys += list(value) if isinstance(value, (list, dict)) else [value]
    return keys


# ---------------------------------------------------------------------------------------------
# replicates: {min, max, until: decided}: seeds added round by round (biasbench/sequential.py).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicatesSpec:
    """Every cell starts with `min` replicates; after each round the comparisons of
    `analysis.pairs` still undecided get `step` more seeds on both sides, until the
    group-sequential test decides or `max` is reached."""

    min: int
    max: int
    until: Literal["decided"]
    step: int = 1
    alpha: float = 0.05

    def check(self, where: str) -> None:
        from biasbench.sequential import MAX_LOOK

        if not 2 <= self.min <= self.max <= MAX_LOOK:
            raise UserError(f"`{where}` needs 2 <= min <= max <= {MAX_LOOK} (a t-test needs 2 seeds), got min "
                            f"{self.min}, max {self.max}")
        if self.step < 1:
            raise UserError(f"`{where}.step` must be at least 1, got {self.step}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"`{where}.alpha` must be between 0 and 0.5, got {self.alpha}")


# ---------------------------------------------------------------------------------------------
# match: capacity-matched cells, their `solve` key solved against a reference cell (match.py).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchSpec:
    """Every cell that `cells` selects writes `match` as its `solve` value (an integer option: a
    width); it is solved so that the cell's parameter count (or FLOPs) equals its reference
    cell's within `tolerance` (relative). The reference is the cell `to` selects that shares
    every key outside the zip group of `cells`' keys, and the `share` keys (like `pairs.match`)."""

    solve: str
    cells: dict[str, Any]
    to: dict[str, Any]
    share: list[str] = field(default_factory=list)
    by: Literal["params", "flops"] = "params"
    tolerance: float = 0.01


# ---------------------------------------------------------------------------------------------
# launcher: where the runs go on a Slurm cluster (command-line options override these).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LauncherSpec:
    partition: str | None = None
    time: int | str | None = None  # minutes, or Slurm's "HH:MM:SS" / "D-HH:MM:SS"
    # One run on several tasks (data-parallel ranks, biasbench.distributed): `nodes` x
    # `tasks_per_node`, which defaults to `gpus_per_node` (one task per device).
    nodes: int | None = None
    tasks_per_node: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None  # most array tasks running at once
    max_num_timeout: int = 3  # requeues after a time limit before giving up (submitit's default)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load ...)
    additional: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}


def tasks_per_run(launcher: LauncherSpec) -> tuple[int, int]:
    """(nodes, tasks per node) of one run: one task per GPU unless `tasks_per_node` says."""
    for key, least in (("nodes", 1), ("tasks_per_node", 1), ("gpus_per_node", 0), ("cpus_per_task", 1)):
        value = getattr(launcher, key)
        if value is not None and value < least:
            raise UserError(f"`launcher.{key}` must be at least {least}, got {value}")
    return launcher.nodes or 1, launcher.tasks_per_node or launcher.gpus_per_node or 1


def time_minutes(value: int | str | None) -> int | None:
    """Slurm's time formats -> whole minutes (rounded up): 90, "90", "MM:SS", "HH:MM:SS", "D-HH",
    "D-HH:MM", "D-HH:MM:SS"."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        days, dash, clock = text.partition("-") if "-" in text else ("0", "", text)
        parts = [int(p) for p in clock.split(":")]
        if dash:  # D-HH[:MM[:SS]]
            if len(parts) > 3:
                raise ValueError
            hours, minutes, seconds = (parts + [0, 0])[:3]
        else:  # MM, MM:SS or HH:MM:SS
            if len(parts) > 3:
                raise ValueError
            hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else (0, *(parts + [0])[:2])
        total = int(days) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
        if total <= 0:
            raise ValueError
        return total
    except ValueError:
        raise UserError(f"launcher time `{value}` must be minutes or Slurm's HH:MM:SS / D-HH:MM:SS") from None
