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
from tests.conftest import assert_fits, one_line_error, output_at, run_cli
from tests.fake_runs import correctness, template_doc, write_run


def docs_of(d: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(d.rglob("results.json"))]


def write(folder: Path, doc: dict[str, Any]) -> Path:
    """An edited copy of a run; its numbers no longer match any predictions file, so it has none."""
    path = folder / f"seed{doc['seed']}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**doc, "predictions": None}))
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
    assert g.estimate.estimator == "final" and g.values == finals
    assert g.estimate.value == pytest.approx(np.mean(finals))
    assert g.estimate.summary.se == pytest.approx(sps.sem(finals))
    assert g.params == docs[0]["params"]["total"] and g.eval_size == docs[0]["data"]["test_size"]
    robust = compare_paths([runs_dir], estimator="robust").groups[0].estimate
    assert robust.selected_by == "val_acc"
    best = compare_paths([runs_dir], estimator="min_mean").groups[0].estimate
    assert 1 - best.value == pytest.approx(
        1 - max(np.mean([[h["test_acc"] for h in d["history"]] for d in docs], axis=0))
    )
    assert g.macs == docs[0]["complexity"]["macs"] and g.flops == docs[0]["complexity"]["flops"]


def test_variant_comparison_is_paired_on_shared_seeds(runs_dir: Path, tmp_path: Path) -> None:
    docs = docs_of(runs_dir)
    noise = [0.006, 0.0, 0.012]  # an SE above one test example of 359: the t-test may speak
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
    assert c.difference.diff == pytest.approx(0.016)
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
    assert g.estimate.value == pytest.approx(np.mean([d["final"]["test_acc"] for d in docs]))
    assert any("1 of 5 runs diverged" in n and "left out of every mean" in n for n in r.notes)
    assert any("interrupted" in n for n in r.notes)


def test_one_replicate_is_reported_honestly(runs_dir: Path, tmp_path: Path) -> None:
    d = docs_of(runs_dir)[0]
    write(tmp_path / "a", d)
    write(tmp_path / "b", edited(d, variant="dac", shift=0.01))
    r = compare_paths([tmp_path])
    assert r.groups[0].estimate.summary.se is None
    (c,) = r.comparisons
    assert c.difference.ci is None and c.difference.p_value is None
    assert c.verdict.text == "inconclusive: n=1" and "no confidence interval" in c.verdict.detail
    single = [n for n in r.notes if "one replicate in the statistics" in n]
    assert len(single) == 1 and r.groups[0].label in single[0] and r.groups[1].label in single[0]
    code, text, _ = run_cli(["compare", str(tmp_path)])
    assert code == 0 and "p Holm: none, no comparison has a t-test" in " ".join(text.split())


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
    for variant, base_mse, jitters in (("baseline", 0.50, [0.0, 0.01, -0.01]), ("dac", 0.30, [0.0, 0.0, -0.01])):
        for seed, jitter in enumerate(jitters):
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
    assert c.difference.diff == pytest.approx(-0.2 - 0.01 / 3)
    assert c.verdict.kind == "better"
    assert c.examples is None and "not test_loss" in c.examples_note
    assert any("replicate test only" in n for n in r.notes)  # said, not silent
    with pytest.raises(UserError, match="no accuracy"):
        compare_paths([tmp_path], metric="test_acc")


def test_cli_table_and_json(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    code, out, _ = run_cli(["compare", str(runs_dir), "--json", str(tmp_path / "c.json")])
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("quickstart_smoke "))
    assert row.split()[1:3] == ["3", "3/0/0"]  # runs; ok/div/int
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


# ---------------------------------------------------------------------------------------------
# Both sources of variance, families, failures (runs with per-example predictions).
# ---------------------------------------------------------------------------------------------

N = 359  # the digits test set


@pytest.fixture(scope="module")
def template(runs_dir: Path) -> dict[str, Any]:
    return template_doc(runs_dir)


def one_example_apart(root: Path, template: dict[str, Any], *, predictions: bool = True) -> Path:
    """Three seeds of a baseline, and a `dac` that gets test example 5 wrong where the baseline
    got it right, in every seed and epoch: replicate differences identical (zero variance)."""
    for seed, accs in enumerate(([0.90, 0.95, 0.97], [0.91, 0.96, 0.975], [0.89, 0.94, 0.965])):
        base = correctness(seed, 3, N, accs)
        base[:, 5] = True
        worse = base.copy()
        worse[:, 5] = False
        write_run(root, template, name="base", seed=seed, correct=base, predictions=predictions)
        write_run(root, template, name="dac", seed=seed, correct=worse, variant="dac", predictions=predictions)
    return root


def test_one_test_example_under_zero_variance_is_no_verdict(template: dict[str, Any], tmp_path: Path) -> None:
    root = one_example_apart(tmp_path, template)
    code, out, _ = run_cli(["compare", str(root)])
    assert code == 0 and "worse" not in out and "inconclusive: test-set noise" in out
    (c,) = compare_paths([root]).comparisons
    d = c.difference
    assert d.test == "paired" and d.sd_diff == 0 and d.diff == pytest.approx(-1 / N)
    assert d.p_value == 0.0  # the replicate t-test alone: "every seed shows it"
    assert c.examples.p_value > 0.5  # one example of 359: test-set noise
    assert c.verdict.kind == "inconclusive" and c.verdict.text == "inconclusive: test-set noise"


def test_without_predictions_zero_variance_is_no_verdict_and_says_why(template: dict[str, Any], tmp_path: Path
                                                                      ) -> None:
    root = one_example_apart(tmp_path, template, predictions=False)
    code, out, _ = run_cli(["compare", str(root)])
    assert code == 0 and "worse" not in out and "zero variance" in out
    r = compare_paths([root])
    (c,) = r.comparisons
    assert c.examples is None and c.verdict.text == "inconclusive: zero variance"
    assert any("replicate test only" in n and "no per-example predictions" in n for n in r.notes)


@pytest.mark.parametrize("estimator", ["final", "robust", "min_mean"])
def test_example_test_scores_the_estimators_epochs(template: dict[str, Any], tmp_path: Path, estimator: str
                                                   ) -> None:
    accs = {"base": [0.80, 0.85, 0.90, 0.88, 0.86], "dac": [0.82, 0.88, 0.91, 0.92, 0.90]}
    for seed in range(3):
        for name, curve in accs.items():
            c = correctness(10 * seed + len(name), 5, N, [a + 0.005 * seed for a in curve])
            write_run(tmp_path, template, name=name, seed=seed, correct=c, variant="dac" if name == "dac" else
                      "baseline", val_acc=[0.8, 0.9, 0.85, 0.8, 0.7])
    r = compare_paths([tmp_path], estimator=estimator)
    (c,) = r.comparisons
    # per-example scores averaged over the estimator's epochs give exactly the table's difference
    assert c.examples is not None and c.examples.diff == pytest.approx(c.difference.diff, abs=1e-12)
    window = {"final": (5, 5), "robust": (1, 4), "min_mean": (4, 4)}[estimator]
    assert r.groups[1].estimate.window == window


def _family(root: Path, template: dict[str, Any], gains: dict[str, int], diverged: dict[str, int]) -> None:
    for name, gain in gains.items():
        for seed in range(4):
            acc = 0.85 + 0.01 * seed
            base = correctness(seed, 2, N, [acc - 0.05, acc])
            better = base.copy()
            wrong = np.flatnonzero(~base[-1])[: gain + (seed % 2)]  # fix `gain` (+0/1) errors per seed
            better[-1, wrong] = True
            write_run(root, template, name=name, seed=seed, correct=better, variant=name)
        for seed in range(4, 4 + diverged.get(name, 0)):
            write_run(root, template, name=name, seed=seed, correct=base, variant=name, status="diverged")


def test_holm_over_the_family_and_fisher_per_group(template: dict[str, Any], tmp_path: Path) -> None:
    from statsmodels.stats.multitest import multipletests

    _family(tmp_path, template, {"baseline": 0, "dac": 12, "mba": 4, "preact": 1}, {"baseline": 1, "mba": 3})
    r = compare_paths([tmp_path])
    assert r.baseline == "baseline" and len(r.comparisons) == 3
    raw = [c.p_value for c in r.comparisons]
    assert raw == [max(c.difference.p_value, c.examples.p_value) for c in r.comparisons]
    assert [c.p_holm for c in r.comparisons] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    by = {c.label: c for c in r.comparisons}
    assert by["dac"].verdict.kind == "better" and by["preact"].verdict.kind == "inconclusive"
    for label, bad in (("dac", 0), ("mba", 3), ("preact", 0)):
        f = by[label].failures
        assert (f.failed_baseline, f.runs_baseline, f.failed_variant, f.runs_variant) == (1, 5, bad, 4 + bad)
        assert f.p_value == pytest.approx(sps.fisher_exact([[1, 4], [bad, 4]]).pvalue)
    code, out, _ = run_cli(["compare", str(tmp_path)])
    assert code == 0 and "failed trainings against baseline" in out and "p Fisher" in out and "p Holm" in out


def test_fisher_covers_a_group_whose_every_run_failed(template: dict[str, Any], tmp_path: Path) -> None:
    # Nothing to average on the dac side, but failed trainings are what Fisher's test is for.
    for seed in range(4):
        ok = correctness(seed, 2, N, [0.8, 0.9])
        write_run(tmp_path, template, name="baseline", seed=seed, correct=ok)
        write_run(tmp_path, template, name="dac", seed=seed, correct=ok, variant="dac", status="diverged")
    r = compare_paths([tmp_path])
    f = r.failures["dac"]
    assert (f.failed_baseline, f.runs_baseline, f.failed_variant, f.runs_variant) == (0, 4, 4, 4)
    assert f.p_value == pytest.approx(sps.fisher_exact([[0, 4], [4, 0]]).pvalue)
    code, out, err = run_cli(["compare", str(tmp_path)])
    assert code == 0, err
    table = out[out.index("failed trainings against baseline"):]
    row = next(line for line in table.splitlines() if line.startswith("dac "))
    assert row.split()[1:] == ["4", "4", "0", f"{f.p_value:.3g}"], row


def test_a_baseline_picked_by_default_from_several_is_said(template: dict[str, Any], tmp_path: Path) -> None:
    # Two groups of the baseline variant (e.g. two cells of a study): neither is "the" baseline.
    for name, width in (("wide", 16), ("base", 8)):
        for seed in range(2):
            write_run(tmp_path, template, name=name, seed=seed, correct=correctness(seed, 1, N, [0.9]),
                      recipe={"model.options.width": width})
    r = compare_paths([tmp_path])
    assert r.baseline == "base"  # the first group, as documented
    assert any("2 groups have variant `baseline`" in n and "--baseline" in n for n in r.notes), r.notes


def test_every_run_diverged_shows_the_table(template: dict[str, Any], tmp_path: Path) -> None:
    bad = correctness(0, 1, N, [0.1])
    for seed in range(2):
        path = write_run(tmp_path, template, name="quickstart", seed=seed, correct=bad, status="diverged",
                         predictions=False)
        doc = json.loads(path.read_text())  # what the trainer records for a NaN loss at epoch 1
        doc["history"] = [{"epoch": 1, "lr": 0.05, "seconds": 1.0, "train_loss": math.nan, "train_acc": 0.1}]
        doc["final"], doc["best"] = doc["history"][0], {}
        path.write_text(json.dumps(doc))
    code, out, err = run_cli(["compare", str(tmp_path)])
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("quickstart "))
    assert row.split()[1:3] == ["2", "0/2/0"]  # runs 2: 0 ok, 2 diverged, 0 interrupted
    assert "every run diverged" in out
    code, _, err = run_cli(["report", str(tmp_path / "quickstart"), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    assert "No run completed" in (tmp_path / "rep" / "report.md").read_text()
    assert not list((tmp_path / "rep" / "figures").glob("*.png"))  # no empty figures


def test_missing_and_corrupt_predictions(template: dict[str, Any], tmp_path: Path) -> None:
    root = one_example_apart(tmp_path, template)
    (root / "dac" / "seed1" / "predictions.npz").unlink()
    r = compare_paths([root])
    assert r.comparisons[0].examples is None
    assert any("predictions.npz` is missing" in n for n in r.notes)
    (root / "dac" / "seed1" / "predictions.npz").write_bytes(b"PK\x03\x04 cut")
    one_line_error(*run_cli(["compare", str(root)])[::2], "predictions.npz", "corrupt or truncated")


def test_unknown_estimator(runs_dir: Path) -> None:
    one_line_error(*run_cli(["compare", str(runs_dir), "--estimator", "best"])[::2], "--estimator", "min_mean")


def test_json_to_an_unwritable_path(runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import biasbench.fsutil

    target = tmp_path / "c.json"
    target.write_text("{}")

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(biasbench.fsutil.tempfile, "mkstemp", full_disk)  # root ignores chmod; a full disk does not
    one_line_error(*run_cli(["compare", str(runs_dir), "--json", str(target)])[::2], str(target),
                   "No space left on device")
    assert target.read_text() == "{}"  # the earlier file is intact


def test_json_into_a_read_only_folder(runs_dir: Path, tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder does not stop root's writes")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        one_line_error(*run_cli(["compare", str(runs_dir), "--json", str(folder / "c.json")])[::2],
                       "c.json", "Permission denied")
    finally:
        folder.chmod(0o700)


def test_compare_fits_80_columns(template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    family = tmp_path / "family"
    _family(family, template, {"baseline": 0, "dac": 12, "mba": 4}, {"mba": 1})
    long = tmp_path / "long"  # long labels: groups of one name told apart by recipe keys
    for seed in range(3):
        c = correctness(seed, 2, N, [0.8, 0.9])
        for lr in (0.05, 0.1):
            write_run(long, template, name="quickstart_smoke_with_a_long_name", seed=seed, correct=c,
                      recipe={"optim.lr": lr}, folder=f"lr{lr}")
    for folder, extra in ((family, []), (long, ["--estimator", "robust"])):
        args = ["compare", str(folder), *extra]
        _, wide, _ = output_at(args, 250, monkeypatch)
        code, narrow, err = output_at(args, 80, monkeypatch)
        assert code == 0, err
        assert_fits(narrow, 80, wide=wide)
    assert any(len(line) > 80 for line in wide.splitlines())  # the wide layout really is wider
