"""The study report: every analysis checked against a computation written out here (or scipy and
statsmodels), on results files whose numbers the test chose, then the report's files."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest
import yaml
from scipy.stats import fisher_exact
from statsmodels.stats.multitest import multipletests

from biasbench import stats
from biasbench.fsutil import atomic_write_json
from biasbench.results import KIND, SCHEMA_VERSION
from biasbench.study import analyses, load_study
from biasbench.study.manifest import Manifest
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


def test_fisher_and_holm_agree_with_scipy_statsmodels_and_the_dac_paper():
    # DAC paper: 15 of 576 baseline trainings failed against 2 of 449 DAC, "bilateral p-value 0.0063".
    p = stats.fisher_failures(2, 449, 15, 576).p_value
    assert p == pytest.approx(fisher_exact([[15, 561], [2, 447]]).pvalue, rel=1e-12)
    assert round(p, 4) == 0.0063
    ps = [0.01, 0.04, 0.03, 0.2]
    assert stats.holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))
    # Holm by hand: sorted p times (m - rank), running maximum, capped at 1.
    assert stats.holm(ps) == pytest.approx([0.04, 0.09, 0.09, 0.2])


# ---------------------------------------------------------------------------------------------
# A study folder with results the test writes itself.
# ---------------------------------------------------------------------------------------------


def _doc(cell, seed: int, status: str, curve: list[float], metric: str, params: int, flops: float) -> dict:
    """A results document: `curve` is the per-epoch test metric; validation follows it."""
    history = [{"epoch": e + 1, "lr": 0.1, "seconds": 1.0, "train_loss": 1.0, f"val_{metric}": v + 0.001 * seed,
                f"test_{metric}": v, "val_loss": 1.0 if metric == "acc" else v} for e, v in enumerate(curve)]
    key = f"val_{metric}"
    best = (max if metric == "acc" else min)(history, key=lambda h: h[key])
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "name": cell.name, "status": status, "seed": seed,
            "replicate": seed, "recipe": cell.recipe.to_dict(), "task": "classification" if metric == "acc" else
            "regression", "epochs_completed": len(history), "history": history, "final": history[-1],
            "best": {**best, "selected_by": key}, "params": {"total": params}, "complexity": {"flops": flops},
            # the rest of a valid results file (`compare` checks the schema; the study report reads what it needs)
            "interrupted_by": None, "checkpoint_epoch": None, "recipe_path": None, "wall_time_s": 1.0,
            "images_per_second": 1.0, "warmup_s": 0.0, "predictions": None, "data": {}, "environment": {},
            "created": "2026-01-01T00:00:00+00:00"}


def _folder(tmp_path, study_doc: dict, runs) -> tuple[object, object]:
    """Write the study and its manifest; `runs(cell, seed)` gives (status, curve, params, flops)."""
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", **study_doc}, sort_keys=False))
    study = load_study(path)
    out = tmp_path / "out"
    manifest = Manifest.for_study(study, out, "local")
    metric = "loss" if "loss" in json.dumps(study_doc.get("analysis")) else "acc"
    for cell in study.cells:
        for _, seed in cell.seeds():
            status, curve, params, flops = runs(cell, seed)
            atomic_write_json(out / cell.name / f"seed{seed}" / "results.json",
                              _doc(cell, seed, status, curve, metric, params, flops))
            manifest.update(f"{cell.name}/seed{seed}", status=status)
    manifest.save(force=True)
    return study, out


RESNET = {
    "zip": [[{"layers": 20, "version": "v1", "model.options.depth": 2},
             {"layers": 32, "version": "v1", "model.options.depth": 3},
             {"layers": 20, "version": "v2", "model.options.depth": 4}]],
    "grid": {"model.variant": ["baseline", "dac"]},
    "replicates": 3,
    "failure": {"metric": "val_acc", "below": 0.3},
    "analysis": {"table": {"rows": ["layers"], "columns": ["version", "model.variant"], "metric": "test_acc"},
                 "pairs": {"by": "model.variant", "baseline": "baseline", "metric": "test_acc",
                           "estimator": "robust"},
                 "failures": {"by": "model.variant", "baseline": "baseline"},
                 "complexity": {"lines": "model.variant", "along": "layers", "panels": ["version"],
                                "metric": "test_acc"}},
}


def _resnet_runs(cell, seed):
    v = cell.values
    level = 0.80 + 0.01 * v["layers"] / 4 + (0.02 if v["model.variant"] == "dac" else 0) + 0.003 * seed
    curve = [level - 0.2, level - 0.05, level, level - 0.01, level - 0.02, level - 0.015]
    if v["model.variant"] == "baseline" and v["layers"] == 32 and seed == 2:
        return "completed", [0.1] * 6, 1000, 1e6  # a failed training (val_acc below 0.3)
    if v["model.variant"] == "baseline" and v["version"] == "v2" and seed == 1:
        return "diverged", curve[:2], 1000, 1e6
    params = 1000 * v["layers"] + (110 * v["layers"] if v["model.variant"] == "dac" else 0)
    return "completed", curve, params, params * 1e3


@pytest.fixture
def resnet(tmp_path):
    study, out = _folder(tmp_path, RESNET, _resnet_runs)
    return study, out, analyses.load_study_runs(out)


def _usable(runs, **values):
    cell = next(c for c in runs.cells if all(c.values[k] == v for k, v in values.items()))
    return cell, [d["history"] for d in cell.usable]


def test_table_is_the_minimum_of_the_replicate_mean_error_with_best_per_version_in_bold(resnet):
    _, _, runs = resnet
    (table,) = analyses.table.table(runs, runs.analyses["table"])
    assert table.columns == [("v1", "baseline"), ("v1", "dac"), ("v2", "baseline"), ("v2", "dac")]
    row = dict(table.rows)[(20,)]
    _, hist = _usable(runs, layers=20, version="v1", **{"model.variant": "dac"})
    expected = stats.min_mean_error(hist, metric="test_acc")
    assert row[1].value == pytest.approx(expected.error) and row[1].se == pytest.approx(expected.se)
    assert row[1].is_error and row[1].value == pytest.approx(1 - np.mean([0.85 + 0.02 + 0.003 * s for s in range(3)]))
    # bold: the lower error of base/DAC within each version; the v2 cells of layers 32 do not exist
    assert table.best[0] == [False, True, False, True]
    assert dict(table.rows)[(32,)][2] is None


def test_failures_count_failed_and_diverged_runs_with_fisher_against_the_baseline(resnet):
    _, _, runs = resnet
    rows = {r.group: r for r in analyses.failures.failures(runs, runs.analyses["failures"])}
    base, dac = rows["baseline"], rows["dac"]
    assert (base.runs, base.diverged, base.failed, base.p_value) == (9, 1, 1, None)
    assert (dac.runs, dac.diverged, dac.failed) == (9, 0, 0)
    assert dac.p_value == pytest.approx(fisher_exact([[0, 9], [2, 7]]).pvalue)


def test_compare_on_a_study_folder_applies_the_studys_failure_rule(resnet):
    # RESNET's rule: val_acc below 0.3 is a failed training; layers=32 v1 baseline seed 2 is one.
    _, out, _ = resnet
    code, text, err = run_cli(["compare", str(out), "--json", "-"])
    assert code == 0, err
    groups = {g["label"]: g for g in json.loads(text)["groups"]}
    failed = {label: g["failed"] for label, g in groups.items() if g["failed"]}
    assert failed == {"layers=32,version=v1,variant=baseline": 1}, failed
    assert groups["layers=32,version=v1,variant=baseline"]["seeds"] == [0, 1]  # left out of the mean


def test_pairs_give_each_comparison_its_test_and_holm_across_the_family(resnet):
    _, _, runs = resnet
    found = analyses.pairs.pairs(runs, runs.analyses["pairs"])
    results, line = found.pairs, found.count
    assert len(results) == 3 and all(r.variant == "dac" for r in results)
    r = next(r for r in results if r.match == {"layers": 20, "version": "v1"})
    base_cell, base_hist = _usable(runs, layers=20, version="v1", **{"model.variant": "baseline"})
    dac_cell, dac_hist = _usable(runs, layers=20, version="v1", **{"model.variant": "dac"})
    a = stats.robust_best_accuracy(base_hist).per_replicate
    b = stats.robust_best_accuracy(dac_hist).per_replicate
    assert r.difference == stats.difference(list(a), list(b), paired=True)  # same seeds on both sides
    tested = [x for x in results if x.difference.p_value is not None]
    assert [x.p_holm for x in tested] == pytest.approx(
        list(multipletests([x.difference.p_value for x in tested], method="holm")[1]))
    assert line.startswith("3 of 3 favour dac, 0 favour baseline;")  # both directions counted


def test_complexity_points_are_the_robust_error_at_each_model_size(resnet):
    _, _, runs = resnet
    points = analyses.complexity.complexity(runs, runs.analyses["complexity"])
    assert analyses.complexity.value_label(runs.default_metric(None)) == "test error" and len(points) == 6
    p = next(p for p in points if p.line == "dac" and p.along == 32)
    _, hist = _usable(runs, layers=32, **{"model.variant": "dac"})
    rb = stats.robust_best_accuracy(hist)
    assert p.value == pytest.approx(1 - rb.value) and p.ci == pytest.approx(rb.summary.ci[1] - rb.value)
    assert (p.params, p.flops, p.panel) == (32 * 1110, 32 * 1110 * 1e3, ("v1",))


def test_complexity_points_follow_the_estimator_the_study_asks_for(tmp_path):
    doc = json.loads(json.dumps(RESNET))
    doc["analysis"]["complexity"]["estimator"] = "final"
    _, out = _folder(tmp_path, doc, _resnet_runs)
    runs = analyses.load_study_runs(out)
    points = analyses.complexity.complexity(runs, runs.analyses["complexity"])
    p = next(p for p in points if p.line == "dac" and p.along == 32)
    finals = [d["final"]["test_acc"] for d in _usable(runs, layers=32, **{"model.variant": "dac"})[0].usable]
    assert p.value == pytest.approx(1 - float(np.mean(finals)))  # the last epoch, not the robust best
    assert p.value != pytest.approx(1 - stats.robust_best_accuracy(
        _usable(runs, layers=32, **{"model.variant": "dac"})[1]).value)


SGEMM = {
    "grid": {"model.options.depth": [2, 3]},
    "zip": [[{"model.options.shape": "rectangular", "arm": "base", "units": 8, "model.variant": "baseline",
              "model.options.width": 8},
             {"model.options.shape": "rectangular", "arm": "wide", "units": 8, "model.variant": "baseline",
              "model.options.width": 11},
             {"model.options.shape": "rectangular", "arm": "dac", "units": 8, "model.variant": "dac",
              "model.options.width": 11},
             {"model.options.shape": "pyramidal", "arm": "wide", "units": 8, "model.variant": "baseline",
              "model.options.width": 11}]],
    "replicates": 2,
    "analysis": {"by_width": {"width": "model.options.width", "depth": "model.options.depth",
                              "shape": "model.options.shape", "series": "model.variant", "metric": "test_loss",
                              "where": {"arm": ["wide", "dac"]}},
                 "efficiency": {"arm": "arm", "normal": "base", "weights": "wide", "biases": "dac", "x": "units",
                                "over": "model.options.depth", "metric": "test_loss",
                                "where": {"model.options.shape": "rectangular"}}},
}


def _mse(values):
    return {"base": 0.4, "wide": 0.3, "dac": 0.2}[values["arm"]] * (1 + 0.1 * values["model.options.depth"])


def _sgemm_runs(cell, seed):
    mse = _mse(cell.values) * (1 + 0.05 * seed)
    params = 100 * cell.values["model.options.width"] * cell.values["model.options.depth"]
    return "completed", [mse * 2, mse], params, 1e3


def test_by_width_and_efficiency_follow_the_dac_papers_figures_3_and_4(tmp_path):
    study, out = _folder(tmp_path, SGEMM, _sgemm_runs)
    runs = analyses.load_study_runs(out)

    def cell_log(arm, depth):  # replicate mean of log MSE at the best-validation epoch
        return np.mean([math.log(_mse({"arm": arm, "model.options.depth": depth}) * (1 + 0.05 * s)) for s in (0, 1)])

    points = {(p.shape, p.series): p for p in analyses.by_width.by_width(runs, runs.analyses["by_width"])}
    rect = points[("rectangular", "dac")]
    assert (rect.x, rect.cells) == (11.0, 2)  # the nominal (equivalent) width
    ys = [cell_log("dac", d) for d in (2, 3)]
    assert rect.y == pytest.approx(np.mean(ys)) and rect.sd == pytest.approx(np.std(ys, ddof=1))
    pyr = points[("pyramidal", "baseline")]  # sqrt(parameters / depth), averaged over depths
    assert pyr.x == pytest.approx(np.mean([math.sqrt(100 * 11 * d / d) for d in (2, 3)]))

    eff = {p.arm: p for p in analyses.efficiency.efficiency(runs, runs.analyses["efficiency"])}
    for arm in ("wide", "dac"):
        diffs = [cell_log(arm, d) - cell_log("base", d) for d in (2, 3)]
        assert eff[arm].x == 8 and eff[arm].n == 2
        assert eff[arm].mean == pytest.approx(np.mean(diffs)) and eff[arm].sd == pytest.approx(np.std(diffs, ddof=1))
    assert eff["dac"].mean == pytest.approx(math.log(0.2 / 0.4))  # "nats": natural log of the MSE ratio


def test_a_by_width_point_left_with_one_usable_cell_averages_that_cells_replicates(tmp_path):
    def runs_with_a_lost_depth(cell, seed):  # every depth-2 dac run diverged: depth 3 alone is left
        v = cell.values
        if v["arm"] == "dac" and v["model.options.depth"] == 2:
            return "diverged", [float("nan")], 100, 1e3
        return _sgemm_runs(cell, seed)

    _, out = _folder(tmp_path, SGEMM, runs_with_a_lost_depth)
    runs = analyses.load_study_runs(out)
    point = next(p for p in analyses.by_width.by_width(runs, runs.analyses["by_width"]) if p.series == "dac")
    logs = [math.log(_mse({"arm": "dac", "model.options.depth": 3}) * (1 + 0.05 * s)) for s in (0, 1)]
    assert point.cells == 1
    assert point.y == pytest.approx(np.mean(logs)) and point.sd == pytest.approx(np.std(logs, ddof=1))


def test_the_report_has_every_analysis_as_tables_and_valid_pngs(tmp_path, resnet):
    _, out, _ = resnet
    code, text, err = run_cli(["report", str(out), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    for title in ("## Table", "## Pairs", "## Failed trainings", "## Against complexity"):
        assert title in md
    assert "3 of 3 favour dac" in md and "**" in md  # the count line, bold best cells
    pngs = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert {p.name for p in pngs} == {"pairs.png", "failures.png", "complexity_flops.png", "complexity_params.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).ndim == 3
        assert f"figures/{png.name}" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<b>" in html
    numbers = json.loads((tmp_path / "rep" / "study_report.json").read_text())
    assert set(numbers) == {"table", "pairs", "failures", "complexity"}
    one_line_error(*run_cli(["report", str(out), "--out", str(tmp_path / "r2"), "--baseline", "dac"])[::2],
                   "study folder", "--baseline")
    # --json is not dropped silently: the study report's numbers are in study_report.json
    one_line_error(*run_cli(["report", str(out), "--out", str(tmp_path / "r3"), "--json", str(tmp_path / "n.json")]
                            )[::2], "study folder", "--json", "study_report.json")


def test_a_study_without_analysis_gets_a_table_pairs_and_width_figure_chosen_from_its_grid(tmp_path):
    # width x variant, no `analysis:`: the report must still answer "does dac beat the baseline?"
    study_doc = {"grid": {"model.options.width": [8, 16], "model.variant": ["baseline", "dac"]}, "replicates": 3}

    def runs(cell, seed):
        v = cell.values
        acc = 0.80 + (0.05 if v["model.variant"] == "dac" else 0.0) + 0.001 * v["model.options.width"]
        return "completed", [acc - 0.1, acc + 0.002 * seed], 100, 1e3

    _, out = _folder(tmp_path, study_doc, runs)
    loaded = analyses.load_study_runs(out)
    assert loaded.chosen_analyses and set(loaded.analyses) == {"table", "pairs", "by_width"}
    assert loaded.analyses["table"].columns == ["model.variant"]
    assert loaded.analyses["table"].rows == ["model.options.width"]
    found = analyses.pairs.pairs(loaded, loaded.analyses["pairs"])
    pairs, line = found.pairs, found.count
    assert len(pairs) == 2 and all(r.favours_variant for r in pairs) and "2 of 2 favour dac" in line
    assert all(r.difference.diff == pytest.approx(0.05, abs=1e-9) for r in pairs)
    code, _, err = run_cli(["report", str(out), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "no `analysis:` section" in md and "## Table" in md and "## Pairs" in md and "## By width" in md
    assert {p.name for p in (tmp_path / "rep" / "figures").glob("*.png")} >= {"pairs.png"}
