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
