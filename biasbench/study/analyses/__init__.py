"""The study analyses: one file each, registered by `register(Analysis(...))`.

An analysis declares everything the study file, the checks and the report need:

    name     its key under `analysis:` in a study file
    title    its section heading in the report
    spec     a frozen dataclass of its options, read by `specs.read_spec`; fields that name
             study keys are typed `StudyKey` (or a list of them, or `Where`), and are checked
             against the study's keys before anything runs (`keys`)
    compute  (runs, spec) -> its numbers (dataclasses; study_report.json holds them)
    render   (runs, spec, numbers, figures folder) -> report blocks (`biasbench.render`)
    order    its place in the report (sections in increasing order)
    example  its options for the DAC SGEMM smoke study (studies/dac_sgemm.yaml --smoke), on which
             tests/test_study_analyses.py computes and renders every registered analysis
    default  (runs) -> a spec or None: what a study without `analysis:` gets from its grid
    needs_usable_runs  False for an analysis that means something when every run failed

Adding an analysis is one new file in this folder: it is imported (and so registered) with the
package, shows in `analysis:`'s known names, is checked by `sweep`, drawn by `report` and tested
on the smoke study by tests/test_study_analyses.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasbench.errors import UserError, did_you_mean
from biasbench.plugins import import_submodules
from biasbench.render import Block
from biasbench.study.analysis import StudyRuns, read_study_runs
from biasbench.study.specs import read_spec, study_keys

ESTIMATOR_WORDS = {"robust": "robust best estimate", "final": "final epoch", "best": "best-validation epoch",
                   "min_mean": "minimum over epochs of the replicate mean"}
NOTHING: Block = ("p", "No usable runs for this analysis yet (none completed without failing); finish the sweep, "
                       "or look at the failures.")


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    spec: type
    compute: Callable[[StudyRuns, Any], Any]
    render: Callable[[StudyRuns, Any, Any, Path], list[Block]]
    order: int
    example: dict[str, Any]
    default: Callable[[StudyRuns], Any] | None = None
    needs_usable_runs: bool = True

    def read(self, raw: Any) -> Any:
        """The spec from the study file's `analysis.NAME` mapping (unknown keys and wrong types refused)."""
        return read_spec(self.spec, raw, f"analysis.{self.name}")

    def keys(self, spec: Any) -> list[str]:
        """The study keys `spec` names (derived from the spec's field types)."""
        return study_keys(spec)


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    if analysis.name in ANALYSES:
        raise ValueError(f"study analysis `{analysis.name}` is registered twice")
    ANALYSES[analysis.name] = analysis
    return analysis


def ordered() -> list[Analysis]:
    """Every registered analysis, in report order."""
    return sorted(ANALYSES.values(), key=lambda a: (a.order, a.name))


def analysis(name: str, where: str = "analysis") -> Analysis:
    """The registered analysis `name`, or one line naming the known ones."""
    if name not in ANALYSES:
        raise UserError(f"unknown analysis `{where}.{name}`{did_you_mean(str(name), list(ANALYSES))}; "
                        f"known: {', '.join(a.name for a in ordered())}")
    return ANALYSES[name]


def short(key: str) -> str:
    """A study key as a label: its last dotted part (`model.options.depth` -> `depth`)."""
    return key.rsplit(".", 1)[-1]


def load_study_runs(out: Path) -> StudyRuns:
    """The study's runs (`analysis.read_study_runs`) with its analyses: those of its `analysis:`
    section, or, without one, those chosen from its grid (`chosen_analyses`)."""
    runs = read_study_runs(out)
    if runs.analysis_section is None:
        runs.analyses, runs.chosen_analyses = chosen_analyses(runs), True
    else:
        runs.analyses = {name: ANALYSES[name].read(raw) for name, raw in runs.analysis_section.items()
                         if name in ANALYSES}
    return runs


def chosen_analyses(runs: StudyRuns) -> dict[str, Any]:
    """The analyses a study without `analysis:` gets: each analysis's `default` for its grid."""
    chosen = {a.name: a.default(runs) for a in ordered() if a.default is not None}
    return {name: spec for name, spec in chosen.items() if spec is not None}


import_submodules(sys.modules[__name__])  # each module registers its analysis
