"""benchmarks/step_breakdown.py: the per-op timer files every op under the phase it ran in, and the
bound's arithmetic is the one its docstring states (docs/dac_layers.md quotes both)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO


def _benchmark():
    spec = importlib.util.spec_from_file_location("step_breakdown", REPO / "benchmarks" / "step_breakdown.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thread_cpu_timer_files_ops_by_phase_and_counts_gelu_elements():
    bench = _benchmark()
    torch.manual_seed(0)
    w = torch.randn(8, 5, requires_grad=True)
    x = torch.randn(4, 5)
    mode = bench.ThreadCpuPerOp()
    with mode:
        with mode.mark("forward"):
            loss = F.gelu(x @ w.t()).sum()
        with mode.mark("backward"):
            loss.backward()
    table = mode.table()
    phases = {name: phase for phase, name in table}
    assert phases["aten::gelu"] == "forward" and phases["aten::gelu_backward"] == "backward"
    assert mode.gelu_elements == 4 * 8  # the input of the one GELU
    assert all(t >= 0 for t in table.values())  # ops are intervals inside their phase's interval
    outside = table[("forward", "(outside ops) forward")]
    assert outside == pytest.approx(mode.phase_us["forward"] - sum(
        t for (p, n), t in mode.us.items() if p == "forward"))


def test_bound_of_an_activation_kernel_follows_its_formula():
    bench = _benchmark()
    sec = {**bench.SECTIONS[1], "batch": 2}  # ResNet20, GELU baseline against RAA
    ops = {"baseline": {("forward", "aten::gelu"): 6.0, ("backward", "aten::gelu_backward"): 4.0,
                        ("forward", "aten::convolution"): 90.0},
           "raa": {("forward", "biasbench_raa_avx512::forward"): 8.0,
                   ("backward", "biasbench_raa_avx512::backward"): 7.0, ("backward", "_RAACPUBackward"): 1.0,
                   ("forward", "aten::convolution"): 91.0}}
    res = {"ops": ops, "totals": {n: sum(t.values()) for n, t in ops.items()}, "gelu_elements": 10**6}
    b = bench.bound(sec, res, {"gemm_gflops": 100.0, "copy_gbytes_per_s": 20.0})
    kernel, replaced = 16.0, 10.0  # the kernel ops (with their autograd node) and GELU's two ops
    assert b["kernel_ms"] == kernel and b["replaced_ms"] == replaced
    assert b["ratio"] == pytest.approx(107.0 / 100.0)
    assert b["ratio_kernel_as_replaced_time"] == pytest.approx((107.0 - kernel + replaced) / 100.0)
    # 20 bytes per element at 20 GB/s: 1 ns per element, 1 ms for a million
    assert b["kernel_ms_at_ceiling"] == pytest.approx(1.0)
    assert b["kernel_ns_per_element"] == pytest.approx(kernel * 1e6 / 10**6)
