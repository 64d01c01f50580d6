"""Issue 25, items 9-15 and 17: hostile or odd input answered in one line, before any work."""

from __future__ import annotations

from biasbench.recipe import from_dict, load_recipe, recipe_document
from tests.conftest import one_line_error, run_cli


def test_an_empty_recipe_file_means_every_default(tmp_path):
    defaults = recipe_document(from_dict({}, source="defaults"))
    for text in ("", "# only a comment\n", "---\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        recipe = load_recipe(path)
        assert recipe.output.name == "empty"
        got = recipe_document(recipe)
        got["output"]["name"] = defaults["output"]["name"]
        assert got == defaults
    code, out, err = run_cli(["recipe", "show", str(tmp_path / "empty.yaml")])
    assert code == 0, err
    assert "model:" in out


def test_an_empty_study_file_is_still_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("")
    code, _, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, "is empty")


def test_train_json_path_is_checked_before_any_training(tmp_path):
    from tests.conftest import tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    (tmp_path / "a_file").write_text("x")
    for bad, words in ((tmp_path, ("--json", "is a folder")),
                       (tmp_path / "a_file" / "t.json", ("--json", "which is a file"))):
        code, _, err = run_cli(["train", str(recipe), "--json", str(bad)])
        one_line_error(code, err, *words)
        assert not (tmp_path / "runs").exists(), "trained before refusing the --json path"


def test_compare_and_report_json_paths_are_checked_first(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for command in (["compare", str(tmp_path / "nothing_here")],
                    ["report", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "r")]):
        code, _, err = run_cli([*command, "--json", str(tmp_path / "a_file" / "c.json")])
        one_line_error(code, err, "--json", "which is a file")


def test_nan_in_sgemm_run_times_is_refused_not_trained_as_a_diverged_run(tmp_path):
    from tests.conftest import tiny_recipe, write_recipe
    from tests.test_data_sgemm import write_sgemm

    write_sgemm(tmp_path / "sgemm", n=60)
    csv = tmp_path / "sgemm" / "sgemm_product.csv"
    lines = csv.read_text().splitlines()
    cells = lines[6].split(",")
    cells[15] = "nan"  # Run2 (ms) of the sixth data row
    lines[6] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    doc = tiny_recipe(tmp_path, model={"name": "mlp", "options": {"depth": 1, "width": 8}},
                      data={"name": "sgemm", "root": str(tmp_path / "sgemm")})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    one_line_error(code, err, "data row 6", "Run2 (ms)", "not a finite number")
    assert not (tmp_path / "runs").exists()


def test_every_loader_output_with_nan_or_infinity_is_refused(tmp_path):
    import numpy as np
    import pytest
    import torch

    from biasbench.data import DataBundle, Split, build_data, refuse_non_finite
    from biasbench.errors import UserError
    from biasbench.recipe import DataConfig
    from tests.test_graph import _dgraph_file

    good = Split(torch.rand(8, 3), torch.rand(8))
    refuse_non_finite(DataBundle(good, good, good, "regression", 1, (3,)), "s")  # finite: no complaint
    targets = torch.rand(8)
    targets[5] = float("inf")
    with pytest.raises(UserError, match=r"1 example\(s\) of the val split have non-finite targets.*row 5"):
        refuse_non_finite(DataBundle(good, Split(torch.rand(8, 3), targets), good, "regression", 1, (3,)), "s")
    images = Split(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64))
    refuse_non_finite(DataBundle(images, None, images, "classification", 2, (1, 2, 2)), "s")  # integers: fine

    _dgraph_file(tmp_path)
    with np.load(tmp_path / "dgraphfin.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x"][7, 3] = np.nan
    np.savez(tmp_path / "dgraphfin.npz", **arrays)
    with pytest.raises(UserError, match="non-finite node features"):
        build_data(DataConfig(name="dgraphfin", root=str(tmp_path)))


def test_a_model_too_large_for_memory_is_one_line_with_both_sizes(tmp_path):
    import time

    from tests.conftest import tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    started = time.perf_counter()
    code, _, err = run_cli(["train", str(recipe), "--set", "model.options.width=300000"])
    # mlp depth 2 on digits (64 inputs, 10 classes): (64 + 300000 + 1 + 10) * 300000 + 10 float32 weights
    need = ((64 + 1) * 300000 + (300000 + 1) * 300000 + (300000 + 1) * 10) * 4
    one_line_error(code, err, f"needs {need / 2**30:,.1f} GiB for its weights alone", "GiB free", "model.options")
    assert time.perf_counter() - started < 30  # nothing allocated, nothing initialised
    assert not (tmp_path / "runs").exists()


def test_the_memory_check_refuses_by_the_free_memory_and_draws_no_random_numbers(monkeypatch):
    import pytest
    import torch

    from biasbench import memory
    from biasbench.errors import UserError

    def build():
        return torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.BatchNorm1d(10))

    torch.manual_seed(3)
    plain = build()
    torch.manual_seed(3)
    checked = memory.build_within_memory(build, torch.device("cpu"), "model `m`")
    for a, b in zip(plain.state_dict().values(), checked.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the meta build before it changed no weight
    # 110 weights (440 bytes) + BatchNorm: 20 weights, 20 running statistics (160 bytes), one int64 count (8)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 600)
    with pytest.raises(UserError, match="model `m` needs 608 bytes for its weights alone, and cpu memory has "
                                        "600 bytes free"):
        memory.build_within_memory(build, torch.device("cpu"), "model `m`")
    monkeypatch.setattr(memory, "free_bytes", lambda device: 608)
    memory.build_within_memory(build, torch.device("cpu"), "model `m`")


# --- item 11: sweep --dry-run of a large study --------------------------------------------------

PLAN_STUDY = {
    "grid": {"model.options.depth": [1, 2, 3], "optim.lr": [0.01, 0.02, 0.05], "train.epochs": [1, 2]},
    "zip": [{"arm": ["base", "twin"], "model.variant": ["baseline", "dac"]}],
    "exclude": [{"model.options.depth": 3, "arm": "twin"}],
    "replicates": 2,
}


def test_a_counted_plan_equals_the_full_expansion(tmp_path):
    from biasbench.study import load_study
    from biasbench.study.cost import estimate, planned
    from tests.test_study_schema import write_study

    path = write_study(tmp_path, PLAN_STUDY)
    full = load_study(path)
    counted = load_study(path, plan_over=0)
    assert counted.plan is not None and full.plan is None
    assert counted.plan.names == [c.name for c in full.cells]
    assert counted.plan.values == [c.values for c in full.cells]
    assert counted.cell_count() == len(full.cells) == 30 and counted.run_count() == full.run_count() == 60
    # built: the 10 model/data/train configurations (3 depths x 2 variants x 2 epochs, less depth 3
    # of dac), and the first cells with lr 0.02 and 0.05 (lr is no cost key, so no configuration's
    # first cell holds them)
    assert len(counted.cells) == 12 < len(full.cells)
    assert sorted({c.values["optim.lr"] for c in counted.cells}) == [0.01, 0.02, 0.05]
    for mine, theirs in zip(planned(counted), estimate(full.cells), strict=True):
        assert (mine.cell, mine.runs, mine.params, mine.flops, mine.samples, mine.epochs) == \
            (theirs.cell, theirs.runs, theirs.params, theirs.flops, theirs.samples, theirs.epochs)


def test_a_counted_plan_still_checks_every_value_and_every_folder_name(tmp_path):
    import pytest

    from biasbench.errors import UserError
    from biasbench.study import load_study
    from tests.test_study_schema import write_study

    bad = {**PLAN_STUDY, "grid": {**PLAN_STUDY["grid"], "optim.lr": [0.01, 0.02, "fast"]}}
    with pytest.raises(UserError, match="optim.lr"):
        load_study(write_study(tmp_path, bad), plan_over=0)
    clash = {"grid": {"optim.lr": [0.5, "0.5"], "train.epochs": [1, 2]}}
    with pytest.raises(UserError, match="two cells map to one folder `lr=0.5,epochs=1`"):
        load_study(write_study(tmp_path, clash), plan_over=0)


def test_dry_run_prints_at_most_the_first_cells_then_counts_the_rest(tmp_path, monkeypatch):
    from biasbench.cli import sweep_cmd
    from tests.test_study_schema import write_study

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sweep_cmd, "SHOWN_CELLS", 7)
    monkeypatch.setattr(sweep_cmd, "PLANNED_OVER", 20)
    code, out, err = run_cli(["sweep", str(write_study(tmp_path, PLAN_STUDY)), "--dry-run"])
    assert code == 0, err
    assert "60 runs in 30 cells" in out
    rows = [line for line in out.splitlines() if line.startswith(("1 ", "2 ", "3 "))]
    assert len(rows) == 7, out  # one row per shown cell, depth first
    assert "... and 23 more cells (the first 7 are shown; --json lists every cell)" in " ".join(out.split())
    assert "12 of the 30 cells' recipes were built and checked" in " ".join(out.split())
    code, out, err = run_cli(["sweep", str(write_study(tmp_path, PLAN_STUDY)), "--dry-run", "--json"])
    assert code == 0 and len(__import__("json").loads(out)["cells"]) == 30


def test_a_100000_cell_study_is_counted_in_under_5_cpu_seconds(tmp_path):
    import time

    from biasbench.cli.sweep_cmd import PLANNED_OVER
    from biasbench.study import load_study
    from biasbench.study.cost import planned, summary
    from tests.test_study_schema import write_study

    path = write_study(tmp_path, {"grid": {"model.options.depth": [1]}})
    summary(planned(load_study(path, plan_over=PLANNED_OVER)))  # imports, data set, FLOP count: paid by any study
    ten = list(range(10))
    path = write_study(tmp_path, {"grid": {"optim.lr": [0.01 * (i + 1) for i in ten], "train.epochs": [1, 2, 3, 4, 5],
                                           "optim.weight_decay": [1e-4 * i for i in ten], "train.seed": ten,
                                           "label": list(range(20))}})
    started = time.process_time()  # CPU time: the machine running the tests may be shared
    total = summary(planned(load_study(path, plan_over=PLANNED_OVER)))
    spent = time.process_time() - started
    assert (total["cells"], total["runs"]) == (100_000, 100_000)
    assert spent < 5, f"{spent:.1f} CPU seconds"


# --- item 12: the study report's text agrees with its figures -----------------------------------


def _pair(diff: float, p: float, favours: bool):
    from biasbench import stats
    from biasbench.study.analyses.pairs import PairResult
    from biasbench.study.analysis import Estimate

    est = Estimate(0.9, 0.01, 3)
    d = stats.Difference(3, 3, diff, "welch", 0.01, 4.0, (diff - 0.01, diff + 0.01), p, 0.01, 0.01, None)
    return PairResult({"depth": 1}, "dac", est, est, d, p, favours)


def test_the_pairs_line_counts_significant_results_in_both_directions():
    from types import SimpleNamespace

    from biasbench.study.analyses.pairs import _count_line

    # two significant results favour the baseline, one the variant, one is not significant
    results = [_pair(-0.05, 0.001, False), _pair(-0.04, 0.01, False), _pair(0.03, 0.02, True),
               _pair(0.01, 0.4, True), _pair(0.0, 1.0, False)]
    line = _count_line(results, SimpleNamespace(baseline="baseline"))
    assert line.startswith("2 of 5 favour dac, 2 favour baseline, 1 tied;"), line
    assert "significant at p < 0.05: 1 for dac, 2 for baseline" in line
    assert "after Holm adjustment across the 5 tested: 1 for dac, 2 for baseline" in line


def test_a_tie_for_best_bolds_every_tied_column():
    from biasbench.study.analyses.table import _best_marks
    from biasbench.study.analysis import Estimate

    ests = [Estimate(v, 0.01, 3) for v in (0.95, 0.95, 0.95, 0.90)]
    columns = [("baseline",), ("dac",), ("mba",), ("abn",)]
    assert _best_marks(ests, columns, "test_acc", "robust") == [True, True, True, False]
    assert _best_marks(ests[1:], columns[1:], "test_acc", "robust") == [True, True, False]
    assert _best_marks([Estimate(0.2, None, 1), Estimate(0.1, None, 1)], columns[:2], "test_loss",
                       "final") == [False, True]


def _captured_figures(monkeypatch, *modules):
    """The figures the analysis modules save, kept open (not written) by their name."""
    figures = {}

    def keep(fig, path, data=None):
        figures[path.name] = fig
        return path

    for module in modules:
        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def test_the_complexity_figure_never_draws_a_negative_loss(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from biasbench.study.analyses import complexity

    point = complexity.ComplexityPoint
    points = [point((), "baseline", 1, 1e6, 100, 0.02, 0.05),  # MSE 0.02 +- 0.05: would reach -0.03
              point((), "baseline", 2, 2e6, 200, 0.30, 0.05)]
    figures = _captured_figures(monkeypatch, complexity)
    spec = SimpleNamespace(metric="test_loss", panels=[], lines="model.variant", along="depth", baseline="baseline",
                           estimator="final")
    blocks = complexity.complexity_blocks(SimpleNamespace(default_metric=lambda m: m), spec, points, tmp_path)
    ax = figures["complexity_flops.png"].axes[0]
    bars = ax.containers[0].lines[2][0].get_segments()
    lows = [min(seg[:, 1]) for seg in bars]
    assert lows == [0.0, 0.25]  # cut at 0; the other interval whole
    assert "1 interval(s) reaching below 0 are drawn cut at 0" in blocks[0][1]


def test_by_width_and_efficiency_mark_points_of_one_value(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from biasbench.study.analyses import by_width, efficiency

    figures = _captured_figures(monkeypatch, by_width, efficiency)
    runs = SimpleNamespace(default_metric=lambda m: m)
    points = [by_width.WidthPoint(None, "dac", 8, 8.0, 0.9, 0.01, 3), by_width.WidthPoint(None, "dac", 16, 16.0, 0.92,
                                                                                          None, 1)]
    spec = SimpleNamespace(metric="test_acc", log=False, baseline="baseline", shape=None, series="model.variant",
                           depth="depth", estimator="final", average_width=[])
    blocks = by_width.by_width_blocks(runs, spec, points, tmp_path)
    from matplotlib.collections import PathCollection

    hollow = [c for c in figures["by_width.png"].axes[0].collections if isinstance(c, PathCollection)]
    assert [tuple(c.get_facecolor()[0]) for c in hollow] == [(1.0, 1.0, 1.0, 1.0)]  # white inside
    assert len(hollow) == 1 and tuple(hollow[0].get_offsets()[0]) == (16.0, 92.0)
    table = next(b for b in blocks if b[0] == "table")[1][1]
    assert [row[5] for row in table] == ["1", "n = 1"]
    assert "1 point(s) rest on one value" in blocks[0][1]

    points = [efficiency.EfficiencyPoint(2, "wide", -0.1, 0.02, 3), efficiency.EfficiencyPoint(2, "dac", -0.2, None, 1)]
    spec = SimpleNamespace(metric="test_loss", weights="wide", biases="dac", x="depth", normal="base", over="seed")
    blocks = efficiency.efficiency_blocks(runs, spec, points, tmp_path)
    hollow = [c for c in figures["efficiency.png"].axes[0].collections if isinstance(c, PathCollection)]
    assert len(hollow) == 1 and tuple(hollow[0].get_offsets()[0]) == (2.0, -0.2)
    assert [row[3] for row in next(b for b in blocks if b[0] == "table")[1][1]] == ["0.02", "n = 1"]


def test_markdown_reports_escape_names_as_the_html_does(tmp_path):
    from biasbench import render

    hostile = "<img src=x onerror=alert(1)>"
    blocks = [("h1", f"Study {hostile}"), ("p", f"run {hostile}"), ("list", [hostile]),
              ("table", (["cell", hostile], [[hostile, "0.9"]], [[False, True]]))]
    for text, times in ((render.markdown(blocks, tmp_path), 5),
                        (render.html(blocks, hostile, tmp_path), 6)):  # + <title>
        assert "<img" not in text and text.count("&lt;img src=x onerror=alert(1)&gt;") == times
    md = render.markdown([("h1", hostile), ("p", hostile), ("list", [hostile]), ("table", (["run"], [[hostile]]))],
                         tmp_path)
    assert "<img" not in md and md.count("&lt;img") == 4


# --- item 17: help, wrapping -----------------------------------------------------------------------


def test_help_shows_no_type_placeholders_and_plain_argument_names(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    commands = [[], ["train"], ["eval"], ["count"], ["compare"], ["report"], ["sweep"], ["list"], ["recipe"],
                ["recipe", "show"]]
    for command in commands:
        code, out, _ = run_cli([*command, "--help"])
        assert code == 0
        help_line = next(line for line in out.splitlines() if "--help" in line)
        assert "<bool>" not in help_line, (command, help_line)
        assert "<list[str]>" not in out and "{" not in out, (command, out)
        assert [line for line in out.splitlines() if line.endswith(" ")] == [], command  # rich pads to the width
    code, out, _ = run_cli(["train", "--help"])
    assert "Usage: biasbench train [OPTIONS] RECIPE.yaml" in out and "--set KEY=VALUE" in " ".join(out.split())
    usages = {c: next(line.strip() for line in run_cli([c, "--help"])[1].splitlines() if "Usage:" in line)
              for c in ("list", "compare")}
    assert usages == {"list": "Usage: biasbench list [OPTIONS] [KIND]",
                      "compare": "Usage: biasbench compare [OPTIONS] RESULTS..."}


def test_wrapped_sweep_lines_end_in_no_space(monkeypatch):
    from tests.conftest import assert_fits

    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["sweep", "studies/dac_sgemm.yaml", "--smoke", "--dry-run"])
    assert code == 0, err
    assert_fits(out)
    assert [line for line in out.splitlines() if line.endswith(" ")] == []
    assert "total: 40 runs" in out and "epochs, summed over runs" in out  # the long line, wrapped


def test_a_crashed_worker_leaves_the_error_txt_the_outcome_points_to(tmp_path):
    from types import SimpleNamespace

    from biasbench.study import load_study
    from biasbench.study.manifest import Manifest
    from biasbench.study.runner import Sweep, plan
    from tests.test_study_schema import write_study

    study = load_study(write_study(tmp_path, {"grid": {"optim.lr": [0.1, 0.2]}}))
    out = tmp_path / "out"
    sweep = Sweep(study, out, Manifest.for_study(study, out, "local"), SimpleNamespace(finished=lambda *a, **k: None))
    task = plan(study, out)[0][0]
    sweep.errored(task, "worker process died (killed by signal 9)", "", None)  # a crash: no traceback
    text = (out / task.key / "error.txt").read_text()
    assert text.startswith("worker process died (killed by signal 9)\nno traceback:")
    assert sweep.errors == [f"{task.key}: worker process died (killed by signal 9)"]


def test_the_kernel_build_line_prints_once_per_command_not_per_replicate(tmp_path, monkeypatch):
    from tests.conftest import tiny_recipe, write_recipe

    monkeypatch.setenv("COLUMNS", "80")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={"variant": "dac"},
                                                          train={"epochs": 1, "replicates": 2}))
    for _ in range(2):  # a second command says it again
        code, out, err = run_cli(["train", str(path), "--device", "cpu", "--overwrite"])
        assert code == 0, err
        text = " ".join(out.split())
        assert text.count("building the fused C++ kernels") == 1, out
        assert text.count("replicate 2/2") == 1


def test_a_run_with_output_checkpoint_false_names_no_checkpoint_folder(tmp_path, monkeypatch):
    from tests.conftest import tiny_recipe, write_recipe

    monkeypatch.setenv("COLUMNS", "80")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    code, out, err = run_cli(["train", str(path), "--quiet", "--set", "output.checkpoint=false"])
    assert code == 0, err
    assert "results and checkpoints" not in out and "results (output.checkpoint: false)" in " ".join(out.split())
    assert not list((tmp_path / "runs").rglob("*.pt"))
    code, out, err = run_cli(["train", str(path), "--quiet", "--overwrite"])
    assert code == 0 and "results and checkpoints" in " ".join(out.split())


# --- item 15: the thread count --------------------------------------------------------------------


def test_a_run_resumes_only_on_the_thread_count_its_checkpoint_was_written_with(tmp_path):
    import json

    import torch

    from biasbench.checkpoint import load_checkpoint
    from tests.conftest import tiny_recipe, write_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 2}))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        code, _, err = run_cli(["train", str(path), "--device", "cpu", "--stop-after", "1"])
        assert code == 0, err
        run = tmp_path / "runs" / "r" / "seed0"
        assert load_checkpoint(run / "checkpoint.pt")["threads"] == 1
        torch.set_num_threads(2)
        code, _, err = run_cli(["train", str(path), "--device", "cpu", "--resume"])
        one_line_error(code, err, "trained on 1 CPU thread(s) and this process has 2", "OMP_NUM_THREADS=1",
                       "--overwrite")
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1  # nothing trained on the other count
        torch.set_num_threads(1)
        code, _, err = run_cli(["train", str(path), "--device", "cpu", "--resume"])
        assert code == 0, err
        doc = json.loads((run / "results.json").read_text())
        assert doc["epochs_completed"] == 2 and doc["environment"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_compare_says_when_cpu_runs_trained_on_different_thread_counts(tmp_path):
    import json

    from tests.conftest import tiny_recipe, write_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1, "replicates": 2}))
    code, _, err = run_cli(["train", str(path), "--device", "cpu"])
    assert code == 0, err
    code, out, _ = run_cli(["compare", str(tmp_path / "runs"), "--json", "-"])
    assert not [n for n in json.loads(out)["notes"] if "thread" in n]  # one count: nothing to say
    results = tmp_path / "runs" / "r" / "seed1" / "results.json"
    doc = json.loads(results.read_text())
    doc["environment"]["threads"] = doc["environment"]["threads"] + 1  # as a run of another thread count
    results.write_text(json.dumps(doc))
    code, out, _ = run_cli(["compare", str(tmp_path / "runs"), "--json", "-"])
    notes = [n for n in json.loads(out)["notes"] if "thread" in n]
    assert len(notes) == 1 and "different thread counts (1 run(s) on 1 thread(s), 1 run(s) on 2 thread(s))" \
        in notes[0]


def test_the_shipped_studies_table_gives_each_studys_run_counts():
    import re
    from pathlib import Path

    from biasbench.study import load_study
    from tests.conftest import REPO

    text = (REPO / "docs" / "studies.md").read_text()
    # "24 to 80 (8 to 12)": a study of replicates until decided; the first number is its first round
    rows = re.findall(r"^\| `(studies/\w+\.yaml)` \|.*\| (\d+)(?: to \d+)? \((\d+)(?: to \d+)?\) \|$", text,
                      flags=re.M)
    assert {p for p, _, _ in rows} == {f"studies/{p.name}" for p in (REPO / "studies").glob("*.yaml")}
    for path, full, smoke in rows:
        study = Path(REPO / path)
        assert (load_study(study).run_count(), load_study(study, smoke=True).run_count()) == \
            (int(full), int(smoke)), path
    assert "have ReLU and GELU today" not in text  # every activation of DNRT Tables 1-2 is in the study


def test_the_readme_states_its_times_as_measured_not_as_seconds():
    from tests.conftest import REPO

    text = (REPO / "README.md").read_text()
    two_commands = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "(seconds)" not in two_commands  # the quick start trains 15 epochs: 45 s on an idle 2-core VM
    assert "Measured times" in two_commands and "9 min" in two_commands and "load average" in two_commands


def test_an_allocation_that_fails_after_the_check_is_still_one_line(monkeypatch):
    import pytest
    import torch

    from biasbench import memory
    from biasbench.errors import UserError

    def build():
        if torch.empty(0).device.type != "meta":  # the real build: as the allocator fails under overcommit
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "360000000000 bytes. Error code 12 (Cannot allocate memory)")
        return torch.nn.Linear(300000, 300000)

    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # the free memory cannot be told
    with pytest.raises(UserError, match=r"model `m` needs 335.3 GiB for its weights alone, and cpu memory "
                                        "could not hold them"):
        memory.build_within_memory(build, torch.device("cpu"), "model `m`")
