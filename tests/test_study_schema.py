"""Study files: expansion into cells, readable stable names, and one clear line for bad input
before anything runs (the sweep's --dry-run and its refusals)."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import yaml

from biasbench.count import complexity
from biasbench.data import build_data
from biasbench.errors import UserError
from biasbench.models import build_model
from biasbench.study import load_study
from biasbench.study.naming import cell_name
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


def write_study(tmp_path, study: dict, recipe: dict | None = None):
    write_recipe(tmp_path / "r.yaml", recipe or tiny_recipe(tmp_path, train={"epochs": 1}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", **study}, sort_keys=False))
    return path


STUDY = {
    "grid": {"model.options.depth": [1, 2, 3]},
    "zip": [{"arm": ["base", "twin"], "model.variant": ["baseline", "dac"]},
            [{"units": 8, "model.options.width": 8}, {"units": 16, "model.options.width": 16}]],
    "exclude": [{"model.options.depth": 3, "arm": "twin"}],
    "replicates": 2,
    "set": {"train.epochs": 2},
}


def test_grid_zip_and_exclude_expand_into_named_cells(tmp_path):
    study = load_study(write_study(tmp_path, STUDY))
    # 3 depths x 2 arms x 2 sizes, less depth 3 of the twin arm (2 cells)
    assert len(study.cells) == 10 and study.run_count() == 20
    first = study.cells[0]
    assert first.name == "depth=1,arm=base,units=8"  # the zip's variant and width follow arm and units
    assert (first.recipe.model.variant, first.recipe.model.options["width"]) == ("baseline", 8)
    assert first.recipe.train.epochs == 2 and first.recipe.train.replicates == 2  # set, replicates
    assert first.recipe.output.name == first.name
    assert first.seeds() == [(0, 0), (1, 1)]
    twin = study.cell("depth=2,arm=twin,units=16")
    assert twin.recipe.model.variant == "dac" and twin.values["arm"] == "twin"
    assert not any(c.values["model.options.depth"] == 3 and c.values["arm"] == "twin" for c in study.cells)
    assert study.labels == ["arm", "units"]
    assert "arm" not in twin.recipe.to_dict()["model"]  # a label changes no recipe key


def test_names_are_stable_and_readable():
    assert cell_name({"model.options.depth": 8, "model.variant": "dac"}) == "depth=8,variant=dac"
    assert cell_name({"model.options.width": 0.5, "optim.lr": 1e-3, "train.amp": True}) == \
        "width=0.5,lr=0.001,amp=true"
    assert cell_name({"model.options.width": 4, "model.base_options.width": 8}) == \
        "options.width=4,base_options.width=8"
    assert cell_name({"recipe": "../recipes/base/dnrt_vit_cifar.yaml"}) == "recipe=dnrt_vit_cifar"
    assert cell_name({}) == "default"


def test_smoke_form_merges_over_the_study_and_applies_the_recipes_smoke_block(tmp_path):
    recipe = tiny_recipe(tmp_path, train={"epochs": 5})
    recipe["smoke"] = {"train.epochs": 1, "model.options.width": 4}
    study = load_study(write_study(tmp_path, {**STUDY, "set": {}, "smoke": {"grid": {"model.options.depth": [1]},
                                                                           "replicates": 1}}, recipe), smoke=True)
    assert study.name == "s_smoke" and len(study.cells) == 4 and study.run_count() == 4
    cell = study.cells[0]
    assert cell.recipe.train.epochs == 1  # the recipe's smoke block ...
    assert cell.recipe.model.options["width"] == 8  # ... under the cell's own values


def test_a_per_cell_base_recipe_and_labels_in_names(tmp_path):
    write_recipe(tmp_path / "other.yaml", tiny_recipe(tmp_path, optim={"lr": 0.2}))
    study = load_study(write_study(tmp_path, {"zip": [{"net": ["a", "b"], "recipe": ["r.yaml", "other.yaml"]}]}))
    assert [c.name for c in study.cells] == ["net=a", "net=b"]
    assert [c.recipe.optim.lr for c in study.cells] == [0.05, 0.2]


@pytest.mark.parametrize("change, words", [
    ({"recipe": "missing.yaml"}, ["missing.yaml", "does not exist"]),
    ({"grid": {"model.variantt": ["dac"]}}, ["model.variantt", "did you mean `model.variant`"]),
    ({"grid": {"train.epochs": ["ten"], "model.options.width": [8, 16]}}, ["train.epochs", "must be an integer",
                                                                         "'ten'", "cell `epochs=ten,width=8`"]),
    ({"grid": {"model.options.width": []}}, ["grid.model.options.width", "empty"]),
    ({"grid": {"model.options.width": 8}}, ["grid.model.options.width", "list"]),
    ({"grid": {"model.options.width": [8]}, "exclude": [{"model.options.width": 8}]}, ["no runs"]),
    ({"grid": {}, "zip": [{"model.options.width": [8, 8], "train.epochs": [1, 1]}]}, ["two cells map to one folder"]),
    ({"zip": [{"model.options.width": [8, 16], "train.epochs": [1]}]}, ["zip[0]", "one length"]),
    ({"grids": {}}, ["grids", "did you mean `grid`"]),
    ({"grid": {"width": [8, 16]}}, ["`width` has no dot", "model.options.width"]),
    ({"grid": {"model.options.width": [8, 16]}, "exclude": [{"model.options.width": 32}]}, ["exclude[0]",
                                                                                             "matches no cell"]),
    ({"replicates": 0}, ["replicates", "at least 1"]),
    ({"set": {"output.dir": "x"}}, ["output.dir", "--out"]),
    ({"failure": {"metric": "val_loss"}}, ["failure", "above", "below"]),
    ({"analysis": {"tabel": {}}}, ["analysis.tabel", "did you mean `table`"]),
    ({"analysis": {"failures": {"by": "model.varient"}}}, ["model.varient", "did you mean `model.variant`"]),
    ({"analysis": {"pairs": {"by": "model.variant", "baseline": "baseline", "estimator": "median"}}},
     ["analysis.pairs.estimator", "one of"]),
    ({"analysis": {"failures": {"by": "model.variant", "where": {"model.variant": "dca"}}}}, ["selects no cell"]),
    ({"launcher": {"time": "soon"}}, ["launcher time", "HH:MM:SS"]),
    # a cell whose variant does not apply to the model: refused before the sweep starts
    ({"grid": {"model.variant": ["baseline", "dmb"]}}, ["cell `variant=dmb`", "variant `dmb`", "model `mlp`"]),
    ({"grid": {"model.options.widht": [8]}}, ["cell `widht=8`", "did you mean `width`"]),
])
def test_bad_study_is_one_line_and_nothing_runs(tmp_path, change, words):
    path = write_study(tmp_path, {"grid": {"model.options.width": [8, 16]}, **change})
    code, out, err = run_cli(["sweep", str(path), "--out", str(tmp_path / "out")])
    one_line_error(code, err, *words)
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained


def test_missing_study_and_smoke_without_a_smoke_section(tmp_path):
    code, _, err = run_cli(["sweep", str(tmp_path / "none.yaml")])
    one_line_error(code, err, "none.yaml", "does not exist", "the shipped studies are in `studies/`")
    path = write_study(tmp_path, {"grid": {"model.options.width": [8]}})
    one_line_error(*run_cli(["sweep", str(path), "--smoke"])[::2], "no `smoke:` section")


def test_slurm_backend_without_submitit_or_sbatch_is_refused(tmp_path, monkeypatch):
    path = write_study(tmp_path, {"grid": {"model.options.width": [8]}})
    out = tmp_path / "out"
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    one_line_error(*run_cli(["sweep", str(path), "--backend", "slurm", "--out", str(out)])[::2], "sbatch", "PATH")
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit fails
    monkeypatch.delitem(sys.modules, "biasbench.study.slurm", raising=False)
    one_line_error(*run_cli(["sweep", str(path), "--backend", "slurm", "--out", str(out)])[::2], "submitit",
                   "pip install")
    one_line_error(*run_cli(["sweep", str(path), "--partition", "gpu"])[::2], "Slurm", "--backend slurm")
    assert not out.exists()


def test_dry_run_prints_cells_run_count_and_the_cost_from_count(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    path = write_study(tmp_path, STUDY)
    code, out, err = run_cli(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")])
    assert code == 0, err
    assert "20 runs in 10 cells" in out and not (tmp_path / "out").exists()
    assert all(len(line) <= 80 for line in out.splitlines())
    code, out, err = run_cli(["sweep", str(path), "--dry-run", "--json"])
    plan = __import__("json").loads(out)
    assert plan["runs"] == 20 and len(plan["cells"]) == 10
    # The estimate is forward FLOPs (biasbench.count) x training samples x epochs, per run.
    cell = next(c for c in plan["cells"] if c["cell"] == "depth=2,arm=twin,units=16")
    model = build_model("mlp", "dac", num_classes=10, in_channels=1, input_shape=(1, 8, 8), depth=2, width=16)
    flops = complexity(model, (1, 8, 8))["flops"]
    assert cell["flops_per_sample"] == flops and cell["epochs"] == 2 and cell["runs"] == 2
    samples = len(build_data(load_study(path).cells[0].recipe.data).train)  # digits less test and validation
    assert cell["train_samples"] == samples and 1200 < samples < 1797
    assert cell["cost"] == pytest.approx(flops * samples * 2 * 2)
    assert plan["forward_flops_x_samples_x_epochs"] == pytest.approx(sum(c["cost"] for c in plan["cells"]))


def test_dry_run_counts_the_samples_of_every_data_set_declared_bundled(tmp_path):
    # DNRT's smoke forms train on generated 32 px images: their size is known without files.
    recipe = tiny_recipe(tmp_path, model={"name": "cnn", "options": {"width": 4}}, data={"name": "synthetic_images"})
    path = write_study(tmp_path, {"grid": {"model.variant": ["baseline", "dac"]}}, recipe)
    code, out, err = run_cli(["sweep", str(path), "--dry-run", "--json"])
    assert code == 0, err
    plan = __import__("json").loads(out)
    samples = len(build_data(load_study(path).cells[0].recipe.data).train)
    assert [c["train_samples"] for c in plan["cells"]] == [samples, samples]
    assert plan["cells_without_estimate"] == [] and not plan["approximate"]


def test_dry_run_plan_is_one_table_layout_a_row_per_cell_grep_finds_whole(monkeypatch):
    # The SGEMM smoke study's cells are too wide for a column per key at 80 columns: a row per
    # cell name with its numbers (the other columns in a block below, as every table does).
    from biasbench.study.cost import estimate, si
    from tests.conftest import assert_fits, output_at

    args = ["sweep", "studies/dac_sgemm.yaml", "--smoke", "--dry-run"]
    code, narrow, err = output_at(args, 80, monkeypatch)
    assert code == 0, err
    assert_fits(narrow)
    study = load_study("studies/dac_sgemm.yaml", smoke=True)
    for cell, cost in zip(study.cells, estimate(study.cells)):
        rows = [line.split() for line in narrow.splitlines() if line.startswith(cell.name + " ")]
        assert rows and rows[0][1:4] == [str(cost.runs), si(cost.params), si(cost.flops)], (cell.name, rows)


def test_launcher_time_formats():
    from biasbench.study.specs import time_minutes

    assert [time_minutes(v) for v in (90, "90", "01:30:00", "1-00:00:00", "10:30", "2-3")] == \
        [90, 90, 90, 1440, 11, 2 * 1440 + 180]
    with pytest.raises(UserError):
        time_minutes("0")


def test_dac_twin_matches_the_wide_baseline_in_parameters():
    # The SGEMM study's arms: `wide` is solved by `match:` to `dac`'s parameter count (the paper's
    # pairs, within the study's 5%); `base` has the DAC twin's units and about half the parameters.
    study = load_study("studies/dac_sgemm.yaml")
    for depth, units in ((8, 141), (16, 35)):
        counts = {}
        for arm in ("base", "wide", "dac"):
            cell = study.cell(f"depth={depth},shape=rectangular,arm={arm},units={units}")
            r = cell.recipe.model
            model = build_model("mlp", r.variant, num_classes=1, in_channels=14, input_shape=(14,), **r.options)
            counts[arm] = sum(p.numel() for p in model.parameters())
            hidden = [m.weight.shape[0] for m in model.modules() if hasattr(m, "weight") and m.weight.dim() == 2]
            if arm != "wide":
                assert hidden[0] == units  # base and dac build `units` units per layer
            else:
                assert hidden[0] / units == pytest.approx(math.sqrt(2), rel=0.03)
        assert counts["wide"] == pytest.approx(counts["dac"], rel=0.05)
        assert counts["wide"] / counts["base"] == pytest.approx(2.0, rel=0.1)


def test_sbatch_without_srun_is_refused_naming_srun(tmp_path, monkeypatch):
    # A login node with sbatch but no srun on PATH: submitit cannot build its executor; one line, no traceback.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # sbatch alone, whatever this machine has installed
    path = write_study(tmp_path, {"grid": {"model.options.width": [8]}})
    code, _, err = run_cli(["sweep", str(path), "--backend", "slurm", "--out", str(tmp_path / "out")])
    one_line_error(code, err, "srun", "PATH")
    assert "sbatch`" not in err  # sbatch is there: only the missing tool is named


def test_sbatch_refusing_the_job_array_is_one_line_naming_its_reason(tmp_path, monkeypatch):
    # sbatch present but unable to submit (no slurm.conf, controller down): its own words, no traceback.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition name' >&2\n"
                      "exit 1\n")
    sbatch.chmod(0o755)
    srun = bin_dir / "srun"  # submitit's executor needs srun present; this test is about sbatch's refusal
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write_study(tmp_path, {"grid": {"model.options.width": [8]}})
    code, _, err = run_cli(["sweep", str(path), "--backend", "slurm", "--out", str(tmp_path / "out")])
    one_line_error(code, err, "sbatch", "Invalid partition name")
    # no pickled call is left for a job that was never submitted; the manifest says all pending
    assert not list((tmp_path / "out").rglob("*.pkl"))
    runs = json.loads((tmp_path / "out" / "study.json").read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"pending"}
