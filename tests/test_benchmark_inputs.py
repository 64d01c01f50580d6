"""The benchmarks that time reading results files write synthetic ones: they must be files the
reader accepts, or the benchmark times nothing (compare_read broke when the schema grew)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from biasbench.errors import UserError
from biasbench.results import check_results
from tests.conftest import REPO


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_read_writes_valid_results_files():
    bench = _benchmark("compare_read")
    doc = bench.synthetic_doc("dac", 3, 5, np.random.default_rng(0))
    check_results(doc, "synthetic.json")  # raises on any missing or mistyped field
    assert doc["recipe"]["model"]["variant"] == "dac" and len(doc["history"]) == 5
    del doc["warmup_s"]
    with pytest.raises(UserError, match="warmup_s"):  # the check is the one compare applies
        check_results(doc, "synthetic.json")
