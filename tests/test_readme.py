"""The README and the help texts say what is true: the recipe block is the schema's defaults, and
the help examples name the files the quick start writes."""

from __future__ import annotations

import re

from biasbench.recipe import Recipe, load_recipe, parse_yaml, recipe_document
from biasbench.trainer import run_paths
from tests.conftest import RECIPES, REPO, run_cli


def test_readme_recipe_block_is_the_defaults():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"These are the defaults.*?```yaml\n(.*?)```", readme, re.S).group(1)
    assert parse_yaml(block) == recipe_document(Recipe())


def test_help_examples_name_the_files_the_quick_start_writes():
    # `make quickstart` runs: biasbench train recipes/quickstart.yaml --out runs --overwrite
    written = run_paths(load_recipe(RECIPES / "quickstart.yaml", ["output.dir=runs"]), 0).dir
    for command, file in (("eval", "checkpoint.pt"), ("report", "results.json")):
        code, out, _ = run_cli([command, "--help"])
        assert code == 0 and f"biasbench {command} {written.as_posix()}/{file}" in out
