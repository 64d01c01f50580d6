"""Slow: every shipped recipe's smoke form trains to completion and beats chance, and every
shipped study's smoke form sweeps to completion, learns, and gets its report.

    make test-slow     (about 30 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json

import pytest
import torch

from biasbench.recipe import load_recipe
from biasbench.trainer import train_recipe
from tests.conftest import RECIPES, REPO, run_cli

RUNNABLE = sorted(p for p in RECIPES.rglob("*.yaml") if "base" not in p.parts and "gates" not in p.parts)
STUDIES = sorted((REPO / "studies").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(RECIPES)) for p in RUNNABLE])
def test_smoke_form_trains(path, tmp_path):
    # Four epochs: enough for every smoke form to learn, where one epoch only shows it runs.
    recipe = load_recipe(path, [f"output.dir={tmp_path}", "train.replicates=1", "train.epochs=4"], smoke=True)
    (doc,) = train_recipe(recipe, torch.device("cpu"))
    assert doc["status"] == "completed", doc["status"]
    final = doc["final"]
    if doc["task"] == "classification":
        assert final["test_acc"] > 1.5 / doc["data"]["num_outputs"], final  # clearly above chance
    else:
        assert final["test_loss"] < doc["history"][0]["test_loss"] or len(doc["history"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_study_smoke_form_sweeps_learns_and_reports(path, tmp_path):
    out = tmp_path / "study"
    code, text, err = run_cli(["sweep", str(path), "--smoke", "--jobs", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0, err
    runs = json.loads((out / "study.json").read_text())["runs"].values()
    assert {r["status"] for r in runs} == {"completed"}
    # Most runs learn: the study's smoke failure criterion (or chance) is crossed by few.
    # The replicates' runs; `tune:` trials (DIR/tune/) never read the test split (test_study_tune.py)
    docs = [json.loads(p.read_text()) for p in out.rglob("results.json") if p.relative_to(out).parts[0] != "tune"]
    learned = [d for d in docs if (d["final"]["test_acc"] > 1.5 / d["data"]["num_outputs"] if d["task"] ==
                                   "classification" else d["final"]["test_loss"] < d["history"][0]["test_loss"])]
    assert len(learned) >= 0.7 * len(docs), (len(learned), len(docs))
    code, text, err = run_cli(["report", str(out), "--out", str(tmp_path / "report")])
    assert code == 0, err
    assert (tmp_path / "report" / "report.md").exists()
