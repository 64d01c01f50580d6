"""`replicates: {min, max, until: decided}`: the sweep adds seeds round by round only to the
comparisons still undecided, records why each stopped, and a second sweep replays it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from biasbench.study import load_study
from biasbench.study import runner as study_runner
from biasbench.study.rounds import CONTINUING, Decision, next_counts
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


@pytest.fixture
def one_thread_workers(monkeypatch):
    monkeypatch.setattr(study_runner, "worker_threads", lambda jobs: 1)


def rounds_study(tmp_path: Path, **replicates) -> Path:
    """Three arms of one tiny MLP: `same` is `base` again (identical runs: never decided), `dead`
    learns nothing (lr 1e-6: decided once the test has seeds enough)."""
    recipe = tiny_recipe(tmp_path, train={"epochs": 1, "batch_size": 64})
    recipe["model"]["options"] = {"depth": 1, "width": 8}
    write_recipe(tmp_path / "r.yaml", recipe)
    doc = {"recipe": "r.yaml",
           "zip": [{"arm": ["base", "same", "dead"], "optim.lr": [0.05, 0.05, 1.0e-6]}],
           "replicates": {"min": 2, "max": 4, "until": "decided", **replicates},
           "analysis": {"pairs": {"by": "arm", "baseline": "base", "metric": "test_acc", "estimator": "final"}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.slow  # about 75 s on a loaded 2-core machine (10 tiny runs in three rounds)
def test_seeds_are_added_only_to_undecided_comparisons(tmp_path, one_thread_workers):
    path, out = rounds_study(tmp_path), tmp_path / "out"
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    doc = json.loads((out / "study.json").read_text())
    replicates = {c["name"]: c["replicates"] for c in doc["cells"]}
    by_variant = {c["variant"]: c for c in doc["sequential"]["comparisons"]}
    assert by_variant["arm=same"]["status"] == "maximum" and "no spread" in by_variant["arm=same"]["why"]
    dead = by_variant["arm=dead"]
    assert dead["status"] == "decided" and dead["replicates"] < 4
    assert replicates == {"arm=base": 4, "arm=same": 4, "arm=dead": dead["replicates"]}
    assert len(doc["runs"]) == 8 + dead["replicates"]  # no seed beyond the decision
    assert doc["sequential"]["looks"] == [2, 3, 4] and "O'Brien-Fleming" in doc["sequential"]["method"]
    assert "comparisons: 1 decided, 1 undecided at the maximum" in text
    # the same command again: every run is on disk, the same decisions, nothing trained
    before = {p: p.read_bytes() for p in out.rglob("results.json")}
    code, text, err = run_cli(["sweep", str(path), "--out", str(out), "--device", "cpu"])
    assert code == 0, err
    assert {p: p.read_bytes() for p in out.rglob("results.json")} == before
    again = json.loads((out / "study.json").read_text())["sequential"]["comparisons"]
    assert again == doc["sequential"]["comparisons"]


def test_next_counts_grow_both_sides_to_the_next_look(tmp_path):
    study = load_study(rounds_study(tmp_path, step=2, max=7))  # looks 2, 4, 6, 7
    going = Decision("arm=base", "arm=same", 2, CONTINUING, "")
    done = Decision("arm=base", "arm=dead", 2, "decided", "")
    assert next_counts(study, [going, done]) == {"arm=base": 4, "arm=same": 4}
    assert next_counts(study, [done]) == {}


@pytest.mark.parametrize("replicates, words", [
    ({"min": 1, "max": 4, "until": "decided"}, ["2 <= min <= max"]),
    ({"min": 3, "max": 2, "until": "decided"}, ["2 <= min <= max"]),
    ({"min": 2, "max": 4, "until": "forever"}, ["replicates.until", "decided"]),
    ({"min": 2, "max": 4}, ["replicates needs `until`"]),
    ({"min": 2, "max": 4, "until": "decided", "alpha": 0.7}, ["alpha"]),
])
def test_bad_sequential_replicates_are_refused(tmp_path, replicates, words):
    path = rounds_study(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["replicates"] = replicates
    path.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, *words)


def test_until_decided_needs_the_comparisons_of_pairs(tmp_path):
    path = rounds_study(tmp_path)
    doc = yaml.safe_load(path.read_text())
    del doc["analysis"]
    path.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, "analysis.pairs")


def test_comparisons_that_cannot_be_formed_are_refused_before_training(tmp_path):
    # two cells of one arm in one comparison: found by --dry-run, not after the first round
    path = rounds_study(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["grid"] = {"model.options.width": [8, 16]}
    doc["analysis"]["pairs"]["where"] = {"arm": ["base", "dead"]}
    path.write_text(yaml.safe_dump(doc))
    assert run_cli(["sweep", str(path), "--dry-run"])[0] == 0  # width names cells: pairs per width
    doc["zip"][0]["model.options.width"] = [8, 16, 8]
    del doc["grid"]
    doc["zip"][0]["arm"] = ["base", "dead", "dead"]
    doc["zip"][0]["optim.lr"] = [0.05, 1.0e-6, 0.01]
    path.write_text(yaml.safe_dump(doc))
    code, _, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, "are both `arm` = `dead` in one comparison")
