"""Results files are checked against their schema when read: one line naming the file and the field."""

from __future__ import annotations

import json

import pytest

from biasbench.errors import UserError
from biasbench.results import SCHEMA_VERSION, load_results
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real results document (2 epochs of the tiny recipe)."""
    from biasbench.recipe import load_recipe
    from biasbench.trainer import train_recipe

    tmp = tmp_path_factory.mktemp("results")
    recipe = load_recipe(write_recipe(tmp / "r.yaml", tiny_recipe(tmp, train={"epochs": 2})))
    (doc,) = train_recipe(recipe, __import__("torch").device("cpu"))
    return doc


def _edit(doc, path):
    """Apply `path` = (keys..., value) to a copy; value DELETE removes the key."""
    doc = json.loads(json.dumps(doc))  # as read from a file: no shared rows
    *keys, last, value = path
    node = doc
    for k in keys:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()
BROKEN = [
    (("history", 0, "test_acc", "0.97"), "`history[0].test_acc` must be a number, got \"0.97\""),
    (("final", "test_loss", None), "`final.test_loss` must be a number, got null"),
    (("status", "weird"), "`status` must be one of completed, diverged, interrupted, got \"weird\""),
    (("final", DELETE), "`final` is missing"),
    (("seed", "0"), "`seed` must be an integer, got \"0\""),
    (("wall_time_s", True), "`wall_time_s` must be a number, got true"),
    (("task", "ranking"), "`task` must be one of classification, regression"),
    (("history", 0, "oops"), "`history[0]` must be a mapping of metrics, got \"oops\""),
    (("epochs_completed", 2.5), "`epochs_completed` must be an integer, got 2.5"),
]


@pytest.mark.parametrize("edit, message", BROKEN)
def test_a_broken_field_is_named_in_one_line(good, tmp_path, edit, message):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_edit(good, edit)))
    with pytest.raises(UserError, match="valid results file") as e:
        load_results(path)
    assert str(path) in str(e.value) and message in str(e.value)
    code, _, err = run_cli(["compare", str(path.parent)])  # compare reads through the same check
    one_line_error(code, err, str(path), message)


def test_a_completed_run_needs_a_history_and_a_final_epoch(good, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**good, "history": [], "epochs_completed": 0}))
    with pytest.raises(UserError, match="`history` is empty, but `status` is completed"):
        load_results(path)
    path.write_text(json.dumps({**good, "status": "interrupted", "history": [], "epochs_completed": 0,
                                "final": {}, "best": {}}))
    assert load_results(path)["status"] == "interrupted"  # stopped within its first epoch: valid


def test_the_real_document_passes_and_other_versions_are_refused(good, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(good))
    assert load_results(path)["schema_version"] == SCHEMA_VERSION == 2
    path.write_text(json.dumps({**good, "schema_version": 1}))
    with pytest.raises(UserError, match="schema version 1, this biasbench reads version 2; re-run it"):
        load_results(path)
