"""Recipes: YAML files validated into typed objects before anything runs.

A recipe has the sections `model`, `data`, `optim`, `schedule`, `train`, `output` (and an
optional `smoke` block of dotted overrides for a smoke-sized run). `extends: base.yaml` merges
this file over another one, so paper recipes share one protocol file. `--set a.b=value`
overrides single keys. Files and `--set` values are read with YAML 1.2's number rules (`1e-3`
is a number) and a key given twice in one mapping is refused. Unknown keys, wrong types,
non-finite numbers and impossible values are rejected with the key path and a suggestion.
`recipe_yaml` writes a resolved recipe back as YAML that loads to the same recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from biasbench.errors import UserError, did_you_mean
from biasbench.yaml_bound import YamlTooLarge, check_expanded_size

# ---------------------------------------------------------------------------------------------
# The schema. Defaults here are the defaults of every recipe.
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = "mlp"
    variant: str = "baseline"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the model's builder
    variant_options: dict[str, Any] = field(default_factory=dict)  # passed to the variant


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # folder holding the data set's files (paper data sets)
    download: bool = False  # never on by default: CI machines have no internet
    val_fraction: float = 0.1  # validation split carved out of the training set
    val_folds: int = 0  # >0: K-fold validation split (the DAC paper uses 5) instead of a fraction
    val_fold: int | None = None  # which fold; None = replicate index mod val_folds
    split_seed: int = 0  # fixes the validation split independently of the run seed
    # false: the test split is dropped as soon as the data set is built: no test loader, metric or
    # prediction (a study's tuning trials, which must choose on validation data alone)
    test_split: bool = True
    augment: str = "none"  # named augmentation, see biasbench.data.augment
    augment_options: dict[str, Any] = field(default_factory=dict)  # the augmentation's settings (timm's)
    workers: int | None = None  # DataLoader processes for per-image pipelines (default: one per core, <= 8)
    options: dict[str, Any] = field(default_factory=dict)  # data set specific (size, image_size...)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # L2 in the loss, `l2 * sum(w**2)`, as the DAC paper does (Keras convention). Weights only.
    l2: float = 0.0
    # The optimiser's own weight decay (decoupled for AdamW, coupled for SGD/Adam). Weights only.
    weight_decay: float = 0.0
    # Separate settings for biases (and other non-weight parameters such as BN scales).
    bias_l2: float = 0.0
    bias_weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    # cosine: from lr (after warm-up) to min_lr at the last epoch. timm_cosine: timm's
    # CosineLRScheduler(warmup_prefix=False) as the DNRT authors drive it: the cosine runs on
    # absolute steps and reaches min_lr warmup_epochs before the end (epoch 280 of 300).
    name: Literal["constant", "multistep", "cosine", "timm_cosine"] = "constant"
    per: Literal["step", "epoch"] = "epoch"
    milestones: list[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up, from warmup_start_lr to lr
    warmup_start_lr: float = 0.0
    min_lr: float = 0.0  # floor of the cosine schedule


@dataclass
class EarlyStopConfig:
    """Stop when `metric` has not improved by more than `min_delta` for `patience` epochs."""

    metric: str = "val_loss"  # a validation (or training) metric of the history: *_loss falls, *_acc rises
    patience: int = 10  # epochs without improvement before stopping
    min_delta: float = 0.0  # smaller changes are no improvement


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (timm's ModelEmaV3, no warm-up)."""

    decay: float = 0.9998  # ema = decay * ema + (1 - decay) * weights, after every optimiser step


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    replicates: int = 1  # replicate r runs with seed + r
    grad_clip: float | None = None  # max global gradient norm
    label_smoothing: float = 0.0
    # Which parameters train (biasbench.bias_only): `all`, or groups joined by '+' from biases,
    # other, readout, weights; `biases` is bias-only learning over frozen random weights.
    trainable: str = "all"
    # `normal_fan_in` redraws every weight from N(0, 1/fan_in) (the bias-learning paper's option).
    weight_init: Literal["default", "normal_fan_in"] = "default"
    # The lean GPU path: bf16 autocast, channels_last memory format (image inputs only: refused
    # for others), and torch.compile of the model. fp16: autocast with a gradient
    # scaler (the DNRT authors' setting), CUDA only; on the CPU it trains in bf16 and says so.
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    # Long runs: gradients of N batches of batch_size summed before each optimiser step (one step
    # of N * batch_size), early stopping on a metric, and an EMA of the weights evaluated beside them.
    accumulate: int = 1
    early_stop: EarlyStopConfig | None = None
    ema: EmaConfig | None = None


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: str | None = None  # default: the recipe file's stem
    checkpoint: bool = True
    # Per-epoch loggers (biasbench.loggers, docs/loggers.md): metrics.csv, TensorBoard event files,
    # MLflow and W&B runs (pip install 'biasbench[tensorboard|mlflow|wandb]').
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["csv"])
    tags: dict[str, str] = field(default_factory=dict)  # tags of the trackers' runs (a study adds its cell)
    # Checkpoints within an epoch too: every "N steps" (optimiser steps) or every "N min" / "N s" /
    # "N h" of training; null: after each epoch only.
    checkpoint_every: str | int | None = None  # (a bare number is refused, saying which units)
    keep: int = 1  # the K newest checkpoints kept in RUN/checkpoints/ (1: checkpoint.pt alone)


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    smoke: dict[str, Any] = field(default_factory=dict)  # dotted overrides for --smoke
    gate: dict[str, Any] = field(default_factory=dict)  # CI gate rules, validated by biasbench.gate
    source: str | None = None  # the file it was read from (filled in by the loader)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _valid_trainable(spec: str) -> bool:
    from biasbench.bias_only import parse_trainable  # one list of groups, kept with their meaning

    try:
        parse_trainable(spec)
    except ValueError:
        return False
    return True


# Values that make no sense, checked after the types: (path, predicate, message).
_CHECKS: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("train.epochs", lambda v: v >= 1, "must be at least 1"),
    ("train.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("train.eval_batch_size", lambda v: v >= 1, "must be at least 1"),
    ("train.replicates", lambda v: v >= 1, "must be at least 1"),
    ("train.grad_clip", lambda v: v is None or v > 0, "must be positive (or null for none)"),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("train.trainable", lambda v: _valid_trainable(v),
     "must be `all` or groups joined by '+' from biases, other, readout, weights (e.g. biases+readout)"),
    ("optim.lr", lambda v: v > 0, "must be positive"),
    ("optim.momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    ("optim.eps", lambda v: v > 0, "must be positive"),
    ("schedule.warmup_start_lr", lambda v: v >= 0, "must be non-negative"),
    ("optim.l2", lambda v: v >= 0, "must be non-negative"),
    ("optim.weight_decay", lambda v: v >= 0, "must be non-negative"),
    ("optim.bias_l2", lambda v: v >= 0, "must be non-negative"),
    ("optim.bias_weight_decay", lambda v: v >= 0, "must be non-negative"),
    ("schedule.gamma", lambda v: v > 0, "must be positive"),
    ("schedule.warmup_epochs", lambda v: v >= 0, "must be non-negative"),
    ("schedule.min_lr", lambda v: v >= 0, "must be non-negative"),
    ("data.val_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("data.val_folds", lambda v: v == 0 or v >= 2, "must be 0 (use val_fraction) or at least 2"),
    ("data.workers", lambda v: v is None or v >= 0, "must be 0 or more (or null for one per core)"),
    ("output.loggers", lambda v: len(set(v)) == len(v), "names a logger twice"),
    ("output.tags", lambda v: all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
     "must map names to strings (quote numbers: cell: '3')"),
    ("output.name", lambda v: _one_folder_name(v),
     "must be one folder name, without `/` or `\\` and not `..` (it names the run's folder inside output.dir; "
     "choose where runs go with --out)"),
    ("train.accumulate", lambda v: v >= 1, "must be at least 1 (1: a step per batch)"),
    ("output.keep", lambda v: v >= 1, "must be at least 1 (1: checkpoint.pt alone)"),
    ("output.checkpoint_every", lambda v: v is None or (isinstance(v, str) and parse_every(v) is not None),
     "must be a number of steps or a time, e.g. `500 steps`, `10 min`, `90 s`, `2 h` (or null)"),
]

# Keys that were renamed: refused with the new spelling, where they would mean something.
_RENAMED = {"output.tensorboard": "output.loggers: [csv, tensorboard]"}


def _refuse_renamed(raw: dict[str, Any], origin: str = "recipe") -> dict[str, Any]:
    """`output.tensorboard: true` is refused with the new spelling; `false`, what results and
    checkpoints written before `output.loggers` record, is dropped (it is today's default)."""
    output = raw.get("output")
    if not isinstance(output, dict) or "tensorboard" not in output:
        return raw
    if output["tensorboard"] is not False:
        raise UserError(f"{origin} key `output.tensorboard` is now `{_RENAMED['output.tensorboard']}`")
    return {**raw, "output": {k: v for k, v in output.items() if k != "tensorboard"}}


def _one_folder_name(name: str | None) -> bool:
    """`output.name` stays inside output.dir: `../../x` or `/abs/x` would write anywhere."""
    return name is None or (name not in ("", ".", "..") and not any(c in name for c in "/\\\0"))


_EVERY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(steps?|s|sec|min|h)\s*$")
_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}


def parse_every(text: str) -> tuple[str, float] | None:
    """`500 steps` -> ("steps", 500); `10 min` -> ("seconds", 600); None when unreadable or zero."""
    match = _EVERY.match(text)
    if match is None or float(match[1]) <= 0:
        return None
    number, unit = float(match[1]), match[2]
    if unit.startswith("step"):
        return ("steps", number) if number.is_integer() else None
    return "seconds", number * _SECONDS[unit]


_STOP_METRIC = re.compile(r"^(ema_)?(val|train)_(loss|acc)$")


def _check_long_runs(recipe: Recipe) -> None:
    """The nested `train.early_stop` and `train.ema` mappings, and what they need of the rest."""
    stop, ema, out = recipe.train.early_stop, recipe.train.ema, recipe.output
    if stop is not None:
        if stop.metric.startswith(("test_", "ema_test_")):
            raise UserError(f"recipe key `train.early_stop.metric` is {stop.metric!r}: stopping on the test set "
                            "lets it choose the result; use a validation metric such as val_loss or val_acc")
        if not _STOP_METRIC.match(stop.metric):
            raise UserError(f"recipe key `train.early_stop.metric` must be val_loss, val_acc, train_loss or "
                            f"train_acc (ema_ before one of them with train.ema), got {stop.metric!r}")
        if stop.metric.startswith("ema_") and ema is None:
            raise UserError(f"recipe key `train.early_stop.metric` is {stop.metric!r}, but there is no EMA: "
                            "set train.ema.decay, or stop on the raw weights' metric")
        if stop.patience < 1:
            raise UserError(f"recipe key `train.early_stop.patience` must be at least 1, got {stop.patience!r}")
        if stop.min_delta < 0:
            raise UserError(f"recipe key `train.early_stop.min_delta` must be non-negative, got {stop.min_delta!r}")
    if ema is not None and not 0 < ema.decay < 1:
        raise UserError(f"recipe key `train.ema.decay` must be in (0, 1), got {ema.decay!r}")
    if not out.checkpoint:
        for key, value, default in (("checkpoint_every", out.checkpoint_every, None), ("keep", out.keep, 1)):
            if value != default:
                raise UserError(f"recipe key `output.{key}` needs checkpoints, but output.checkpoint is false; "
                                f"drop output.{key} or set output.checkpoint: true")


# ---------------------------------------------------------------------------------------------
# Converting a plain dict into the typed recipe, with key paths in every message.
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"recipe key `{path}` must be a mapping, got {type(value).__name__}")
        return _to_dataclass(value, tp, path)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        section = _optional_section(tp)
        if section is not None and value is not None:  # a mapping's own messages name its keys
            return _convert(value, section, path)
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except UserError:
                continue
        raise UserError(f"recipe key `{path}` must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(
                f"recipe key `{path}` must be one of {', '.join(map(str, choices))}, "
                f"got {value!r}{did_you_mean(str(value), map(str, choices))}"
            )
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"recipe key `{path}` must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"recipe key `{path}` must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise UserError(f"recipe key `{path}` must have {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise UserError(f"recipe key `{path}` must be null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"recipe key `{path}` must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"recipe key `{path}` must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"recipe key `{path}` must be a number, got {value!r}")
        if not math.isfinite(value):  # no recipe number means anything as inf or nan
            raise UserError(f"recipe key `{path}` must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"recipe key `{path}` must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe type {tp} at {path}")


def _optional_section(tp: Any) -> type | None:
    """The dataclass of an optional section (`EmaConfig | None`), else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """{field: resolved type} of a schema dataclass. Resolving type hints is slow (ms per
    class), so it happens once per class per process, not once per key per load."""
    return typing.get_type_hints(cls)


def _to_dataclass(raw: dict[str, Any], cls: type, path: str) -> Any:
    hints = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise UserError(f"unknown recipe key `{full}`{did_you_mean(full, _all_paths(cls, path))}")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


@functools.cache
def _all_paths(cls: type, prefix: str = "") -> tuple[str, ...]:
    out: list[str] = []
    for name, tp in _field_types(cls).items():
        p = f"{prefix}.{name}" if prefix else name
        out.append(p)
        section = tp if dataclasses.is_dataclass(tp) else _optional_section(tp)
        if section is not None:
            out.extend(_all_paths(section, p))
    return tuple(out)


def known_keys() -> tuple[str, ...]:
    """Every dotted key a recipe (or --set) may name (cached: `_all_paths` is)."""
    return _all_paths(Recipe)


# ---------------------------------------------------------------------------------------------
# What makes two runs the same experiment (compare's groups, the gate's reference, --resume).
# ---------------------------------------------------------------------------------------------

# Keys that say where, how often or how fast something ran, not what ran. channels_last and
# compile change speed, not results (amp changes numerics: it is part of the experiment).
RESULT_NEUTRAL_KEYS = frozenset({
    "output", "gate", "smoke", "source", "data.root", "data.download", "data.workers", "train.seed",
    "train.replicates", "train.eval_batch_size", "train.channels_last", "train.compile",
})


# Mappings whose keys the schema does not know (the model's, the variant's, the data set's and the
# augmentation's own settings, checked by them): `--set` may name any key below them.
FREE_FORM = frozenset({"options", "variant_options", "augment_options"})


def _free_form(dotted: str) -> bool:
    return any(part in FREE_FORM for part in dotted.split(".")[:-1])


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; free-form mappings (`options`) stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in FREE_FORM:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_DEFAULTS: dict[str, Any] | None = None


def experiment_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a recorded recipe that define what ran. A key added to the schema
    after the file was written counts as today's default, so old results stay comparable."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = flatten(Recipe().to_dict())
    flat = {**_DEFAULTS, **flatten(recipe)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in sorted(flat.items())
            if k not in RESULT_NEUTRAL_KEYS and k.split(".")[0] not in RESULT_NEUTRAL_KEYS}


# ---------------------------------------------------------------------------------------------
# Reading files: YAML, `extends:`, `--set`, `--smoke`.
# ---------------------------------------------------------------------------------------------


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (YAML requires unique keys; PyYAML keeps the last)."""

    def __init__(self, key: str, first: yaml.Mark, second: yaml.Mark):
        super().__init__(None, None, f"key `{key}` is given twice in one mapping, at lines {first.line + 1} "
                         f"and {second.line + 1}; keep one", second)
        self.key = key
        self.marks = first, second

    def __reduce__(self):  # rebuilt with its own arguments after crossing a process boundary
        return type(self), (self.key, *self.marks)


_LOADER_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when installed

# YAML 1.2 core-schema numbers (PyYAML implements YAML 1.1, where `1e-3` and `1e8` are strings
# and `010` is octal), plus Python's digit grouping `1_000`. Booleans and null stay as in 1.1.
_DIGITS = r"[0-9](?:_?[0-9])*"
_INT = re.compile(rf"^(?:[-+]?{_DIGITS}|[-+]?0x[0-9a-fA-F](?:_?[0-9a-fA-F])*|[-+]?0o[0-7](?:_?[0-7])*"
                  rf"|[-+]?0b[01](?:_?[01])*)$")
_FLOAT = re.compile(rf"^(?:[-+]?(?:{_DIGITS}\.(?:{_DIGITS})?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?"
                    rf"|[-+]?{_DIGITS}[eE][-+]?{_DIGITS}"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_DROPPED_TAGS = (_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp")  # 1.2 has no implicit dates


def _yaml12_resolvers() -> dict[str, list]:
    table = {first: [(tag, rx) for tag, rx in entries if tag not in _DROPPED_TAGS]
             for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for tag, rx, firsts in ((_INT_TAG, _INT, "-+0123456789"), (_FLOAT_TAG, _FLOAT, "-+0123456789.")):
        for ch in firsts:
            table.setdefault(ch, []).insert(0, (tag, rx))
    return table


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    digits = text.lstrip("+-").lower()
    return int(text, 0) if digits[:2] in ("0x", "0o", "0b") else int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).replace("_", "").lower()
    if text.endswith((".inf", ".nan")):
        return float(text.replace(".", ""))  # '-.inf' -> float('-inf')
    return float(text)


class RecipeLoader(_LOADER_BASE):  # type: ignore[misc, valid-type]
    """Safe YAML with 1.2 number rules, refusing a key given twice in one mapping."""

    yaml_implicit_resolvers = _yaml12_resolvers()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[str, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in first:
                raise DuplicateKeyError(key_node.value, first[key_node.value], key_node.start_mark)
            first[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep)


RecipeLoader.add_constructor(_INT_TAG, _construct_int)
RecipeLoader.add_constructor(_FLOAT_TAG, _construct_float)


class RecipeDumper(yaml.SafeDumper):
    """Writes what `RecipeLoader` reads back unchanged: quotes any string 1.2 reads as a number."""

    yaml_implicit_resolvers = RecipeLoader.yaml_implicit_resolvers


def parse_yaml(text: str) -> Any:
    """YAML text as recipes read it (1.2 numbers, duplicate keys refused, and refused before it is
    built if its aliases expand it past `yaml_bound`'s limit)."""
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_mapping(path: Path, what: str = "recipe", home: str = "recipes/", plural: str = "recipes",
                      empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file (1.2 numbers, duplicate keys refused) that must hold a mapping; every problem is
    one line naming the file as a `what` (a recipe, a study; `plural` for the shipped ones). An
    empty file (or one of comments only) is `{}` where `empty_ok` (a recipe: every default)."""
    if not path.exists():
        raise UserError(f"{what} `{path}` does not exist; the shipped {plural} are in `{home}`")
    if path.is_dir():
        raise UserError(f"{what} `{path}` is a folder; give a .yaml file")
    try:
        raw = parse_yaml(path.read_text())
    except YamlTooLarge as e:
        raise UserError(f"{what} `{path}` is refused: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{what} `{path}` is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} `{path}` is not a text file") from None
    if raw is None and empty_ok:
        return {}
    if raw is None:
        raise UserError(f"{what} `{path}` is empty")
    if not isinstance(raw, dict):
        raise UserError(f"{what} `{path}` must be a mapping of sections (model:, data:, ...)" if what == "recipe"
                        else f"{what} `{path}` must be a mapping of keys")
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe as a dict, with `extends:` chains merged (the file wins over its base)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise UserError(f"recipe `{path}` extends itself through {' -> '.join(map(str, _seen))}")
    raw = read_yaml_mapping(path, empty_ok=True)  # README: an empty recipe means the defaults
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"recipe `{path}`: `extends` must be a file name, got {base!r}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.exists():
        raise UserError(f"recipe `{path}` extends `{base}`, which does not exist at `{base_path}`")
    return deep_merge(load_raw(base_path, (*_seen, path.resolve())), raw)


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=0.05` -> ('optim.lr', 0.05); the value is read as YAML."""
    if "=" not in text:
        raise UserError(f"--set `{text}` must look like key.path=value, e.g. optim.lr=0.05")
    key, _, value = text.partition("=")
    key = key.strip()
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except DuplicateKeyError as e:
        raise UserError(f"--set `{text}`: key `{e.key}` is given twice; keep one") from None
    except YamlTooLarge as e:
        raise UserError(f"--set `{key}`: {e.problem}") from None
    except yaml.YAMLError:
        parsed = value  # not YAML (e.g. `a: b: c`): the text itself, as a string
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], origin: str = "--set") -> dict[str, Any]:
    """Set dotted keys. A key must be a known recipe key, or live under an `options` mapping."""
    out = copy.deepcopy(raw)
    keys = known_keys()
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if dotted in _RENAMED:
            raise UserError(f"{origin}: `{dotted}` is now `{_RENAMED[dotted]}`")
        if dotted not in keys and not _free_form(dotted):
            raise UserError(f"{origin}: unknown recipe key `{dotted}`{did_you_mean(dotted, keys)}")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise UserError(f"{origin}: `{dotted}` goes through `{p}`, which is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def from_dict(raw: dict[str, Any], source: str | None = None) -> Recipe:
    recipe: Recipe = _to_dataclass(_refuse_renamed(raw), Recipe, "")
    recipe.source = source
    for path, ok, msg in _CHECKS:
        section, key = path.split(".")
        value = getattr(getattr(recipe, section), key)
        if not ok(value):
            raise UserError(f"recipe key `{path}` {msg}, got {value!r}")
    _check_long_runs(recipe)
    if recipe.schedule.name == "timm_cosine" and recipe.schedule.per != "step":
        raise UserError("schedule `timm_cosine` moves every optimiser step (timm's t_in_epochs=False, as the DNRT "
                        "authors); set schedule.per: step")
    fold, folds = recipe.data.val_fold, recipe.data.val_folds
    if fold is not None and not (folds and 0 <= fold < folds):
        raise UserError(f"recipe key `data.val_fold` is {fold}, but folds are 0..{folds - 1} "
                        f"(data.val_folds = {folds})" if folds else
                        "recipe key `data.val_fold` needs `data.val_folds` (K of a K-fold split), which is 0")
    if not recipe.data.test_split and not (recipe.data.val_fraction or recipe.data.val_folds):
        raise UserError("recipe key `data.test_split` is false and the recipe has no validation split "
                        "(data.val_fraction is 0): a run would evaluate nothing; give data.val_fraction > 0")
    for key in recipe.smoke:
        if key not in known_keys() and not _free_form(key):
            raise UserError(f"recipe key `smoke.{key}` names no recipe key{did_you_mean(key, known_keys())}")
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> Recipe:
    """Read, merge `extends`, apply `--smoke` then `--set` overrides, validate."""
    path = Path(path)
    raw = load_raw(path)
    if smoke:
        smoke_block = raw.get("smoke") or {}
        if not isinstance(smoke_block, dict) or not smoke_block:
            raise UserError(f"recipe `{path}` has no `smoke:` block of overrides, so --smoke has nothing to do")
        raw = apply_overrides(raw, smoke_block, origin="smoke")
    if overrides:
        raw = apply_overrides(raw, dict(parse_override(o) for o in overrides))
    recipe = from_dict(raw, source=str(path))
    if recipe.output.name is None:
        recipe.output.name = path.stem + ("_smoke" if smoke else "")
    return recipe


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipe_document(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (every section, defaults filled in), without `source`."""
    doc = _plain(recipe.to_dict())
    doc.pop("source", None)
    return doc


class _Inline(list):
    """A list of scalars written on one line, `[0.9, 0.999]`."""


class _InlineMap(dict):
    """A small mapping of scalars written on one line, `{width: 16}`."""


RecipeDumper.add_representer(_Inline, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
RecipeDumper.add_representer(
    _InlineMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))


def _layout(value: Any, inline_width: int) -> Any:
    """Sections and long mappings as blocks, one key per line; short scalar lists and mappings inline."""
    if isinstance(value, dict):
        laid = {k: _layout(v, inline_width) for k, v in value.items()}
        scalars = all(not isinstance(v, (dict, list)) for v in value.values())
        return _InlineMap(laid) if scalars and len(str(value)) <= inline_width else laid
    if isinstance(value, list):
        scalars = all(not isinstance(v, (dict, list)) for v in value)
        return _Inline(value) if scalars else [_layout(v, inline_width) for v in value]
    return value


def recipe_yaml(recipe: Recipe, width: int = 72) -> str:
    """The resolved recipe as YAML that `load_recipe` reads back to the same recipe. Lines wrap
    at `width` between words and list items only (a single long path stays whole)."""
    doc = {section: _layout(body, 48) if isinstance(body, dict) and section not in ("smoke", "gate")
           else body for section, body in recipe_document(recipe).items()}
    doc = {k: (dict(v) if isinstance(v, _InlineMap) else v) for k, v in doc.items()}  # sections stay blocks
    return yaml.dump(doc, Dumper=RecipeDumper, sort_keys=False, width=width, default_flow_style=False,
                     allow_unicode=True)
