"""The study file: YAML, validated like a recipe, expanded into cells (one recipe each) before
anything runs.

    recipe: ../recipes/base/dac_sgemm.yaml     # the base recipe, relative to this file
    set: {train.epochs: 60}                    # overrides for every cell
    grid:                                      # cartesian product of these values
      model.options.depth: [5, 8, 12, 16]
    zip:                                       # groups of keys that vary together
      - model.variant: [baseline, dac]         # columns of equal length ...
        arm: [base, twin]
      - - {arm: base, model.options.width: 18} # ... or rows with the same keys
    exclude: [{model.options.depth: 16, arm: twin}]
    replicates: 5                              # or {min: 3, max: 20, until: decided} (rounds.py)
    match: {solve: model.options.width, cells: {arm: base}, to: {arm: twin}}   # match.py
    failure: {metric: val_loss, above: 1.0}    # failed trainings besides divergence
    analysis: {failures: {by: model.variant}}  # what the study report draws (specs.py)
    launcher: {partition: gpu, time: "04:00:00", gpus_per_node: 1}
    tune: {arms: model.variant, space: {optim.lr: {log_uniform: [1.0e-3, 0.3]}}, trials: 16, metric: val_acc}
    smoke: {grid: {model.options.depth: [2]}, replicates: 2}   # merged over the study by --smoke

Keys of `grid` and `zip` are dotted recipe keys, `recipe` (a per-cell base recipe), or *labels*:
plain words without a dot (`arm`, `layers`) that name cells and feed the analyses without
touching the recipe. Each cell's recipe is: the base recipe (with `extends:`), its `smoke:` block
under --smoke, then `set`, then the cell's values, then `replicates`; validated by the recipe
schema, so a wrong key or type is refused with the key path before any run starts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from biasbench.errors import UserError, did_you_mean
from biasbench.recipe import Recipe, apply_overrides, deep_merge, from_dict, known_keys, load_raw, read_yaml_mapping
from biasbench.study.analyses import ANALYSES, ordered
from biasbench.study.match import Matched, check_spec, selects, solve_matches
from biasbench.study.naming import MAX_NAME, cell_names
from biasbench.study.specs import (
    Failure,
    LauncherSpec,
    MatchSpec,
    ReplicatesSpec,
    read_spec,
    tasks_per_run,
    time_minutes,
)
from biasbench.study.tune import TuneSpec, read_tune

TOP_KEYS = ("recipe", "set", "grid", "zip", "exclude", "replicates", "match", "tune", "failure", "analysis",
            "launcher", "smoke")
RECIPE_KEY = "recipe"  # a grid/zip key naming each cell's base recipe


@dataclass(frozen=True)
class Cell:
    """One point of the study: its folder name, its study-key values, its validated recipe."""

    name: str
    values: dict[str, Any]  # every grid and zip key of this cell (recipe keys, labels, `recipe`)
    recipe: Recipe  # output.name is the cell's name; the sweep places output.dir

    def value(self, key: str) -> Any:
        """A study key's value, or any dotted key of the cell's recipe (`data.name`)."""
        if key in self.values:
            return self.values[key]
        node: Any = self.recipe.to_dict()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        return node

    def seeds(self) -> list[tuple[int, int]]:
        """(replicate, seed) of every run of this cell: replicate r uses train.seed + r."""
        return [(r, self.recipe.train.seed + r) for r in range(self.recipe.train.replicates)]


@dataclass(frozen=True)
class CellPlan:
    """Every cell of a large study, counted without building each one's recipe (`--dry-run`):
    cell i is named `names[i]`, has the study-key values `values[i]`, and its model, data and
    train sections (what the cost reads) are those of `Study.cells[group[i]]`."""

    names: list[str]
    values: list[dict[str, Any]]
    group: list[int]


@dataclass
class Study:
    path: Path
    smoke: bool
    doc: dict[str, Any]  # the study as read (smoke section merged over it under --smoke)
    cells: list[Cell]
    keys: list[str]  # grid and zip keys, in file order
    varying: list[str]  # the keys that take more than one value
    naming: list[str]  # the varying keys that tell cells apart (the others follow them): cell names
    zip_groups: list[list[str]]
    failure: Failure | None
    analyses: dict[str, Any]  # name -> spec (study/analyses/)
    launcher: LauncherSpec
    labels: list[str] = field(default_factory=list)
    plan: CellPlan | None = None  # set when `cells` holds only representatives (load_study's plan_over)
    matches: list[Matched] = field(default_factory=list)  # capacity-matched cells (`match:`), solved
    sequential: ReplicatesSpec | None = None  # replicates: {min, max, until: decided}
    tune: TuneSpec | None = None  # `tune:` (tune.py): a search per cell before the replicates
    tuned: dict[str, Any] | None = None  # after the searches: what DIR/study.json records under `tune`

    @property
    def name(self) -> str:
        return self.path.stem + ("_smoke" if self.smoke else "")

    def run_count(self) -> int:
        if self.plan is not None:
            return sum(self.cells[g].recipe.train.replicates for g in self.plan.group)
        return sum(c.recipe.train.replicates for c in self.cells)

    def cell_count(self) -> int:
        return len(self.plan.names) if self.plan is not None else len(self.cells)

    def zipped_with(self, key: str) -> list[str]:
        """The keys that vary together with `key` (its zip group), `key` included."""
        return next((g for g in self.zip_groups if key in g), [key])

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)


# ---------------------------------------------------------------------------------------------
# Reading and checking the document.
# ---------------------------------------------------------------------------------------------


def _read_study(path: Path) -> dict[str, Any]:
    doc = read_yaml_mapping(path, "study", "studies/", "studies")
    for key in doc:
        if key not in TOP_KEYS:
            raise UserError(f"study `{path}`: unknown key `{key}`{did_you_mean(str(key), TOP_KEYS)}; "
                            f"known: {', '.join(TOP_KEYS)}")
    return doc


def _merge_smoke(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    smoke = doc.get("smoke")
    if not smoke:
        raise UserError(f"study `{path}` has no `smoke:` section, so --smoke has nothing to do")
    if not isinstance(smoke, dict):
        raise UserError(f"study `{path}`: `smoke` must be a mapping of study keys, got {smoke!r}")
    for key in smoke:
        if key not in TOP_KEYS or key == "smoke":
            raise UserError(f"study `{path}`: unknown key `smoke.{key}`{did_you_mean(str(key), TOP_KEYS)}")
    return deep_merge(doc, smoke)  # mappings merge key by key; lists and values replace


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"study `{path}`: `{key}` must be a mapping, got {value!r}")
    return value


def _axes(doc: dict[str, Any], path: Path) -> tuple[list[list[dict[str, Any]]], list[list[str]]]:
    """Each grid key and each zip group as an axis: a list of rows (key -> value)."""
    axes: list[list[dict[str, Any]]] = []
    zip_first = "zip" in doc and list(doc).index("zip") < list(doc).index("grid") if "grid" in doc else False
    for key, values in _mapping(doc, "grid", path).items():
        if not isinstance(values, list):
            raise UserError(f"study `{path}`: `grid.{key}` must be a list of values (write [{values!r}] "
                            "for one value)")
        if not values:
            raise UserError(f"study `{path}`: `grid.{key}` is an empty list, so the study has no cells")
        axes.append([{str(key): v} for v in values])
    groups = doc.get("zip") or []
    if not isinstance(groups, list):
        raise UserError(f"study `{path}`: `zip` must be a list of groups (each a mapping of key -> list, "
                        f"or a list of rows), got {groups!r}")
    zip_groups = []
    for i, group in enumerate(groups):
        rows = _zip_rows(group, f"zip[{i}]", path)
        axes.append(rows)
        zip_groups.append(list(rows[0]))
    if zip_first:  # cells and their names follow the file's order of grid and zip
        n_grid = len(axes) - len(zip_groups)
        axes = axes[n_grid:] + axes[:n_grid]
    return axes, zip_groups


def _zip_rows(group: Any, where: str, path: Path) -> list[dict[str, Any]]:
    if isinstance(group, dict):  # columns: key -> list of values, all of one length
        lengths = {}
        for key, values in group.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"study `{path}`: `{where}.{key}` must be a non-empty list of values")
            lengths[key] = len(values)
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise UserError(f"study `{path}`: the lists of `{where}` vary together and need one length ({sizes})")
        n = next(iter(lengths.values()), 0)
        rows = [{str(k): v[i] for k, v in group.items()} for i in range(n)]
    elif isinstance(group, list):  # rows: mappings with the same keys
        rows = []
        for j, row in enumerate(group):
            if not isinstance(row, dict) or not row:
                raise UserError(f"study `{path}`: `{where}[{j}]` must be a mapping of key -> value")
            if rows and set(row) != set(rows[0]):
                raise UserError(f"study `{path}`: `{where}[{j}]` has keys {sorted(map(str, row))}, but "
                                f"`{where}[0]` has {sorted(rows[0])}; every row of a group sets the same keys")
            rows.append({str(k): v for k, v in row.items()})
    else:
        raise UserError(f"study `{path}`: `{where}` must be a mapping of key -> list or a list of rows")
    if not rows:
        raise UserError(f"study `{path}`: `{where}` is empty, so the study has no cells")
    return rows


def _check_keys(keys: list[str], base: dict[str, Any], set_keys: list[str], path: Path) -> list[str]:
    """Every grid/zip key appears once; labels (no dot) must not shadow a recipe key."""
    seen: set[str] = set()
    labels = []
    option_names = set((base.get("model") or {}).get("options") or {})
    recipe_words = {k.split(".")[-1] for k in known_keys()} | option_names | {"model", "data", "optim",
                                                                              "schedule", "train", "output"}
    for key in keys:
        if key in seen:
            raise UserError(f"study `{path}`: `{key}` varies in two places (grid and zip, or two zip groups); "
                            "give it in one")
        seen.add(key)
        if key in set_keys:
            raise UserError(f"study `{path}`: `{key}` is fixed in `set` and varies in grid/zip; keep one")
        if key.startswith("output."):
            raise UserError(f"study `{path}`: `{key}` cannot vary: the sweep places every run under --out DIR")
        if "." not in key and key != RECIPE_KEY:
            if key in recipe_words:
                full = [k for k in known_keys() if k.endswith("." + key)] or [f"model.options.{key}"]
                raise UserError(f"study `{path}`: `{key}` has no dot, so it would be a label that changes no "
                                f"recipe key; write the full key (`{full[0]}`) or give the label another name")
            labels.append(key)
    return labels


# ---------------------------------------------------------------------------------------------
# Expansion: cells, their names, their recipes.
# ---------------------------------------------------------------------------------------------


def _exclude(points: list[dict[str, Any]], doc: dict[str, Any], keys: list[str], path: Path,
             smoke: bool) -> list[dict[str, Any]]:
    """Drop the cells an `exclude` entry matches; an entry matching nothing is a typo (except in
    the smoke form, whose smaller grid may not hold what the full study excludes)."""
    entries = doc.get("exclude") or []
    if not isinstance(entries, list):
        raise UserError(f"study `{path}`: `exclude` must be a list of mappings (key -> value), got {entries!r}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:
            raise UserError(f"study `{path}`: `exclude[{i}]` must be a mapping of key -> value")
        for key in entry:
            if key not in keys:
                raise UserError(f"study `{path}`: `exclude[{i}]` names `{key}`, which is not a grid or zip key"
                                f"{did_you_mean(str(key), keys)}")
        if not smoke and not any(selects(p, entry) for p in points):
            raise UserError(f"study `{path}`: `exclude[{i}]` ({entry}) matches no cell; check its values")
        points = [p for p in points if not selects(p, entry)]
    return points


def _recipe_path(value: Any, path: Path, where: str) -> Path:
    if not isinstance(value, str):
        raise UserError(f"study `{path}`: `{where}` must be a recipe file name, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else path.parent / p


def _cell_recipe(raw: dict[str, Any], values: dict[str, Any], doc: dict[str, Any], name: str,
                 source: Path, path: Path) -> Recipe:
    overrides = {k: v for k, v in values.items() if "." in k}
    if "replicates" in doc:  # a sequential study starts every cell at its minimum
        replicates = doc["replicates"]
        overrides["train.replicates"] = replicates["min"] if isinstance(replicates, dict) else replicates
    overrides["output.name"] = name
    try:
        raw = apply_overrides({k: v for k, v in raw.items() if k != "smoke"}, overrides,  # smoke: applied or not
                              origin=f"study `{path}`, grid/zip")
        return from_dict(raw, source=str(source))
    except UserError as e:
        raise UserError(f"study `{path}`, cell `{name}`: {e}") from None


def load_study(path: str | Path, smoke: bool = False, *, plan_over: int | None = None) -> Study:
    """Read, validate and expand a study file; any problem is one `UserError` before a run starts.

    `plan_over`: a study of more cells than this is counted, not built (`Study.plan`): every
    cell is named and checked for a unique folder, but a recipe is built and validated only for
    one cell per distinct model/data/train configuration and per grid or zip value (the sweep
    itself builds them all). A recipe takes about a millisecond; 100,000 would take minutes."""
    path = Path(path)
    doc = _read_study(path)
    if smoke:
        doc = _merge_smoke(doc, path)
    sequential = _sequential(doc, path)
    set_block = _mapping(doc, "set", path)
    for key in set_block:
        if str(key).startswith("output."):
            raise UserError(f"study `{path}`: `set.{key}`: the sweep places every run under --out DIR; "
                            "leave output keys out of the study")
    axes, zip_groups = _axes(doc, path)
    keys = [k for axis in axes for k in axis[0]]
    if doc.get(RECIPE_KEY) is None and RECIPE_KEY not in keys:
        raise UserError(f"study `{path}` names no base recipe: add `recipe: path/to/recipe.yaml`")
    points = [dict(itertools.chain.from_iterable(row.items() for row in combo)) for combo in itertools.product(*axes)]
    points = _exclude(points, doc, keys, path, smoke)
    if not points:
        raise UserError(f"study `{path}` expands to no runs (every cell is excluded); check `exclude`")
    bases = _BaseRecipes(path, smoke, set_block)
    labels = _check_keys(keys, bases.raw(points[0].get(RECIPE_KEY, doc.get(RECIPE_KEY)))[1], list(set_block), path)
    # Names come from the values as written (a solved key reads `match` there), so a solved
    # value never renames a cell; the solve itself happens before any cell is built.
    naming = name_keys(points, keys, _varying(points, keys), zip_groups)
    matches = _solve_matches(points, doc, keys, zip_groups, bases, path)
    varying = _varying(points, keys)
    plan = None
    if plan_over is not None and len(points) > plan_over and not matches:
        plan, chosen = _plan(points, naming, path)
        cells = _cells([points[i] for i in chosen], naming, doc, bases, path)
    else:
        cells = _cells(points, naming, doc, bases, path)
        matches = [replace(m, cell_name=cells[m.cell].name, reference_name=cells[m.reference].name)
                   for m in matches]
    _check_models(cells, path)
    failure = None
    if doc.get("failure") is not None:
        failure = read_spec(Failure, doc["failure"], "failure")
        failure.check("failure")
    launcher = read_spec(LauncherSpec, doc.get("launcher"), "launcher")
    time_minutes(launcher.time)
    tasks_per_run(launcher)
    try:
        tune = read_tune(doc, cells, keys, varying, list(set_block))
    except UserError as e:
        raise UserError(f"study `{path}`: {e}") from None
    return Study(path, smoke, doc, cells, keys, varying, naming, zip_groups, failure, _analyses(doc, cells, path),
                 launcher, labels, plan, matches, sequential, tune)


COST_SECTIONS = ("model.", "data.", "train.")  # what a cell's cost estimate reads, besides `recipe`


def _plan(points: list[dict[str, Any]], naming: list[str], path: Path) -> tuple[CellPlan, list[int]]:
    """Names of every point (one folder each) and the points whose recipes are built: the first
    of each distinct cost configuration, and the first holding each value of each key."""
    names = cell_names(points, naming)
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if first.setdefault(name, i) != i:
            raise UserError(f"study `{path}`: two cells map to one folder `{name}` ({points[first[name]]} and "
                            f"{points[i]}); make their values differ or drop one with `exclude`")
    if names and max(map(len, names)) > MAX_NAME:
        raise UserError(f"study `{path}`: cell folder names get too long ({max(map(len, names))} characters); "
                        "vary fewer keys or use short labels")
    # Values are told apart by identity: every point shares the value objects of the grid and zip
    # rows it was made from (ids are far cheaper than reprs; an equal copy only adds a group).
    cost_keys = [k for k in points[0] if k == RECIPE_KEY or k.startswith(COST_SECTIONS)]
    by_config: dict[tuple[int, ...], int] = {}
    chosen: dict[int, None] = {}
    seen_values: set[tuple[str, int]] = set()
    group_point = []
    for i, values in enumerate(points):
        group_point.append(by_config.setdefault(tuple(id(values[k]) for k in cost_keys), i))
        chosen.setdefault(group_point[-1])
        new = {(k, id(v)) for k, v in values.items()} - seen_values
        if new:
            seen_values |= new
            chosen.setdefault(i)
    order = sorted(chosen)
    index = {p: n for n, p in enumerate(order)}
    return CellPlan(names, points, [index[g] for g in group_point]), order


def _varying(points: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """The keys that take more than one value. Values are told apart by identity first (every
    point shares the value objects of the grid and zip rows it was made from), then by repr."""
    return [k for k in keys if len({repr(v) for v in {id(p[k]): p[k] for p in points}.values()}) > 1]


def _sequential(doc: dict[str, Any], path: Path) -> ReplicatesSpec | None:
    """`replicates`: a count, or {min, max, until: decided} (which needs the comparisons of
    `analysis.pairs` to decide)."""
    replicates = doc.get("replicates")
    if isinstance(replicates, dict):
        try:
            spec = read_spec(ReplicatesSpec, replicates, "replicates")
            spec.check("replicates")
        except UserError as e:
            raise UserError(f"study `{path}`: {e}") from None
        if "pairs" not in (doc.get("analysis") or {}):
            raise UserError(f"study `{path}`: `replicates: {{until: decided}}` decides the comparisons of "
                            "`analysis.pairs`, and the study has none; add one (by, baseline) or give a count")
        return spec
    if replicates is not None and (isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1):
        raise UserError(f"study `{path}`: `replicates` must be an integer of at least 1, or "
                        f"{{min, max, until: decided}}, got {replicates!r}")
    return None


def _solve_matches(points: list[dict[str, Any]], doc: dict[str, Any], keys: list[str],
                   zip_groups: list[list[str]], bases: _BaseRecipes, path: Path) -> list[Matched]:
    """`match:` solved on the points (their `match` values become numbers) before cells are named."""
    if doc.get("match") is None:
        return []
    spec = read_spec(MatchSpec, doc["match"], "match")
    try:
        check_spec(spec, keys, "match")

        def recipe_of(values: dict[str, Any]) -> Recipe:
            source, raw = bases.raw(values.get(RECIPE_KEY, doc.get(RECIPE_KEY)))
            return _cell_recipe(raw, values, doc, "match_probe", source, path)

        return solve_matches(points, spec, zip_groups, recipe_of)
    except UserError as e:
        raise UserError(f"study `{path}`: {e}") from None


def _check_models(cells: list[Any], path: Path) -> None:
    """Every cell's model and variant exist and apply (`models.check_model`): a pair that does
    not is refused before any run starts, not as an error in the middle of the sweep."""
    from biasbench.models import check_model

    seen = set()
    for cell in cells:
        m = cell.recipe.model
        key = repr((m.name, m.variant, m.variant_options, m.options))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_model(m.name, m.variant, m.variant_options, **m.options)
        except UserError as e:
            raise UserError(f"study `{path}`, cell `{cell.name}`: {e}") from None


class _BaseRecipes:
    """Base recipes read once each: `extends:` merged, the smoke block (under --smoke), `set`."""

    def __init__(self, study_path: Path, smoke: bool, set_block: dict[str, Any]):
        self.study_path, self.smoke, self.set_block = study_path, smoke, set_block
        self._cache: dict[Path, dict[str, Any]] = {}

    def raw(self, value: Any) -> tuple[Path, dict[str, Any]]:
        path = self.study_path
        source = _recipe_path(value, path, RECIPE_KEY)
        if source not in self._cache:
            try:
                raw = load_raw(source)
                block = raw.get("smoke") or {}
                if self.smoke and block:
                    raw = apply_overrides(raw, block, origin=f"recipe `{source}`, smoke")
                self._cache[source] = apply_overrides(raw, self.set_block, origin=f"study `{path}`, set")
            except UserError as e:
                raise UserError(f"study `{path}`: {e}") from None
        return source, self._cache[source]


def name_keys(points: list[dict[str, Any]], keys: list[str], varying: list[str],
              zip_groups: list[list[str]]) -> list[str]:
    """The keys that name cells: every grid key (one with a single value too, so that growing
    the grid later keeps the names of the cells already run), and of each zip group the keys,
    in order, that tell its rows apart (the others follow from them: `dataset=cifar10` names
    the row, its `data.root` need not)."""
    zipped = {k for g in zip_groups for k in g}
    naming = [k for k in keys if k not in zipped]
    for group in zip_groups:
        chosen: list[str] = []
        distinct = 1
        for key in (k for k in group if k in varying):  # a key joins when it tells more rows apart
            n = len({tuple(repr(p[k]) for k in [*chosen, key]) for p in points})
            if n > distinct:
                chosen.append(key)
                distinct = n
        naming += chosen
    return [k for k in keys if k in naming]  # the study file's order


def _cells(points: list[dict[str, Any]], naming: list[str], doc: dict[str, Any], bases: _BaseRecipes,
           path: Path) -> list[Cell]:
    """Name every point after its naming keys and build its recipe; refuse two points in one folder."""
    cells: list[Cell] = []
    by_name: dict[str, dict[str, Any]] = {}
    for values, name in zip(points, cell_names(points, naming), strict=True):
        if len(name) > MAX_NAME:
            raise UserError(f"study `{path}`: cell folder names get too long ({len(name)} characters); vary "
                            "fewer keys or use short labels")
        if name in by_name:
            raise UserError(f"study `{path}`: two cells map to one folder `{name}` ({by_name[name]} and {values}); "
                            "make their values differ or drop one with `exclude`")
        by_name[name] = values
        source, raw = bases.raw(values.get(RECIPE_KEY, doc.get(RECIPE_KEY)))
        cells.append(Cell(name, values, _cell_recipe(raw, values, doc, name, source, path)))
    return cells


def _analyses(doc: dict[str, Any], cells: list[Cell], path: Path) -> dict[str, Any]:
    out = {}
    for name, raw in _mapping(doc, "analysis", path).items():
        if name not in ANALYSES:
            raise UserError(f"study `{path}`: unknown analysis `analysis.{name}`{did_you_mean(str(name), ANALYSES)}; "
                            f"known: {', '.join(a.name for a in ordered())}")
        spec = ANALYSES[name].read(raw)
        for key in ANALYSES[name].keys(spec):
            for cell in cells:
                try:
                    cell.value(key)
                except KeyError:
                    known = [*sorted(cell.values), *known_keys()]
                    raise UserError(f"study `{path}`: `analysis.{name}` names `{key}`, which is neither a grid/zip "
                                    f"key nor a recipe key of cell `{cell.name}`{did_you_mean(key, known)}") from None
        where = getattr(spec, "where", {})
        if not any(selects({k: cell.value(k) for k in where}, where) for cell in cells):
            raise UserError(f"study `{path}`: `analysis.{name}.where` ({where}) selects no cell; check its values")
        out[name] = spec
    return out


def with_output_dir(cell: Cell, out: Path) -> Recipe:
    """The cell's recipe with its runs placed under `out` (out/CELL/seedS/), tagged with the
    study folder, the cell and the cell's values for the trackers (output.loggers)."""
    tags = {**cell.recipe.output.tags, "study": Path(out).name, "cell": cell.name,
            **{k: str(v) for k, v in cell.values.items()}}
    return replace(cell.recipe, output=replace(cell.recipe.output, dir=str(out), tags=tags))


def with_replicates(study: Study, counts: dict[str, int]) -> Study:
    """The study with some cells' replicate counts changed (a sequential study's next round)."""
    cells = [replace(c, recipe=replace(c.recipe, train=replace(c.recipe.train, replicates=counts[c.name])))
             if c.name in counts else c for c in study.cells]
    return replace(study, cells=cells)
