"""Shared test helpers: run the CLI in-process, write small recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from biasbench.cli import main
from tests.smoke_runs import smoke_runs

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
# pytest-timeout's limit for the tests of the long suites (pyproject's `timeout` is the default one's)
LONG_TIMEOUT_S = 900
LONG_SUITES = ("slow", "real", "slurm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None and any(item.get_closest_marker(m) for m in LONG_SUITES):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The models in tests are tiny: one thread is as fast as two, and far faster when the
    # machine's two cores are shared (CI runners, parallel jobs).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_run_registry(tmp_path_factory):
    # Trainings register their threads per user (biasbench.running); tests use a registry of
    # their own, so that runs elsewhere on the machine neither see them nor warn into them.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))
        yield


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real smoke-sized replicates of the quickstart (seeds 0, 1, 2), trained once a session."""
    return smoke_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def docs(runs_dir: Path) -> list[dict[str, Any]]:
    """Their results documents, by seed (a fresh copy for each test module)."""
    return [json.loads(p.read_text()) for p in sorted(runs_dir.rglob("results.json"))]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run `biasbench ARGS` in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str, *words: str) -> None:
    """Bad input: exit code 2, one `error: ...` line on stderr naming `words`, no traceback."""
    assert code == 2, (code, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def write_recipe(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def tiny_recipe(tmp_path: Path, **sections) -> dict:
    """A recipe that trains in about a second: a small MLP on digits."""
    doc = {
        "model": {"name": "mlp", "options": {"depth": 2, "width": 32}},
        "data": {"name": "digits"},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine", "per": "step"},
        "train": {"epochs": 4, "batch_size": 64},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v}
    return doc


def assert_fits(text: str, width: int = 80, *, wide: str | None = None) -> None:
    """Terminal output for a `width`-column terminal or log: no line longer than `width`, and,
    given the same command's output at a large width, no word broken across lines (every word
    at `width` is a word of the wide output, and the other way round)."""
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} lines over {width} columns, first: {long[0]!r}"
    if wide is not None:
        narrow_words, wide_words = set(text.split()), set(wide.split())
        assert narrow_words == wide_words, (
            f"broken or missing words: {sorted(narrow_words ^ wide_words)[:10]}")


def output_at(args: list[str], width: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`run_cli(args)` with COLUMNS=width (stdout is not a terminal: the plain layout)."""
    monkeypatch.setenv("COLUMNS", str(width))
    return run_cli(args)
