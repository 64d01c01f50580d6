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
