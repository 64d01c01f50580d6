"""The fairness line of every comparison: tuning, capacity matching with parameter and FLOP
ratios, replicates and why they stopped; in the study report and in `compare` on the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from biasbench.study.analysis import CellRuns, StudyRuns, fairness
from tests.conftest import run_cli, tiny_recipe, write_recipe


def runs_with(matches=(), sequential=None) -> StudyRuns:
    return StudyRuns(Path("."), "s", [], [], [], [], None, {}, {}, {}, list(matches), sequential)


def cell(name: str, params: int, flops: int | None, n: int) -> CellRuns:
    doc = {"params": {"total": params}, "complexity": None if flops is None else {"flops": flops}}
    return CellRuns(name, {}, [doc] * n)


def test_fairness_line_names_tuning_matching_ratios_and_replicates():
    base, dac = cell("arm=base", 1000, 2000, 3), cell("arm=dac", 1010, 1500, 3)
    line = fairness(runs_with(), base, dac)
    assert line == ("not tuned (each side trains its recipe's values); not matched (params 1.01x, FLOPs 0.75x "
                    "of the baseline); 3 replicates, fixed in advance")
    match = {"cell": "arm=base", "reference": "arm=dac", "key": "model.options.width", "value": 125, "by": "params",
             "tolerance": 0.01, "mismatch": -0.0099}
    decision = {"baseline": "arm=base", "variant": "arm=dac", "replicates": 6, "status": "decided",
                "why": "decided at look 4 of 8, n = 6 (|t| 7.47 >= 4.63)"}
    line = fairness(runs_with([match], {"comparisons": [decision]}), base, cell("arm=dac", 1010, None, 6))
    assert "matched by params: `model.options.width` of arm=base solved to 125, -0.99% (params 1.01x of the " \
           "baseline)" in line
    assert line.endswith("6 replicates until decided: decided at look 4 of 8, n = 6 (|t| 7.47 >= 4.63)")


@pytest.mark.slow  # about 50 s on a loaded 2-core machine: a sweep of 4 runs, a report, a compare
def test_report_and_compare_state_the_fairness_of_a_matched_study(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"epochs": 1, "batch_size": 64})
    recipe["model"]["options"] = {"depth": 1, "width": 128}
    write_recipe(tmp_path / "r.yaml", recipe)
    doc = {"recipe": "r.yaml", "replicates": 2,
           "zip": [{"arm": ["dac", "base"], "model.variant": ["dac", "baseline"],
                    "model.options.width": [128, "match"]}],
           "match": {"solve": "model.options.width", "cells": {"arm": "base"}, "to": {"arm": "dac"}},
           "analysis": {"pairs": {"by": "arm", "baseline": "base", "metric": "test_acc", "estimator": "final"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    code, _, err = run_cli(["sweep", str(tmp_path / "s.yaml"), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    results = {p.parent.parent.name: json.loads(p.read_text()) for p in out.rglob("results.json")}
    ratio = results["arm=dac"]["params"]["total"] / results["arm=base"]["params"]["total"]
    flops = results["arm=dac"]["complexity"]["flops"] / results["arm=base"]["complexity"]["flops"]
    assert abs(ratio - 1) <= 0.01  # the solve holds in the trained models
    code, _, err = run_cli(["report", str(out), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    report = (tmp_path / "rep" / "report.md").read_text()
    want = f"params {ratio:.2f}x, FLOPs {flops:.2f}x of the baseline); 2 replicates, fixed in advance"
    assert "not tuned" in report and "matched by params: `model.options.width` of arm=base solved to" in report
    assert want in report
    code, text, err = run_cli(["compare", str(out), "--json", "-"])
    assert code == 0, err
    notes = " ".join(json.loads(text)["notes"])
    assert "fairness of the study's comparison arm=dac against arm=base: not tuned" in notes and want in notes
