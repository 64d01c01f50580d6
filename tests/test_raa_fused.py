"""The fused CPU RAA kernel against the reference (`raa_reference`, the formula in PyTorch
operators): values, gradients, float64 gradcheck, what backward keeps, thread-count
independence, every vector width this CPU runs, and the modules' dispatch."""

from __future__ import annotations

import warnings

import pytest
import torch

from biasbench.layers.raa import RAA, RAA2d, raa_function, raa_reference
from tests.test_dac_layers import _autograd_names, _saved_numels, _tolerance, kernel_isas

# (shape, two_d): 2-d maps with positions left over after whole vectors and after blocks of 4
# vectors (AVX-512: 16 floats / 8 doubles a vector), a 1x1 map, a single channel; 1-d rows
# whose width is no multiple of the vector, leading dimensions, a ViT-sized row.
CASES = [((5, 7, 3, 5), True), ((2, 19, 9, 9), True), ((3, 4, 17, 16), True), ((6, 1, 1, 1), True),
         ((4, 3, 2, 2), True), ((3, 4, 37), False), ((40, 768), False), ((5, 1), False)]


def _isas() -> list[str]:
    from biasbench.kernels import raa_cpu
    return kernel_isas(raa_cpu.KERNEL)


def _params(c: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # shifts of order 1 whatever the width, as in a trained model
    w = (torch.randn(c, generator=g, dtype=dtype) * (0.5 / c**0.5)).requires_grad_()
    b = torch.tensor([0.2], dtype=dtype).requires_grad_()
    return w, b


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", ["gelu", "relu"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_fused_matches_reference_at_every_width(case, form, dtype):
    from biasbench.kernels import raa_cpu
    isas = _isas()
    shape, two_d = case
    x = (torch.randn(shape, dtype=dtype) * 2).requires_grad_()
    w, b = _params(shape[1] if two_d else shape[-1], dtype)
    # The truth in float64 (float32 sums over 768 features differ in the last bits by order)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = raa_reference(x64, w64, b64, form, two_d)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    want = [t.to(dtype) for t in (ref, *torch.autograd.grad(ref, [x64, w64, b64], g.double()))]
    # float32 GELU: erf of Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), like PyTorch's CPU GELU
    tol = _tolerance(dtype)
    results = []
    for isa in isas:
        out = raa_cpu.raa(x, w, b, form == "gelu", two_d, isa)
        results.append([out, *torch.autograd.grad(out, [x, w, b], g)])
        for got, expected in zip(results[-1], want, strict=True):
            torch.testing.assert_close(got, expected, **tol)
    for a, c in zip(*results, strict=False):  # the widths agree with each other
        torch.testing.assert_close(a, c, **tol)


@pytest.mark.parametrize("form", ["gelu", "relu"])
@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "1d"])
def test_fused_gradcheck_float64(form, two_d):
    _isas()
    torch.manual_seed(0)
    shape = (2, 3, 5, 4) if two_d else (3, 2, 5)
    c = shape[1] if two_d else shape[-1]
    # keep x + s away from ReLU's kink, so finite differences are meaningful
    x = (torch.round(torch.randn(shape, dtype=torch.float64) * 2) / 2 + 0.125).requires_grad_()
    w = torch.full((c,), 0.0625, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.03125], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: raa_function(x, w, b, form, two_d, impl="cpp"),
                                    (x, w, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "1d"])
def test_backward_keeps_only_the_input_and_the_shift(two_d):
    _isas()
    shape = (4, 16, 6, 6) if two_d else (4, 9, 16)
    x = torch.randn(shape, requires_grad=True)
    w, b = _params(16, torch.float32)
    shift = x.numel() // 16
    fused = _saved_numels(lambda: raa_function(x, w, b, "gelu", two_d, impl="cpp"))
    assert sorted(fused) == sorted([x.numel(), shift, 16])  # x, the shift, w (a parameter)
    # ...which the check tells apart from the reference, which keeps x + s and erf's output too
    reference = _saved_numels(lambda: raa_function(x, w, b, "gelu", two_d, impl="reference"))
    assert sum(reference) >= sum(fused) + 2 * x.numel()


@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "1d"])
def test_gradients_do_not_depend_on_the_thread_count(two_d):
    from biasbench.kernels import raa_cpu
    from tests.test_dac_layers import assert_same_bits_for_any_thread_count
    shape = (40, 19, 5, 7) if two_d else (40, 7, 35)
    for isa in _isas():
        w, b = _params(shape[1] if two_d else shape[-1], torch.float32)
        assert_same_bits_for_any_thread_count(
            lambda x, isa=isa, w=w, b=b: raa_cpu.raa(x, w, b, True, two_d, isa),
            torch.randn(shape, requires_grad=True), [w, b])


def test_modules_run_the_fused_kernel_and_the_reference_when_told_or_tracing():
    _isas()
    x = torch.randn(2, 5, 4, 4)
    conv_raa, token_raa = RAA2d(5, "gelu"), RAA(4, "relu")
    assert any(n.startswith("_RAACPU") for n in _autograd_names(conv_raa(x.requires_grad_())))
    assert any(n.startswith("_RAACPU") for n in _autograd_names(token_raa(x)))
    token_raa.impl = "reference"
    assert not any(n.startswith("_RAACPU") for n in _autograd_names(token_raa(x)))
    # a torch.jit trace sees the shift as a linear map, whatever impl says
    with warnings.catch_warnings():  # torch.jit.trace is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(conv_raa, (x.detach(),), check_trace=False)
    assert "aten::_convolution" in str(traced.graph) or "aten::conv2d" in str(traced.graph)
    # a forced kernel refuses what it cannot run instead of falling back
    conv_raa.impl = "cpp"
    with pytest.raises(RuntimeError, match="cannot run"):
        conv_raa.to(torch.bfloat16)(x.to(torch.bfloat16))
    with pytest.raises(ValueError, match="impl"):
        raa_function(x, conv_raa.weight, conv_raa.bias, "gelu", True, impl="fused")


def test_falls_back_to_the_reference_when_the_build_fails(monkeypatch):
    from biasbench.kernels import raa_cpu

    def broken(isa):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(raa_cpu.KERNEL, "state", {})
    monkeypatch.setattr(raa_cpu.KERNEL, "build", broken)
    layer = RAA2d(3, "gelu")
    x = torch.randn(2, 3, 5, 5)
    with pytest.warns(RuntimeWarning, match="RAA C\\+\\+ kernel .* unavailable"):
        out = layer(x)
    torch.testing.assert_close(out, raa_reference(x, layer.weight, layer.bias, "gelu", True))


def test_fused_kernel_runs_in_float32_under_cpu_autocast():
    _isas()
    layer = RAA(16, "gelu")
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)
    x = torch.randn(3, 5, 16).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32 and any(n.startswith("_RAACPU") for n in _autograd_names(out))
    torch.testing.assert_close(out, raa_reference(x.detach().float(), layer.weight, layer.bias, "gelu", False))


@pytest.mark.parametrize("two_d", [True, False], ids=["2d", "1d"])
def test_float32_gelu_is_accurate_far_into_both_tails(two_d):
    # float32 GELU takes its exp(-u^2 / 2) from an inline polynomial that clamps u^2 / 2 at 87.3:
    # values and gradients stay within float rounding of the float64 formula from u = -1e4 to
    # 1e4 (y -> 0 and y -> x, Phi'(u) -> 0), and NaN stays NaN. w = 0 makes u = x + b.
    from biasbench.kernels import raa_cpu
    u = torch.cat([torch.linspace(-16, 16, 1001), torch.tensor([-1e4, -200.0, -14.0, -13.5, 13.5, 200.0, 1e4])])
    n = 3 * 16 * 24  # whole vectors and a scalar tail in every width
    x32 = u.repeat(n // u.numel() + 1)[:n].reshape((3, 16, 4, 6) if two_d else (18, 4, 16))
    c = 16
    w = torch.zeros(c, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    x64 = x32.double().requires_grad_()
    want = raa_reference(x64, w.double(), b.double(), "gelu", two_d)
    (want_gx,) = torch.autograd.grad(want, x64, torch.ones_like(want))
    for isa in _isas():
        x = x32.clone().requires_grad_()
        got = raa_cpu.raa(x, w, b, True, two_d, isa)
        (gx,) = torch.autograd.grad(got, x, torch.ones_like(got))
        torch.testing.assert_close(got.double(), want.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gx.double(), want_gx, atol=1e-6, rtol=1e-6)
    nan = torch.full((2, c, 1, 1) if two_d else (2, c), float("nan"))
    assert raa_cpu.raa(nan, w.detach(), b.detach(), True, two_d).isnan().all()
