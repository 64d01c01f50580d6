"""Capacity-matched cells (`match:`): solve an integer option (a width) of each selected cell so
that its parameter count, or its FLOPs, equals a reference cell's within a stated tolerance.

    match:
      solve: model.options.width     # the selected cells write `match` as this key's value
      cells: {arm: wide}             # the cells solved
      to: {arm: dac}                 # their references
      share: [model.options.shape, units]   # keys zipped with `arm` that a pair shares too
      by: params                     # or flops
      tolerance: 0.01

Every model is built on the meta device and counted by `biasbench.count` (no tensor is
allocated, whatever the size), so solving a ResNet's width costs milliseconds per probe. The
search is a bisection on the count, which grows with the width; the nearest integer wins, and a
cell whose nearest value misses the tolerance is refused in one line before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from biasbench.errors import UserError
from biasbench.recipe import Recipe
from biasbench.study.specs import MatchSpec

MATCH = "match"  # the value a solved cell writes for `solve`
MAX_VALUE = 1 << 24  # no width is this large: the count does not grow with the key


def selects(values: dict[str, Any], where: dict[str, Any]) -> bool:
    """A cell's values match `where`: each key has the value, or one of a list of values."""
    for key, want in where.items():
        have = values.get(key)
        if isinstance(want, list) and not isinstance(have, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


@dataclass(frozen=True)
class Matched:
    """One solved cell: its `key` got `value`; params (and FLOPs when solved by them) of it and
    of its reference."""

    cell: int  # index into the study's points (cell names are given after solving)
    reference: int
    key: str
    value: int
    by: str
    tolerance: float
    params: int
    reference_params: int
    flops: int | None = None
    reference_flops: int | None = None
    cell_name: str = ""  # set once cells are named
    reference_name: str = ""

    @property
    def mismatch(self) -> float:
        """(achieved - target) / target of the quantity solved for."""
        got, want = (self.params, self.reference_params) if self.by == "params" else \
            (self.flops, self.reference_flops)
        return (got - want) / want if want else float("nan")  # type: ignore[operator]


class _Counter:
    """Parameter counts (and FLOPs) of recipes' models, built on the meta device, memoised."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], int]] = {}
        self._counts: dict[str, tuple[int, int | None]] = {}

    def __call__(self, recipe: Recipe, flops: bool) -> tuple[int, int | None]:
        from biasbench.count import count_built, data_shape
        from biasbench.models import build_model
        from biasbench.params import count_by_role

        m = recipe.model
        data_key = json.dumps(dataclasses.asdict(recipe.data), sort_keys=True, default=str)
        if data_key not in self._shapes:
            self._shapes[data_key] = data_shape(recipe.data)
        shape, outputs = self._shapes[data_key]
        key = json.dumps([m.name, m.variant, m.options, m.variant_options, shape, outputs, flops],
                         sort_keys=True, default=str)
        if key not in self._counts:
            def build() -> Any:
                return build_model(m.name, m.variant, num_classes=outputs, in_channels=shape[0],
                                   input_shape=shape, variant_options=m.variant_options, **m.options)
            if flops:
                counts = count_built(build, shape)
                self._counts[key] = (int(counts["params"]["total"]), int(counts["flops"]))
            else:
                import torch

                with torch.device("meta"):  # shapes only: a parameter count allocates nothing
                    net = build()
                self._counts[key] = (int(count_by_role(net)["total"]), None)
        return self._counts[key]


def check_spec(spec: MatchSpec, keys: list[str], where: str) -> None:
    for name, value in (("cells", spec.cells), ("to", spec.to)):
        if not value:
            raise UserError(f"`{where}.{name}` must select cells: a mapping of grid/zip key -> value")
    for key in [spec.solve, *spec.cells, *spec.to, *spec.share]:
        if key not in keys:
            raise UserError(f"`{where}` names `{key}`, which is not a grid or zip key of the study")
    if not spec.tolerance > 0:
        raise UserError(f"`{where}.tolerance` must be above 0 (a relative mismatch such as 0.01), "
                        f"got {spec.tolerance}")


def _reference(i: int, points: list[dict[str, Any]], spec: MatchSpec, zip_groups: list[list[str]],
               where: str) -> int:
    """The one `to` cell that shares every key outside the zip group of the selecting keys."""
    selecting = {*spec.cells, *spec.to}
    free = {spec.solve} | selecting | {k for g in zip_groups if selecting & set(g) for k in g}
    free -= set(spec.share)
    point = points[i]
    found = [j for j, q in enumerate(points) if j != i and selects(q, spec.to)
             and all(q[k] == point[k] for k in point if k not in free)]
    if len(found) != 1:
        shared = ", ".join(sorted(k for k in point if k not in free)) or "none"
        raise UserError(f"`{where}`: cell {_show(point)} has {len(found)} reference cells (the `to` cells "
                        f"sharing {shared}); it needs exactly one: add keys to `{where}.share`, or narrow `to`")
    if points[found[0]][spec.solve] == MATCH:
        raise UserError(f"`{where}`: the reference of cell {_show(point)} is itself solved; `cells` and `to` "
                        "must select different cells")
    return found[0]


def _show(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in point.items() if k != "recipe") + "}"


def _search(measure: Callable[[int], int], target: int, start: int) -> int:
    """The integer whose measure is nearest `target`, for a measure that grows with it."""
    lo, hi = 0, max(1, start)
    while measure(hi) < target:  # bracket: measure(lo) < target <= measure(hi)
        lo, hi = hi, hi * 2
        if hi > MAX_VALUE:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) >= target:
            hi = mid
        else:
            lo = mid
    return min((v for v in (lo, hi) if v >= 1), key=lambda v: (abs(measure(v) - target), v))


def solve_matches(points: list[dict[str, Any]], spec: MatchSpec, zip_groups: list[list[str]],
                  recipe_of: Callable[[dict[str, Any]], Recipe], where: str = "match") -> list[Matched]:
    """Solve every selected cell in place (its `match` becomes the value) and return the records."""
    solved = [i for i, p in enumerate(points) if selects(p, spec.cells)]
    if not solved:
        raise UserError(f"`{where}.cells` ({spec.cells}) selects no cell; check its values")
    for point in points:
        chosen, written = selects(point, spec.cells), point[spec.solve]
        if chosen and written != MATCH:
            raise UserError(f"`{where}` solves `{spec.solve}` of cell {_show(point)}, which gives it as "
                            f"{written!r}; write `{MATCH}` there")
        if not chosen and written == MATCH:
            raise UserError(f"cell {_show(point)} writes `{MATCH}` for `{spec.solve}`, but `{where}.cells` "
                            "does not select it")
    count, flops = _Counter(), spec.by == "flops"
    pairs = [(i, _reference(i, points, spec, zip_groups, where)) for i in solved]
    out = []
    for i, j in pairs:
        ref_params, ref_flops = count(recipe_of(points[j]), flops)
        target = ref_flops if flops else ref_params
        start = points[j][spec.solve]

        def measure(value: int, i: int = i) -> int:
            params, fl = count(recipe_of({**points[i], spec.solve: value}), flops)
            return fl if flops else params  # type: ignore[return-value]

        value = _search(measure, int(target), start if isinstance(start, int) and start >= 1 else 1)
        params, fl = count(recipe_of({**points[i], spec.solve: value}), flops)
        record = Matched(i, j, spec.solve, value, spec.by, spec.tolerance, params, ref_params, fl, ref_flops)
        if not abs(record.mismatch) <= spec.tolerance:
            raise UserError(f"`{where}`: no `{spec.solve}` gives cell {_show(points[i])} the {spec.by} of its "
                            f"reference within {spec.tolerance:g}: the nearest, {value}, is "
                            f"{record.mismatch:+.2%} off; loosen `{where}.tolerance` or choose another key")
        out.append(record)
    for record in out:
        points[record.cell][spec.solve] = record.value
    return out


def flops_of(recipe: Recipe) -> int:
    """FLOPs per sample of a recipe's model (counted on the meta device), for the fairness line."""
    return int(_Counter()(recipe, True)[1] or 0)
