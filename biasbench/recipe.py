"""Recipes: YAML files validated into typed objects before anything runs.

A recipe has the sections `model`, `data`, `optim`, `schedule`, `train`, `output` (and an
optional `smoke` block of dotted overrides for a smoke-sized run). `extends: base.yaml` merges
this file over another one, so paper recipes share one protocol file. `--set a.b=value`
overrides single keys. Unknown keys, wrong types and impossible values are rejected with the
key path and a suggestion.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from biasbench.errors import UserError, did_you_mean

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
    augment: str = "none"  # named augmentation, see biasbench.data.augment
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
    name: Literal["constant", "multistep", "cosine"] = "constant"
    per: Literal["step", "epoch"] = "epoch"
    milestones: list[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up, from warmup_start_lr to lr
    warmup_start_lr: float = 0.0
    min_lr: float = 0.0  # floor of the cosine schedule


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
    # The lean GPU path (ignored where they do not apply): bf16 autocast, channels_last memory
    # format for conv nets, and torch.compile of the model. fp16: autocast with a gradient
    # scaler (the DNRT authors' setting), CUDA only; on the CPU it trains in bf16 and says so.
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: str | None = None  # default: the recipe file's stem
    checkpoint: bool = True
    tensorboard: bool = False  # event files in RUN/tensorboard/ (pip install 'biasbench[tensorboard]')


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
]


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
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"recipe key `{path}` must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported recipe type {tp} at {path}")


def _to_dataclass(raw: dict[str, Any], cls: type, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise UserError(f"unknown recipe key `{full}`{did_you_mean(full, _all_paths(cls, path))}")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        p = f"{prefix}.{f.name}" if prefix else f.name
        out.append(p)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_all_paths(tp, p))
    return out


def known_keys() -> list[str]:
    """Every dotted key a recipe (or --set) may name."""
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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; `options` mappings stay whole (free-form keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("options", "variant_options"):
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


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"recipe `{path}` does not exist; recipes live in `recipes/`")
    if path.is_dir():
        raise UserError(f"recipe `{path}` is a folder; give a .yaml file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"recipe `{path}` is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"recipe `{path}` is not a text file") from None
    if raw is None:
        raise UserError(f"recipe `{path}` is empty")
    if not isinstance(raw, dict):
        raise UserError(f"recipe `{path}` must be a mapping of sections (model:, data:, ...)")
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
    raw = _read_yaml(path)
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
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], origin: str = "--set") -> dict[str, Any]:
    """Set dotted keys. A key must be a known recipe key, or live under an `options` mapping."""
    out = copy.deepcopy(raw)
    keys = known_keys()
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        free_form = any(p in ("options", "variant_options") for p in parts[:-1])
        if dotted not in keys and not free_form:
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
    recipe: Recipe = _to_dataclass(raw, Recipe, "")
    recipe.source = source
    for path, ok, msg in _CHECKS:
        section, key = path.split(".")
        value = getattr(getattr(recipe, section), key)
        if not ok(value):
            raise UserError(f"recipe key `{path}` {msg}, got {value!r}")
    fold, folds = recipe.data.val_fold, recipe.data.val_folds
    if fold is not None and not (folds and 0 <= fold < folds):
        raise UserError(f"recipe key `data.val_fold` is {fold}, but folds are 0..{folds - 1} "
                        f"(data.val_folds = {folds})" if folds else
                        "recipe key `data.val_fold` needs `data.val_folds` (K of a K-fold split), which is 0")
    for key in recipe.smoke:
        if key not in known_keys() and ".options." not in f".{key}" and "variant_options." not in key:
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
