"""`biasbench --version` and every `--help` start without torch (issue 22: under 0.4 s).

Each case runs a fresh interpreter with `-X importtime`, which names every module imported, and
requires that no heavy library is among them. Timings are not asserted (the machine is shared);
the import list is what makes the difference (torch alone is ~1.4 s).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("torch", "numpy", "scipy", "matplotlib", "timm", "torchvision", "submitit")
COMMANDS = ("train", "eval", "count", "compare", "report", "sweep", "list", "recipe")


def imported_modules(*args: str) -> tuple[set[str], str]:
    """Top-level packages a fresh `python -m biasbench ARGS` imports, and what it printed."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "biasbench", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # this checkout's biasbench
    assert done.returncode == 0, done.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in done.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    assert "biasbench" in names  # the parse works: biasbench itself is listed
    return names, done.stdout


def test_version_imports_nothing_heavy():
    names, out = imported_modules("--version")
    assert out.startswith("biasbench ")
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


@pytest.mark.parametrize("args", [("--help",)] + [(c, "--help") for c in COMMANDS] + [("recipe", "show", "--help")])
def test_help_imports_nothing_heavy(args):
    names, out = imported_modules(*args)
    assert "Usage:" in out
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_help_still_shows_each_commands_options():
    """Lazy imports must not hide options: train's and count's help list their flags."""
    _, train = imported_modules("train", "--help")
    _, count = imported_modules("count", "--help")
    for flag in ("--jobs", "--resume", "--device", "--set"):
        assert flag in train, flag
    assert "--compare-variants" in count
