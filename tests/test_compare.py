"""Grouping, summaries, comparisons and bad input for `biasbench compare`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from biasbench.compare import compare_paths
from biasbench.errors import UserError
from tests.conftest import one_line_error, run_cli
from tests.smoke_runs import smoke_runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real smoke-sized replicates of the quickstart (seeds 0, 1, 2)."""
    return smoke_runs(tmp_path_factory)


def docs_of(d: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(d.rglob("results.json"))]


def write(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / f"seed{doc['seed']}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def edited(
    doc: dict[str, Any], *, variant: str | None = None, shift: float = 0.0, **recipe: Any
) -> dict[str, Any]:
    """A copy with another variant / recipe keys and every test accuracy shifted."""
    d = copy.deepcopy(doc)
    if variant:
        d["recipe"]["model"]["variant"] = variant
    for dotted, value in recipe.items():
        section, key = dotted.split("__")
        d["recipe"][section][key] = value
    for row in [*d["history"], d["final"]]:
        row["test_acc"] = row["test_acc"] + shift
    return d




def test_real_runs_pool_into_one_group(runs_dir: Path) -> None:
    docs = docs_of(runs_dir)
    r = compare_paths([runs_dir])
    assert len(r.groups) == 1 and r.comparisons == []
    g = r.groups[0]
    assert (g.runs, g.completed, g.diverged, g.interrupted) == (3, 3, 0, 0)
    finals = [d["final"]["test_acc"] for d in docs]
    assert g.final.mean == pytest.approx(np.mean(finals))
    assert g.final.se == pytest.approx(sps.sem(finals))
    assert g.params == docs[0]["params"]["total"]
    assert g.robust_best is not None and g.robust_best.selected_by == "val_acc"
    assert g.min_error.error == pytest.approx(
        1 - max(np.mean([[h["test_acc"] for h in d["history"]] for d in docs], axis=0))
    )
    assert g.macs == docs[0]["complexity"]["macs"] and g.flops == docs[0]["complexity"]["flops"]


def test_variant_comparison_is_paired_on_shared_seeds(runs_dir: Path, tmp_path: Path) -> None:
    docs = docs_of(runs_dir)
    noise = [0.004, 0.0, 0.008]
    for d, n in zip(docs, noise, strict=True):
        write(tmp_path / "base", d)
        write(tmp_path / "dac", edited(d, variant="dac", shift=0.01 + n))
    r = compare_paths([tmp_path], baseline="baseline")
    assert [g.label for g in r.groups] == [
        "quickstart_smoke[model.variant=baseline]",
        "quickstart_smoke[model.variant=dac]",
    ]
    (c,) = r.comparisons
    base = [d["final"]["test_acc"] for d in docs]
    var = [b + 0.01 + n for b, n in zip(base, noise, strict=True)]
    assert c.difference.test == "paired"
    assert c.difference.p_value == pytest.approx(sps.ttest_rel(var, base).pvalue)
    assert c.difference.diff == pytest.approx(0.014)
    assert c.verdict.kind == "better"


def test_unpaired_when_seeds_differ(runs_dir: Path, tmp_path: Path) -> None:
    docs = docs_of(runs_dir)
    for d in docs:
        write(tmp_path / "base", d)
        other = edited(d, variant="dac", shift=0.01)
        other["seed"] += 10
        write(tmp_path / "dac", other)
    (c,) = compare_paths([tmp_path]).comparisons
    base = [d["final"]["test_acc"] for d in docs]
    assert c.difference.test == "welch"
    assert c.difference.p_value == pytest.approx(
        sps.ttest_ind([b + 0.01 for b in base], base, equal_var=False).pvalue
    )


def test_diverged_and_interrupted_are_counted_not_averaged(runs_dir: Path, tmp_path: Path) -> None:
    docs = docs_of(runs_dir)
    bad = copy.deepcopy(docs[0])
    bad.update(seed=7, status="diverged", history=[{**bad["history"][0], "train_loss": math.nan}], final={})
    cut = copy.deepcopy(docs[1])
    cut.update(seed=8, status="interrupted", history=cut["history"][:1], final=cut["history"][0])
    for d in [*docs, bad, cut]:
        write(tmp_path, d)
    r = compare_paths([tmp_path])
    g = r.groups[0]
    assert (g.runs, g.completed, g.diverged, g.interrupted) == (5, 3, 1, 1)
    assert g.final.mean == pytest.approx(np.mean([d["final"]["test_acc"] for d in docs]))
    assert any("1 of 5 runs diverged" in n and "left out of every mean" in n for n in r.notes)
    assert any("interrupted" in n for n in r.notes)


def test_one_replicate_is_reported_honestly(runs_dir: Path, tmp_path: Path) -> None:
    d = docs_of(runs_dir)[0]
    write(tmp_path / "a", d)
    write(tmp_path / "b", edited(d, variant="dac", shift=0.01))
    r = compare_paths([tmp_path])
    assert r.groups[0].final.se is None
    (c,) = r.comparisons
    assert c.difference.ci is None and c.difference.p_value is None
    assert "no confidence interval" in c.verdict.text
    assert any("one completed replicate" in n for n in r.notes)


@pytest.mark.parametrize(
    "key,value,word", [("data__name", "mnist1d", "data.name"), ("train__epochs", 30, "train.epochs")]
)
def test_incompatible_runs_are_refused(
    runs_dir: Path, tmp_path: Path, key: str, value: Any, word: str
) -> None:
    docs = docs_of(runs_dir)
    write(tmp_path / "a", docs[0])
    write(tmp_path / "b", edited(docs[1], variant="dac", **{key: value}))
    with pytest.raises(UserError, match="not comparable") as e:
        compare_paths([tmp_path])
    assert word in str(e.value)


def test_duplicate_seed_is_refused(runs_dir: Path, tmp_path: Path) -> None:
    d = docs_of(runs_dir)[0]
    write(tmp_path / "a", d)
    write(tmp_path / "b", d)
    with pytest.raises(UserError, match="same seed"):
        compare_paths([tmp_path])


def test_regression_results_lower_is_better(runs_dir: Path, tmp_path: Path) -> None:
    template = docs_of(runs_dir)[0]
    for variant, base_mse in (("baseline", 0.50), ("dac", 0.30)):
        for seed, jitter in enumerate([0.0, 0.01, -0.01]):
            d = copy.deepcopy(template)
            d.update(seed=seed, task="regression")
            d["recipe"]["model"]["variant"] = variant
            d["history"] = [
                {
                    "epoch": e + 1,
                    "train_loss": 1.0 / (e + 1),
                    "val_loss": base_mse + 0.2 / (e + 1),
                    "test_loss": base_mse + jitter + 0.2 / (e + 1),
                }
                for e in range(4)
            ]
            d["final"] = d["history"][-1]
            write(tmp_path / variant, d)
    r = compare_paths([tmp_path])
    assert r.metric == "test_loss" and not r.higher_is_better
    (c,) = r.comparisons
    assert c.difference.diff == pytest.approx(-0.2)
    assert c.verdict.kind == "better"
    with pytest.raises(UserError, match="no accuracy"):
        compare_paths([tmp_path], metric="test_acc")


def test_cli_table_and_json(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    code, out, _ = run_cli(["compare", str(runs_dir), "--json", str(tmp_path / "c.json")])
    assert code == 0
    assert "quickstart_smoke" in out and "3 (3/0/0)" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["metric"] == "test_acc" and doc["groups"][0]["completed"] == 3
    code, out, _ = run_cli(["compare", str(runs_dir), "--json", "-"])
    assert json.loads(out)["groups"][0]["runs"] == 3


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, exit code 2, no traceback.
# ---------------------------------------------------------------------------------------------


def test_corrupt_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "results.json"
    p.write_text('{"kind": "biasbench-run", "sche')
    one_line_error(*run_cli(["compare", str(p)])[::2], "not valid JSON")


def test_foreign_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "results.json"
    p.write_text(json.dumps({"accuracy": 0.9}))
    one_line_error(*run_cli(["compare", str(tmp_path)])[::2], "not a biasbench results file")


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(*run_cli(["compare", str(tmp_path)])[::2], "holds no results.json")


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(*run_cli(["compare", str(tmp_path / "nope")])[::2], "does not exist")


def test_baseline_matching_nothing(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(
        *run_cli(["compare", str(runs_dir), "--baseline", "basline"])[::2],
        "matches no run group",
        "did you mean `baseline`",
    )


def test_incompatible_through_cli(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = docs_of(runs_dir)
    write(tmp_path / "a", docs[0])
    write(tmp_path / "b", edited(docs[1], data__name="mnist1d"))
    one_line_error(*run_cli(["compare", str(tmp_path)])[::2], "not comparable", "data.name")
