"""The CI gate: each outcome, its exit code and message, the committed gate, and bad gate files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from biasbench.gate import load_gate
from biasbench.recipe import load_recipe
from tests.conftest import assert_fits, one_line_error, output_at, run_cli
from tests.smoke_runs import ROOT

GATE = ROOT / "recipes/gates/quickstart_smoke.yaml"


def write_runs(
    folder: Path,
    docs: list[dict[str, Any]],
    shifts: list[float] | None = None,
    keys: tuple[str, ...] = ("test_acc",),
) -> Path:
    """Copies of real runs with `keys` moved by shifts[i] in every epoch (replicate i)."""
    for i, doc in enumerate(docs):
        d = copy.deepcopy(doc)
        for row in [*d["history"], d["final"]]:
            for k in keys:
                row[k] += (shifts or [0.0] * len(docs))[i]
        path = folder / f"seed{d['seed']}" / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d))
    return folder


def flat(out: str) -> str:
    """The output with line wrapping undone (lines are wrapped to the terminal's width)."""
    return " ".join(out.split())


def gate_file(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_committed_gate_passes_on_a_fresh_smoke_run(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the same recipe and replicates as .ci/gate, against the reference in tests/reference/
    code, out, _ = run_cli(["compare", str(runs_dir), "--gate", str(GATE)])
    assert code == 0, out
    assert "gate: PASS" in out and "max_drop" in out


def test_committed_gate_fails_a_collapse(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # chance level on digits: what a broken layer or optimiser gives
    collapsed = [copy.deepcopy(d) for d in docs]
    for d, acc in zip(collapsed, [0.10, 0.11, 0.09], strict=True):
        for row in [*d["history"], d["final"]]:
            row["test_acc"] = acc
    write_runs(tmp_path / "runs", collapsed)
    code, out, _ = run_cli(
        ["compare", str(tmp_path / "runs"), "--gate", str(GATE), "--json", str(tmp_path / "g.json")]
    )
    assert code == 1
    assert any(line.startswith("  FAIL         floor    test_acc 10.00%") for line in out.splitlines())
    assert "FAIL floor test_acc 10.00% (n=3) vs floor 85.00%: below it by 75.00%" in flat(out)
    assert "gate: FAIL: test_acc floor, test_acc max_drop (exit 1, regression)" in out
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["outcome"] == "fail" and doc["exit_code"] == 1


def test_clear_drop_beyond_tolerance_fails(
    runs_dir: Path, docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.080, -0.082, -0.078])
    gate = gate_file(tmp_path, {"reference": str(runs_dir), "metrics": {"test_acc": {"max_drop": 0.05}}})
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert code == 1
    assert "drop 8.00%, allowed 5.00%: beyond tolerance by 3.00%" in flat(out) and "paired t" in out


def test_noisy_drop_is_inconclusive(
    runs_dir: Path, docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.16, 0.0, -0.05])  # mean drop 7 points, huge spread
    spec: dict[str, Any] = {"reference": str(runs_dir), "metrics": {"test_acc": {"max_drop": 0.05}}}
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate_file(tmp_path, spec))])
    assert code == 0
    assert "INCONCLUSIVE" in out and "not statistically clear" in flat(out) and "gate: INCONCLUSIVE" in out
    spec["inconclusive"] = "fail"
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate_file(tmp_path, spec))])
    assert code == 1


def test_one_replicate_breach_fails_on_the_numbers(
    runs_dir: Path, docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs[:1], [-0.06])
    gate = gate_file(tmp_path, {"reference": str(runs_dir), "metrics": {"test_acc": {"max_drop": 0.05}}})
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert code == 1 and "no statistics" in out


def test_floor_noisy_breach_is_inconclusive_clear_breach_fails(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.1, -0.1, -0.1])
    base = sum(d["final"]["test_acc"] for d in docs) / 3 - 0.1
    # floor just above the mean: a breach well inside the replicate noise
    gate = gate_file(tmp_path, {"metrics": {"test_acc": {"floor": base + 0.0005}}})
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert code == 0 and "INCONCLUSIVE" in out
    gate = gate_file(tmp_path, {"metrics": {"test_acc": {"floor": base + 0.05}}})
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert code == 1 and "below it by 5.00%" in flat(out)


def test_lower_is_better_ceiling(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs, [2.0, 2.1, 2.2], keys=("test_loss",))
    gate = gate_file(tmp_path, {"metrics": {"test_loss": {"ceiling": 1.0}}})
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert code == 1 and "above it by" in out


def test_diverged_run_fails(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [copy.deepcopy(d) for d in docs]
    bad[1]["status"] = "diverged"
    write_runs(tmp_path / "runs", bad)
    code, out, _ = run_cli(["compare", str(tmp_path / "runs"), "--gate", str(GATE)])
    assert code == 1 and "1 of 3 runs diverged (allowed 0)" in flat(out)


def test_too_few_runs_is_unusable(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = write_runs(tmp_path / "runs", docs[:2])
    one_line_error(
        *run_cli(["compare", str(runs), "--gate", str(GATE)])[::2], "at least 3 completed runs"
    )


def test_reference_of_another_recipe_is_unusable(
    docs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = [copy.deepcopy(d) for d in docs]
    for d in other:
        d["recipe"]["optim"]["lr"] = 0.2
    write_runs(tmp_path / "runs", other)
    one_line_error(
        *run_cli(["compare", str(tmp_path / "runs"), "--gate", str(GATE)])[::2],
        "another recipe",
        "optim.lr",
    )


def test_missing_reference_is_unusable(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = gate_file(tmp_path, {"reference": "nowhere", "metrics": {"test_acc": {"max_drop": 0.05}}})
    one_line_error(*run_cli(["compare", str(runs_dir), "--gate", str(gate)])[::2], "does not exist")


@pytest.mark.parametrize(
    "spec,words",
    [
        (
            {"metrics": {"test_acc": {"floor": 0.9}}, "refrence": "x"},
            ["unknown key `refrence`", "did you mean `reference`"],
        ),
        ({"metrics": {"test_acc": {"flor": 0.9}}}, ["unknown key `metrics.test_acc.flor`", "`floor`"]),
        ({"metrics": {"test_loss": {"floor": 0.9}}}, ["lower-is-better", "`ceiling`"]),
        ({"metrics": {"test_acc": {"max_drop": 0.05}}}, ["add `reference: PATH`"]),
        ({"metrics": {"test_acc": {"floor": "high"}}}, ["must be a number"]),
        ({"metrics": {"test_acc": {}}}, ["sets no rule"]),
        ({"metrics": {"test_acc": {"floor": 0.9}}, "replicates": {"min": 0}}, ["replicates.min"]),
    ],
)
def test_bad_gate_files(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], words: list[str]
) -> None:
    one_line_error(
        *run_cli(["compare", str(runs_dir), "--gate", str(gate_file(tmp_path, spec))])[::2], *words
    )


def test_gate_file_not_yaml(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "gate.yaml"
    p.write_text("metrics: [unclosed")
    one_line_error(*run_cli(["compare", str(runs_dir), "--gate", str(p)])[::2], "not valid YAML", "at line 2, column 1")
    p.write_text("floor: {test_acc: 0.5}\nfloor: {test_acc: 0.9}\n")  # which floor? refused, as in recipes
    one_line_error(*run_cli(["compare", str(runs_dir), "--gate", str(p)])[::2], "floor")


def test_gate_section_in_a_recipe(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = ROOT / "tests/reference/quickstart_smoke"
    recipe = tmp_path / "gated.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "extends": str(ROOT / "recipes/quickstart.yaml"),
                "gate": {"reference": str(ref), "metrics": {"test_acc": {"floor": 0.9, "max_drop": 0.05}}},
            }
        )
    )
    assert load_recipe(recipe).gate["metrics"]["test_acc"]["floor"] == 0.9  # the recipe still trains
    gate = load_gate(recipe)
    assert gate.reference == ref and gate.rules[0].limit == 0.9 and gate.rules[0].higher_is_better
    code, out, _ = run_cli(["compare", str(runs_dir), "--gate", str(recipe)])
    assert code == 0 and "gate: PASS" in out
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"extends": str(ROOT / "recipes/quickstart.yaml")}))
    one_line_error(
        *run_cli(["compare", str(runs_dir), "--gate", str(plain)])[::2], "no `gate:` section"
    )


def test_ci_script_is_executable_bash() -> None:
    script = ROOT / ".ci/gate"
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "recipes/gates/quickstart_smoke.yaml" in text


def test_all_runs_diverged_fails_even_when_divergence_is_allowed(
    runs_dir: Path, docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    bad = [copy.deepcopy(docs[0])]
    bad[0]["status"] = "diverged"
    runs = write_runs(tmp_path / "runs", bad)
    spec = {"replicates": {"min": 1, "max_diverged": 1}, "metrics": {"test_acc": {"floor": 0.5}}}
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate_file(tmp_path, spec))])
    assert code == 1 and "no run completed" in out


def test_drop_just_beyond_tolerance_is_tested_against_the_tolerance(
    runs_dir: Path, docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Paired drops of 4.5, 6.0 and 5.1 points: clearly a drop, but not clearly beyond 5 points.
    ref_acc = [d["final"]["test_acc"] for d in docs]
    runs = write_runs(tmp_path / "runs", docs, [-0.045, -0.060, -0.051])
    spec = {"reference": str(runs_dir), "metrics": {"test_acc": {"max_drop": 0.05}}}
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate_file(tmp_path, spec))])
    assert code == 0 and "INCONCLUSIVE" in out and "beyond tolerance but not statistically clear" in flat(out)
    import scipy.stats as sps  # the p-value shown: the paired test of the drops against 5 points

    shown = float(flat(out).split("p=")[1].split(",")[0])
    drops = [0.045, 0.060, 0.051]
    expected = sps.ttest_rel([r - 0.05 for r in ref_acc], [r - d for r, d in zip(ref_acc, drops)]).pvalue
    assert shown == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize(
    "spec,words",
    [
        ({"metrics": {"test_acc": {"floor": 98.0}}}, ["metrics.test_acc.floor", "98", "fractions", "0.98"]),
        ({"metrics": {"test_acc": {"floor": -0.1}}}, ["metrics.test_acc.floor", "fractions"]),
        ({"metrics": {"train_acc": {"floor": 0.5, "max_drop": 5}}, "reference": "."}, ["max_drop", "fractions"]),
        ({"metrics": {"test_loss": {"ceiling": -1.0}}}, ["metrics.test_loss.ceiling", "never negative"]),
    ],
)
def test_limits_outside_the_metrics_range_are_refused(
    runs_dir: Path, tmp_path: Path, spec: dict[str, Any], words: list[str]
) -> None:
    one_line_error(*run_cli(["compare", str(runs_dir), "--gate", str(gate_file(tmp_path, spec))])[::2], *words)


@pytest.mark.parametrize("option", [["--baseline", "baseline"], ["--metric", "test_loss"], ["--estimator", "robust"]])
def test_options_the_gate_would_ignore_are_refused(runs_dir: Path, option: list[str]) -> None:
    one_line_error(*run_cli(["compare", str(runs_dir), "--gate", str(GATE), *option])[::2], option[0],
                   "cannot be used with --gate")


def test_gate_output_fits_80_columns(docs: list[dict[str, Any]], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.16, 0.0, -0.05])
    args = ["compare", str(runs), "--gate", str(GATE)]
    _, wide, _ = output_at(args, 300, monkeypatch)
    _, narrow, _ = output_at(args, 80, monkeypatch)
    assert_fits(narrow, 80, wide=wide)
    assert max(len(line) for line in wide.splitlines()) > 80
    for line in narrow.splitlines():  # every check starts its own line with its outcome and rule
        if line.startswith("  ") and not line.startswith("      "):
            assert line.split()[0] in ("PASS", "INCONCLUSIVE", "FAIL")
