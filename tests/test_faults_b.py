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
