"""Replicates until decided (`replicates: {min, max, until: decided}`): the sweep in rounds.

Round 1 trains every cell's `min` replicates. After each round every comparison of
`analysis.pairs` is tested at its look (`biasbench.sequential`: a group-sequential paired
t-test whose false-positive rate survives the repeated looks); a comparison that is decided,
or has reached `max`, stops; the cells of the others get `step` more seeds (a cell in several
comparisons gets what the most demanding one needs), and the next round trains only those.
The decisions are recorded in DIR/study.json under `sequential` (read by the study report).
Running the same command again replays the decisions from the runs on disk and goes on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from biasbench.errors import UserError
from biasbench.sequential import METHOD, Look, look, schedule
from biasbench.study.manifest import MANIFEST, Manifest
from biasbench.study.schema import Study, with_replicates

DECIDED, MAXIMUM, CONTINUING = "decided", "maximum", "continuing"


@dataclass(frozen=True)
class Decision:
    """Where one comparison stands after a round."""

    baseline: str  # cell names
    variant: str
    planned: int  # replicates both cells were asked for
    status: str  # decided | maximum | continuing
    why: str
    look: Look | None = None  # None: fewer than `min` usable paired seeds

    def record(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "variant": self.variant, "replicates": self.planned,
                "status": self.status, "why": self.why, "look": asdict(self.look) if self.look else None}


def decide(study: Study, out: Path) -> list[Decision]:
    """Test every comparison of `analysis.pairs` on the usable runs of its planned seeds."""
    from biasbench.study.analysis import check_metric, estimate, pair_cells, read_study_runs

    seq, spec = study.sequential, study.analyses["pairs"]
    assert seq is not None
    looks = schedule(seq.min, seq.max, seq.step)
    runs = read_study_runs(out)
    metric = runs.default_metric(spec.metric)
    check_metric(runs, metric, "pairs")  # a wrong name would leave every comparison without values
    planned = {c.name: c.recipe.train.replicates for c in study.cells}
    out_list = []
    for base, variant in pair_cells(runs, spec):
        n_plan = min(planned[base.name], planned[variant.name])
        b, v = estimate(base, metric, spec.estimator), estimate(variant, metric, spec.estimator)
        b_by_seed, v_by_seed = dict(zip(b.seeds, b.per_run)), dict(zip(v.seeds, v.per_run))
        seeds = sorted(s for s in b_by_seed if s in v_by_seed)[:n_plan]
        usable = [n for n in looks if n <= len(seeds)]
        at_max = n_plan >= seq.max
        if not usable:
            why = f"{len(seeds)} usable paired seeds (fewer than {seq.min}: failed or diverged runs)"
            out_list.append(Decision(base.name, variant.name, n_plan, MAXIMUM if at_max else CONTINUING, why))
            continue
        chosen = seeds[: usable[-1]]
        result = look([b_by_seed[s] for s in chosen], [v_by_seed[s] for s in chosen], looks, seq.alpha)
        status = DECIDED if result.decided else MAXIMUM if at_max else CONTINUING
        why = result.why
        if status == MAXIMUM and len(seeds) < n_plan:  # tested at an earlier look: say why
            why = (f"undecided at the maximum, {n_plan} replicates of which {len(seeds)} usable paired seeds "
                   f"(failed or diverged runs); last look: {result.why}")
        out_list.append(Decision(base.name, variant.name, n_plan, status, why, result))
    return out_list


def check_comparisons(study: Study) -> None:
    """The comparisons of `analysis.pairs` can be formed from the cells: found before the first
    round trains, not after it (the same check the report makes, on cells without runs)."""
    from biasbench.study.analysis import CellRuns, StudyRuns, pair_cells

    runs = StudyRuns(Path("."), study.name, [CellRuns(c.name, c.values, []) for c in study.cells], study.varying,
                     study.naming, study.zip_groups, study.failure, study.analyses, {}, {})
    if not pair_cells(runs, study.analyses["pairs"]):
        raise UserError("`replicates: {until: decided}` has no comparison to decide: `analysis.pairs` pairs no "
                        "cell with its `baseline`; check `by` and `baseline`")


def next_counts(study: Study, decisions: list[Decision]) -> dict[str, int]:
    """The cells that get more seeds: both sides of every comparison still going on."""
    seq = study.sequential
    assert seq is not None
    looks = schedule(seq.min, seq.max, seq.step)
    current = {c.name: c.recipe.train.replicates for c in study.cells}
    grow: dict[str, int] = {}
    for d in decisions:
        if d.status != CONTINUING:
            continue
        target = next(n for n in looks if n > d.planned)
        for name in (d.baseline, d.variant):
            if target > current[name]:
                grow[name] = max(grow.get(name, 0), target)
    return grow


def resumed(study: Study, out: Path) -> Study:
    """A sequential study run again: its cells start where the last sweep left them."""
    if not (Path(out) / MANIFEST).exists():
        return study
    before = {c["name"]: c["replicates"] for c in Manifest.read(out).doc["cells"]}
    return with_replicates(study, {c.name: before[c.name] for c in study.cells
                                   if before.get(c.name, 0) > c.recipe.train.replicates})


def record(manifest: Manifest, study: Study, decisions: list[Decision]) -> None:
    seq, spec = study.sequential, study.analyses["pairs"]
    assert seq is not None
    manifest.doc["sequential"] = {
        "method": METHOD, "alpha": seq.alpha, "looks": list(schedule(seq.min, seq.max, seq.step)),
        "metric": spec.metric, "estimator": spec.estimator, "comparisons": [d.record() for d in decisions]}
    manifest.save(force=True)


def run_rounds(study: Study, out: Path, console: Any, **options: Any) -> tuple[Study, Any, list[Decision]]:
    """Sweep round after round until no comparison goes on; (final study, last sweep, decisions)."""
    from biasbench.study.runner import run_sweep

    study = resumed(study, out)
    decisions: list[Decision] = []
    done_before = None
    for round_number in range(1, 10_000):

        def after(manifest: Manifest, study: Study = study) -> None:
            decisions[:] = decide(study, out)
            record(manifest, study, decisions)

        sweep = run_sweep(study, out, after=after, console=console, **options)
        done_before = sweep.done_before if done_before is None else done_before
        grow = next_counts(study, decisions)
        if sweep.errors or not grow:
            break
        going = sum(1 for d in decisions if d.status == CONTINUING)
        more = sum(n - study.cell(name).recipe.train.replicates for name, n in grow.items())
        console.print(f"round {round_number}: {going} of {len(decisions)} comparisons undecided; "
                      f"{more} more runs in round {round_number + 1}")
        study = with_replicates(study, grow)
    sweep.done_before = done_before
    return study, sweep, decisions
