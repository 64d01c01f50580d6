"""`tune:`: an equal tuning budget per arm, searched with Optuna, before the replicates run.

    tune:
      arms: model.variant            # the compared key: every cell is one search
      space:                         # dotted recipe keys
        optim.lr: {log_uniform: [1.0e-4, 1.0]}
        optim.weight_decay: {choice: [0.0, 1.0e-4, 5.0e-4]}
      trials: 16                     # per cell, the same for every cell
      metric: val_acc                # validation only: the trials never build the test split
      sampler: tpe                   # tpe | random | grid
      epochs: 5                      # optional shorter budget per trial

Every cell of the study is one search (a cell of each arm value within each combination of
the other keys), so each arm gets the same number of trials on the same data and model. A
trial is an ordinary run (`runner.train_one`, driven by tune_search.py) in DIR/tune/CELL/trial_NNN/seedS, its parameters
applied as recipe overrides and `data.test_split: false`: the test split is dropped as soon as
the data set is built, so no trial can read it. Optuna asks for the parameters and is told the
trial's best validation value (`ask`/`tell`), its state kept in DIR/tune/journal.log (Optuna's
journal file storage, locked across processes): running the sweep again goes on where it
stopped: finished trials are kept, a trial stopped half way resumes from its checkpoint, and
`trials` may grow (not shrink). Each cell's best values are then merged into its recipe, and
the replicates run as without `tune:`; DIR/study.json records the values and every trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from biasbench import render
from biasbench.errors import UserError
from biasbench.fsutil import atomic_write, ensure_dir
from biasbench.recipe import Recipe, apply_overrides, from_dict
from biasbench.results import higher_is_better
from biasbench.study.specs import read_spec

if TYPE_CHECKING:
    from biasbench.study.schema import Cell, Study

TUNE_DIR = "tune"
JOURNAL = "journal.log"
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "log_int", "choice")
FIXED_KEYS = ("train.epochs", "train.replicates", "train.seed", "data.test_split")  # the budget and the split
LINE_WIDTH = 80


@dataclass(frozen=True)
class TuneSpec:
    arms: str
    space: dict[str, Any]
    trials: int
    metric: str
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    epochs: int | None = None  # None: the recipe's train.epochs
    seed: int = 0  # the sampler's seed (the same for every cell: the arms start from the same draws)

    def identity(self) -> dict[str, Any]:
        """What a stored search must agree with to be continued (all but the trial count)."""
        return {k: v for k, v in asdict(self).items() if k != "trials"}


# ---------------------------------------------------------------------------------------------
# Reading and checking `tune:` (load_study calls `read_tune`).
# ---------------------------------------------------------------------------------------------


def read_tune(doc: dict[str, Any], cells: list[Cell], keys: list[str], varying: list[str],
              set_keys: list[str]) -> TuneSpec | None:
    """`tune:` of a study document, checked against its cells; every problem is one UserError."""
    if doc.get("tune") is None:
        return None
    spec = read_spec(TuneSpec, doc["tune"], "tune")
    if spec.trials < 1:
        raise UserError(f"`tune.trials` must be at least 1, got {spec.trials}")
    if spec.epochs is not None and spec.epochs < 1:
        raise UserError(f"`tune.epochs` must be at least 1 (or left out: the recipe's epochs), got {spec.epochs}")
    if not spec.metric.startswith(("val_", "ema_val_")):
        raise UserError(f"`tune.metric` must be a validation metric such as val_acc or val_loss (the trials never "
                        f"read the test split), got `{spec.metric}`")
    if spec.arms not in varying:
        raise UserError(f"`tune.arms` must name a grid or zip key that varies (the compared arms), got "
                        f"`{spec.arms}`; varying keys: {', '.join(varying) or 'none'}")
    if not spec.space:
        raise UserError("`tune.space` is empty: give at least one dotted recipe key and its distribution, e.g. "
                        "optim.lr: {log_uniform: [1.0e-4, 1.0]}")
    for key, raw in spec.space.items():
        _check_space_key(str(key), keys, set_keys)
        distribution(str(key), raw)
    if spec.sampler == "grid":
        size = grid_size(spec)
        if spec.trials > size:
            raise UserError(f"`tune.trials` is {spec.trials}, but the grid of `tune.space` has {size} points: a grid "
                            f"sampler would repeat them; give trials: {size} or fewer")
    for cell in cells:
        data = cell.recipe.data
        if not (data.val_fraction or data.val_folds):
            raise UserError(f"cell `{cell.name}` has no validation split (data.val_fraction: 0), so tuning would "
                            "have to read the test split; give data.val_fraction > 0")
        trial_recipe(cell, probe(spec), spec, Path("."), 0)  # every key applies to every cell's recipe
    return spec


def _check_space_key(key: str, keys: list[str], set_keys: list[str]) -> None:
    if "." not in key:
        raise UserError(f"`tune.space.{key}` must be a dotted recipe key such as optim.lr")
    if key in keys:
        raise UserError(f"`tune.space.{key}` is also a grid or zip key; a key is either compared or tuned")
    if key in set_keys:
        raise UserError(f"`tune.space.{key}` is fixed in `set`; a key is either fixed or tuned")
    if key in FIXED_KEYS or key.startswith("output."):
        raise UserError(f"`tune.space.{key}` cannot be tuned: it sets the budget, the split or where runs go")


def distribution(key: str, raw: Any) -> Any:
    """`{log_uniform: [lo, hi]}`, `{uniform: [lo, hi]}`, `{int: [lo, hi]}`, `{log_int: [lo, hi]}`
    or `{choice: [values]}` -> an Optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"tune.space.{key}"
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise UserError(f"`{where}` must be one of {{{': [..]}, {'.join(DISTRIBUTIONS)}: [..]}}, got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args or not all(v is None or isinstance(v, (bool, int, float, str))
                                                              for v in args):
            raise UserError(f"`{where}.choice` must be a non-empty list of numbers, strings, booleans or null, "
                            f"got {args!r}")
        if len({json.dumps(v) for v in args}) != len(args):
            raise UserError(f"`{where}.choice` lists a value twice: {args!r}")
        return CategoricalDistribution(args)
    integer = kind in ("int", "log_int")
    number = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if integer else \
        (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not isinstance(args, list) or len(args) != 2 or not all(number(v) for v in args) or not args[0] < args[1]:
        what = "integers" if integer else "numbers"
        raise UserError(f"`{where}.{kind}` must be [low, high], two {what} with low < high, got {args!r}")
    if kind.startswith("log") and args[0] <= 0:
        raise UserError(f"`{where}.{kind}` needs a positive low end (a log scale), got {args!r}")
    if integer:
        return IntDistribution(args[0], args[1], log=kind == "log_int")
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "log_uniform")


def grid_values(spec: TuneSpec) -> dict[str, list[Any]]:
    """The grid sampler's points per key: the choices, or every integer of an int range."""
    out = {}
    for key, raw in spec.space.items():
        kind, args = next(iter(raw.items()))
        if kind == "choice":
            out[key] = list(args)
        elif kind in ("int", "log_int"):
            out[key] = list(range(args[0], args[1] + 1))
        else:
            raise UserError(f"`tune.sampler: grid` needs a finite grid: `tune.space.{key}` is {kind}; give "
                            "{choice: [...]} (or an int range), or use sampler tpe or random")
    return out


def grid_size(spec: TuneSpec) -> int:
    return math.prod(len(v) for v in grid_values(spec).values())


def probe(spec: TuneSpec) -> dict[str, Any]:
    """One value per tuned key (the low end, or the first choice): to check the keys apply."""
    return {key: next(iter(raw.values()))[0] for key, raw in spec.space.items()}


def trial_recipe(cell: Cell, params: dict[str, Any], spec: TuneSpec, out: Path, number: int) -> Recipe:
    """A trial's recipe: the cell's, with the parameters, the trial's epochs, one replicate, no
    test split, placed in DIR/tune/CELL/trial_NNN."""
    overrides = {**params, "data.test_split": False, "train.replicates": 1,
                 "output.dir": str(Path(out) / TUNE_DIR / cell.name), "output.name": f"trial_{number:03d}"}
    if spec.epochs is not None:
        overrides["train.epochs"] = spec.epochs
    try:
        raw = apply_overrides(cell.recipe.to_dict(), overrides, origin="tune.space")
        return from_dict(raw, source=cell.recipe.source)
    except UserError as e:
        raise UserError(f"cell `{cell.name}`: {e}") from None


def with_values(cell: Cell, params: dict[str, Any]) -> Cell:
    """The cell with its search's best values in its recipe (the replicates train these)."""
    raw = apply_overrides(cell.recipe.to_dict(), params, origin=f"tune, cell `{cell.name}`")
    return replace(cell, recipe=from_dict(raw, source=cell.recipe.source))


# ---------------------------------------------------------------------------------------------
# The plan (sweep --dry-run).
# ---------------------------------------------------------------------------------------------


def plan_text(study: Study) -> str:
    spec = study.tune
    cells = study.cell_count()
    epochs = spec.epochs if spec.epochs is not None else "the recipe's"
    arms = sorted({str(c.values.get(spec.arms)) for c in study.cells})
    return (f"tuning first: {cells} searches (one per cell; arms {spec.arms}: {', '.join(arms)}) x {spec.trials} "
            f"trials x {epochs} epoch{'' if epochs == 1 else 's'} = {cells * spec.trials} trial runs "
            f"({spec.sampler} sampler, metric {spec.metric}, validation only, in tune/); then each cell's replicates "
            "below with its best values")


# ---------------------------------------------------------------------------------------------
# Shared with the search (tune_search.py).
# ---------------------------------------------------------------------------------------------


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def value_text(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)



def journal_path(out: Path) -> Path:
    return Path(out) / TUNE_DIR / JOURNAL


# ---------------------------------------------------------------------------------------------
# What the report and `compare` say.
# ---------------------------------------------------------------------------------------------


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def budget_text(record: dict[str, Any]) -> str:
    spec = record["spec"]
    epochs = f"up to {_epochs(spec['epochs'])}" if spec.get("epochs") else "the recipe's epochs"
    return f"{spec['trials']} trials of {epochs}"


def fairness_text(record: dict[str, Any] | None) -> str:
    """The tuning part of a comparison's fairness line."""
    if record is None:
        return "not tuned (each side trains its recipe's values)"
    spec = record["spec"]
    epochs = f" of up to {_epochs(spec['epochs'])}" if spec.get("epochs") else ""
    return f"tuned: {spec['trials']} trials per arm{epochs} ({spec['sampler']}, {spec['metric']})"


def best_so_far(trials: list[dict[str, Any]], higher: bool) -> list[float]:
    """The best value after each trial (NaN until a trial completes; a diverged trial keeps it)."""
    out: list[float] = []
    best = math.nan
    for t in trials:
        v = t["value"] if t["state"] == "complete" else None
        if v is not None and (math.isnan(best) or (v > best if higher else v < best)):
            best = v
        out.append(best)
    return out


def tuning_blocks(record: dict[str, Any], figs: Path) -> list[tuple[str, Any]]:
    """The report's Tuning section: the sentence, the best-so-far figure, the chosen values."""
    import matplotlib.pyplot as plt

    spec = record["spec"]
    metric, higher = spec["metric"], higher_is_better(spec["metric"])
    cells = record["cells"]
    arms = list(dict.fromkeys(str(c["arm"]) for c in cells.values()))
    color = render.colors(arms)
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    seen: dict[str, int] = {}
    for name, c in cells.items():
        curve = best_so_far(c["trials"], higher)
        n = seen[str(c["arm"])] = seen.get(str(c["arm"]), -1) + 1  # several cells of one arm: other dashes
        xs = range(1, len(curve) + 1)
        ax.plot(xs, curve, styles[n % len(styles)], drawstyle="steps-post", marker="o", markersize=5,
                color=color[str(c["arm"])], label=name)
        done = [(x, t["value"]) for x, t in zip(xs, c["trials"]) if t["state"] == "complete"]
        ax.scatter([x for x, _ in done], [v for _, v in done], s=24, marker="x", color=color[str(c["arm"])],
                   alpha=0.6)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric} so far (x: each trial)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = ensure_dir(Path(figs)) / "tuning.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))  # as report.py
    plt.close(fig)
    keys = list(spec["space"])
    rows = [[name, str(c["arm"]), *[value_text(c["params"].get(k)) for k in keys], f"{c['value']:.4g}",
             str(c["trial"] + 1)] for name, c in cells.items()]
    return [
        ("p", f"Each arm had {budget_text(record)} ({spec['sampler']} sampler, Optuna; metric {metric} on the "
              "validation split: the trials never built the test split). Each cell's replicates below trained its "
              "best values, on the full budget."),
        ("img", ("Best validation value so far against trials", path)),
        ("table", (["cell", short_key(spec["arms"]), *map(short_key, keys), f"best {metric}", "trial"], rows, None)),
    ]
