"""`biasbench list` from its cached catalog (issue 22: under 0.4 s, so no torch import), and
`--filter`.

The cache is exercised in fresh interpreters (as a user runs `list`), each with its own
`BIASBENCH_CACHE_DIR`; the reference is the live catalog read from the registries in this process.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from biasbench.catalog import KINDS, cache_path, catalog, catalog_key, read_cached
from biasbench.models import list_models
from tests.conftest import REPO, one_line_error, run_cli

NEW_MODEL = '''
from torch import nn

from biasbench.models import register_model


@register_model("dropped_in", summary="a model added as one new file", inputs="features")
def dropped_in(variant, num_classes, in_channels, input_shape, width: int = 3):
    return nn.Linear(input_shape[0], num_classes)
'''


def fresh_list(cache: Path, *args: str, package_parent: Path = REPO) -> tuple[str, set[str]]:
    """stdout of a new `python -m biasbench list ARGS` run in `package_parent` (whose biasbench
    is imported), and the top-level packages it imported."""
    env = {**os.environ, "BIASBENCH_CACHE_DIR": str(cache), "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "biasbench", "list", *args],
                          capture_output=True, text=True, timeout=300, cwd=package_parent, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in done.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    assert "biasbench" in names  # the parse works
    return done.stdout, names


def test_cached_listing_equals_the_live_registries_and_needs_no_torch(tmp_path, monkeypatch):
    first, first_imports = fresh_list(tmp_path, "--json")
    assert "torch" in first_imports  # no cache yet: read from the registries...
    cache_file = tmp_path / "list-catalog.json"
    assert cache_file.is_file()  # ...and written
    second, second_imports = fresh_list(tmp_path, "--json")
    assert "torch" not in second_imports and "numpy" not in second_imports
    live = catalog(use_cache=False)
    assert json.loads(first) == json.loads(second) == live["docs"]
    assert json.loads(cache_file.read_text())["catalog"] == live
    # The tables too, character for character, against the live catalog in this process.
    monkeypatch.setenv("COLUMNS", "80")
    code, in_process, err = run_cli(["list"])
    assert code == 0, err
    cached_text, imports = fresh_list(tmp_path)
    assert "torch" not in imports
    assert cached_text == in_process
    assert "dims=(64, 128, 320, 512)" in cached_text  # option defaults as Python writes them, not JSON's lists


def test_a_new_model_file_invalidates_the_cache(tmp_path):
    """A copy of the package: list (cache written), drop a model file in, list again."""
    parent = tmp_path / "checkout"
    shutil.copytree(REPO / "biasbench", parent / "biasbench", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    before, _ = fresh_list(cache, "models", "--json", package_parent=parent)
    _, imports = fresh_list(cache, "models", "--json", package_parent=parent)
    assert "torch" not in imports  # the cache serves the copy
    (parent / "biasbench" / "models" / "dropped_in.py").write_text(NEW_MODEL)
    after, imports = fresh_list(cache, "models", "--json", package_parent=parent)
    assert "torch" in imports  # the key changed: read from the registries again
    names = [m["name"] for m in json.loads(after)["models"]]
    assert "dropped_in" in names and "dropped_in" not in [m["name"] for m in json.loads(before)["models"]]
    again, imports = fresh_list(cache, "models", "--json", package_parent=parent)
    assert "torch" not in imports and again == after  # rewritten with the new model


@pytest.mark.parametrize("damage", ["truncated", "not json", "other key", "wrong shape"])
def test_a_damaged_cache_is_read_again_from_the_registries_and_rewritten(tmp_path, damage):
    fresh_list(tmp_path, "--json")
    cache_file = tmp_path / "list-catalog.json"
    good = json.loads(cache_file.read_text())
    text = cache_file.read_text()
    cache_file.write_text({"truncated": text[: len(text) // 2], "not json": "\x00garbage",
                           "other key": json.dumps({**good, "key": "0" * 64}),
                           "wrong shape": json.dumps({**good, "catalog": {"docs": {"models": [1, 2]}}})}[damage])
    out, imports = fresh_list(tmp_path, "--json")
    assert "torch" in imports
    assert json.loads(out) == good["catalog"]["docs"]
    assert json.loads(cache_file.read_text()) == good  # rewritten whole


def test_the_key_follows_the_source_files(tmp_path, monkeypatch):
    import biasbench.catalog as cat

    root = tmp_path / "pkg"
    (root / "models").mkdir(parents=True)
    (root / "models" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(cat, "PACKAGE_ROOT", root)
    key = catalog_key()
    (root / "models" / "b.py").write_text("")
    added = catalog_key()
    (root / "models" / "a.py").write_text("x = 22\n")
    edited = catalog_key()
    (root / "models" / "notes.txt").write_text("not python")
    assert len({key, added, edited}) == 3 and catalog_key() == edited


def test_read_cached_refuses_another_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASBENCH_CACHE_DIR", str(tmp_path))
    assert cache_path() == tmp_path / "list-catalog.json"
    catalog(use_cache=True)  # writes it
    assert read_cached(cache_path(), catalog_key()) == catalog(use_cache=False)
    assert read_cached(cache_path(), "another") is None


def test_filter_keeps_matching_names_in_every_kind(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["list", "--filter", "resnet*", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc) == list(KINDS)  # every kind keeps its key for scripts, possibly empty
    assert [m["name"] for m in doc["models"]] == [m for m in list_models() if fnmatch.fnmatchcase(m, "resnet*")]
    assert doc["models"] and not doc["variants"] and not doc["activations"]
    code, text, err = run_cli(["list", "--filter", "RESNET2?_v1"])  # case-insensitive
    assert code == 0, err
    firsts = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert "resnet20_v1" in firsts and "resnet20_v2" not in firsts and "resnet32_v1" not in firsts
    assert "variants (model.variant)" not in text and "data sets" not in text  # sections with no match are left out
    assert all(len(line) <= 80 for line in text.splitlines())


def test_filter_matching_nothing_is_one_line_and_exit_2():
    one_line_error(*run_cli(["list", "--filter", "resnet2O*"])[::2], "`resnet2O*`", "matches")
    one_line_error(*run_cli(["list", "variants", "--filter", "resnet*"])[::2], "no name in variants")
