"""YAML alias bombs: every YAML document the tool reads (recipe, study, gate, `--set` value) is
measured with its aliases expanded before it is built, and refused in one line past the bound.

Each CLI case runs in a child process whose address space is capped 1 GiB above what its imports
took, so a reader without the bound fails quickly instead of taking the machine's memory (an
8-level chain made `train` grow to 23.6 GB before the kernel ended it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from biasbench.recipe import parse_yaml
from biasbench.yaml_bound import MAX_VALUES, YamlTooLarge, check_expanded_size
from tests.conftest import REPO, one_line_error


def alias_chain(levels: int = 8, width: int = 10, indent: str = "") -> str:
    """`a0: &a0 [x]*width`, then `aK: &aK [*a(K-1)]*width`: about width**(levels+1) values in
    a few hundred bytes."""
    lines = [f"{indent}a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def flow_chain(levels: int = 8, width: int = 10) -> str:
    """The same chain on one line, as a `--set` value: a flow mapping."""
    parts = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels + 1):
        parts.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "{" + ", ".join(parts) + "}"


def expanded_values(data) -> int:
    """Slow reference: walk the built data, counting each value once per place it appears."""
    if isinstance(data, dict):
        return 1 + sum(expanded_values(k) + expanded_values(v) for k, v in data.items())
    if isinstance(data, list):
        return 1 + sum(expanded_values(v) for v in data)
    return 1


def test_measure_matches_a_walk_of_the_built_data():
    # a small chain (3 levels of 4) is built and walked; the bound on the node graph refuses it at
    # exactly the walked size and admits it one value above
    text = alias_chain(levels=3, width=4)
    walked = expanded_values(yaml.safe_load(text))
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    check_expanded_size(node, max_values=walked)
    with pytest.raises(YamlTooLarge):
        check_expanded_size(node, max_values=walked - 1)


def test_chain_refused_fast_and_self_reference_refused():
    start = time.perf_counter()
    with pytest.raises(YamlTooLarge, match=f"past {MAX_VALUES:,} values"):
        parse_yaml(alias_chain())
    assert time.perf_counter() - start < 2.0
    with pytest.raises(YamlTooLarge, match="to itself"):
        parse_yaml("a: &x [1, *x]")
    with pytest.raises(YamlTooLarge, match="characters"):  # few values, each a long string
        parse_yaml("s: &s " + "y" * 200_000 + "\n" + alias_chain(levels=2).replace("x", "*s"))
    # ordinary aliases and merge keys still read as before
    assert parse_yaml("a: &x {b: 1}\nc: *x\nd: {<<: *x, e: 2}") == {"a": {"b": 1}, "c": {"b": 1},
                                                                  "d": {"b": 1, "e": 2}}


_CHILD = """
import importlib, json, resource, sys, time
from tests.conftest import run_cli
for module in ('biasbench.compare', 'biasbench.gate', 'biasbench.study.cost', 'biasbench.study.schema'):
    importlib.import_module(module)  # imported first: the time is the reading, not a loaded machine's imports
vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
try:
    code, out, err = run_cli(json.loads(sys.argv[1]))
except MemoryError:
    code, out, err = -1, '', 'MemoryError'
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
print(json.dumps([code, err, seconds, grown]))
"""


def bounded_cli(args: list[str]) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, growth of the peak resident memory in bytes) of `biasbench ARGS`."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]
    code, err, seconds, grown = json.loads(proc.stdout.strip().splitlines()[-1])
    return code, err, seconds, grown


def _assert_refused_quickly(args: list[str], *words: str) -> None:
    code, err, seconds, peak = bounded_cli(args)
    one_line_error(code, err, "aliases", *words)
    assert seconds < 2.0, seconds
    assert peak < 200 * 2**20, peak


def _tiny_recipe_text() -> str:
    return "model: {name: mlp, options: {depth: 2, width: 32}}\ndata: {name: digits}\n"


def test_alias_chain_in_a_recipe_refused(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_tiny_recipe_text().replace("data:", "gate:\n" + alias_chain(indent="  ") + "data:"))
    _assert_refused_quickly(["recipe", "show", str(recipe)], "bomb.yaml", "line")


def test_alias_chain_in_a_set_value_refused(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(_tiny_recipe_text())
    _assert_refused_quickly(["recipe", "show", str(recipe), "--set", f"model.options.extra={flow_chain()}"],
                            "model.options.extra")


def test_alias_chain_in_a_study_set_refused(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(_tiny_recipe_text())
    study = tmp_path / "study.yaml"
    study.write_text(f"recipe: {recipe}\nset:\n  model.options.extra:\n"
                     + alias_chain(indent="    ") + "grid: {optim.lr: [0.1, 0.2]}\nreplicates: 1\n")
    _assert_refused_quickly(["sweep", str(study), "--dry-run", "--out", str(tmp_path / "s")], "study.yaml")


def test_alias_chain_in_a_gate_refused(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("reference: baseline\nchecks:\n" + alias_chain(indent="  "))
    _assert_refused_quickly(["compare", str(tmp_path), "--gate", str(gate)], "gate.yaml")
