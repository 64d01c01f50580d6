"""DAC layers against the loop references: values, gradients, identities, saved memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasbench.layers import DACConv2d, DACLinear
from biasbench.layers.dac_functional import dac_conv2d_chunked, dac_linear_chunked
from biasbench.layers.dac_reference import dac_conv2d_reference, dac_linear_reference
from biasbench.params import parameter_roles

# (in, out, kernel, stride, padding, H, W): odd and non-square sizes, 1x1 and 3x3, strides 1/2.
CONV_CASES = [
    (3, 4, 3, 1, 1, 7, 5),
    (3, 4, 3, 2, 1, 7, 5),
    (2, 5, 3, 1, 0, 7, 5),
    (2, 3, 3, 2, 0, 8, 7),
    (4, 3, 1, 1, 0, 5, 7),
    (4, 6, 1, 2, 0, 7, 5),
    (3, 2, 1, 2, 1, 5, 5),
]


def _conv_layer(cin, cout, k, s, p, sharing, impl="chunked", dtype=torch.float64):
    torch.manual_seed(0)
    layer = DACConv2d(cin, cout, k, s, p, bias_sharing=sharing, impl=impl, dtype=dtype)
    with torch.no_grad():  # non-zero biases, so the test sees the unshared part at work
        layer.unshared_bias.normal_(0, 0.7)
    return layer


def _grads(out: torch.Tensor, tensors: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad(out, tensors, g))


def check_conv_against_reference(layer: DACConv2d, h: int, w: int, atol: float = 1e-10) -> None:
    z = torch.randn(2, layer.in_channels, h, w, dtype=layer.weight.dtype, requires_grad=True)
    params = [z, layer.weight, layer.unshared_bias]
    out = layer(z)
    ref = dac_conv2d_reference(z, layer.weight, layer.unshared_bias, layer.stride, layer.padding)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=atol)
    for got, want in zip(_grads(out, params), _grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=atol)


@pytest.mark.parametrize("sharing", ["kernel", "none"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_matches_reference(case, sharing):
    cin, cout, k, s, p, h, w = case
    check_conv_against_reference(_conv_layer(cin, cout, k, s, p, sharing), h, w)


@pytest.mark.parametrize("sharing", ["kernel", "none"])
def test_conv_chunks_agree_with_one_chunk(sharing):
    # A budget of one element forces one output channel per chunk: the concatenation and the
    # per-chunk gradient accumulation must give the same values as a single chunk.
    layer = _conv_layer(3, 5, 3, 1, 1, sharing)
    z = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    args = (z, layer.weight, layer.unshared_bias, 1, 1, torch.relu)
    small, big = dac_conv2d_chunked(*args, budget=1), dac_conv2d_chunked(*args, budget=1 << 30)
    torch.testing.assert_close(small, big)
    params = [z, layer.weight, layer.unshared_bias]
    for a, b in zip(_grads(small, params), _grads(big, params), strict=True):
        torch.testing.assert_close(a, b)


def test_linear_matches_reference():
    torch.manual_seed(0)
    layer = DACLinear(6, 5, bias=True, impl="chunked", dtype=torch.float64)
    with torch.no_grad():
        layer.unshared_bias.normal_(0, 0.7)
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    params = [z, layer.weight, layer.unshared_bias, layer.bias]
    out = layer(z)
    ref = dac_linear_reference(z, layer.weight, layer.unshared_bias) + layer.bias
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, params), _grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)


def test_linear_accepts_leading_dims_and_small_chunks():
    torch.manual_seed(0)
    layer = DACLinear(6, 5, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.unshared_bias.normal_()
    z = torch.randn(2, 3, 6, dtype=torch.float64)
    out = layer(z)
    assert out.shape == (2, 3, 5)
    ref = dac_linear_reference(z.reshape(6, 6), layer.weight, layer.unshared_bias).reshape(2, 3, 5)
    torch.testing.assert_close(out, ref)
    chunked = dac_linear_chunked(z.reshape(6, 6), layer.weight, layer.unshared_bias, torch.relu,
                                 budget=1)
    torch.testing.assert_close(chunked.reshape(2, 3, 5), ref)


@pytest.mark.parametrize("sharing", ["kernel", "none"])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_gradcheck(sharing, stride, padding):
    layer = _conv_layer(2, 3, 3, stride, padding, sharing)
    z = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    # Keep pre-activations away from the ReLU kink so finite differences are meaningful.
    with torch.no_grad():
        layer.unshared_bias.copy_(torch.round(layer.unshared_bias * 2) / 2 + 0.25)
        z.copy_(torch.round(z * 2) / 2)

    def fn(z, w, b):
        return dac_conv2d_chunked(z, w, b, stride, padding, torch.relu, budget=100)

    # fast_mode checks random projections of the Jacobian: same failure modes, far fewer calls.
    assert torch.autograd.gradcheck(fn, (z, layer.weight, layer.unshared_bias), eps=1e-6,
                                    fast_mode=True)


def test_linear_gradcheck():
    torch.manual_seed(0)
    z = (torch.round(torch.randn(3, 4, dtype=torch.float64) * 2) / 2).requires_grad_()
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = (torch.round(torch.randn(5, 4, dtype=torch.float64) * 2) / 2 + 0.25).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, w, b: dac_linear_chunked(z, w, b, torch.relu, budget=8), (z, w, b), eps=1e-6)


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_with_output_independent_bias_is_activation_then_conv(activation, stride, padding):
    # B[i,j] = b_j for every i: DAC = phi(z + b) then the plain conv, exactly, including borders
    # (padding after the activation). phi(0) != 0 for softplus, so a wrong padding order fails.
    layer = DACConv2d(3, 4, 3, stride, padding, activation=activation, bias=True, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        layer.unshared_bias.copy_(b.expand(4, 3))
    z = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    plain = F.conv2d(layer.phi(z + b.view(1, 3, 1, 1)), layer.weight, layer.bias, stride, padding)
    torch.testing.assert_close(layer(z), plain)


def test_linear_with_output_independent_bias_is_activation_then_linear():
    layer = DACLinear(6, 4, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    with torch.no_grad():
        layer.unshared_bias.copy_(b.expand(4, 6))
    z = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(z), F.linear(torch.relu(z + b), layer.weight, layer.bias))


def _saved_numels(fn) -> list[int]:
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return sizes


@pytest.mark.parametrize("sharing", ["kernel", "none"])
def test_conv_does_not_save_expanded_input(sharing):
    layer = _conv_layer(8, 16, 3, 1, 1, sharing, dtype=torch.float32)
    z = torch.randn(2, 8, 9, 9, requires_grad=True)
    limit = 2 * max(z.numel(), layer.weight.numel(), 2 * 16 * 9 * 9)
    sizes = _saved_numels(lambda: layer(z))
    assert sizes and max(sizes) >= z.numel()  # the hook does see what the layer keeps
    assert max(sizes) <= limit, sizes
    # ...and the same check would catch the naive formulation, which keeps the expansion.
    naive = _saved_numels(lambda: dac_conv2d_reference(z[:, :, :3, :3], layer.weight,
                                                       layer.unshared_bias, 1, 1))
    assert max(naive) > 0 and sum(naive) > limit


def test_linear_does_not_save_expanded_input():
    layer = DACLinear(64, 64)
    z = torch.randn(32, 64, requires_grad=True)
    sizes = _saved_numels(lambda: layer(z))
    assert sizes and max(sizes) <= 2 * max(z.numel(), layer.weight.numel())


def test_fresh_layers_start_as_activation_then_plain_layer():
    conv = DACConv2d(3, 4, 3, 1, 1)
    assert torch.count_nonzero(conv.unshared_bias) == 0 and conv.bias is None
    z = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(z), F.conv2d(torch.relu(z), conv.weight, None, 1, 1))
    lin = DACLinear(5, 3)
    assert lin.bias is not None and lin.unshared_bias.shape == lin.weight.shape == (3, 5)
    assert DACLinear(5, 3, bias=False).bias is None


def test_reset_parameters_restores_zero_biases_and_fresh_weights():
    conv = DACConv2d(4, 4, 3, bias_sharing="none", bias=True)
    assert conv.unshared_bias.shape == (4, 4, 3, 3)
    with torch.no_grad():
        conv.unshared_bias.fill_(1.0)
        conv.weight.fill_(0.0)
    conv.reset_parameters()
    assert torch.count_nonzero(conv.unshared_bias) == 0
    bound = 1 / (4 * 9) ** 0.5  # kaiming_uniform(a=sqrt(5)) bound, as nn.Conv2d
    assert 0 < conv.weight.abs().max() <= bound + 1e-6


@pytest.mark.parametrize("make_dac, make_torch", [
    (lambda: DACLinear(5, 3), lambda: torch.nn.Linear(5, 3)),
    (lambda: DACConv2d(4, 6, 3, bias=True), lambda: torch.nn.Conv2d(4, 6, 3, bias=True)),
])
def test_a_dac_layer_draws_torchs_weight_and_bias_init_for_a_seed(make_dac, make_torch):
    # the same random numbers in the same order as the plain torch layer, and B = 0
    torch.manual_seed(3)
    dac = make_dac()
    torch.manual_seed(3)
    plain = make_torch()
    assert torch.equal(dac.weight, plain.weight) and torch.equal(dac.bias, plain.bias)
    assert torch.count_nonzero(dac.unshared_bias) == 0


def test_device_dtype_and_roles():
    conv = DACConv2d(2, 3, 3, bias=True, dtype=torch.float64, device="cpu")
    lin = DACLinear(2, 3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in [*conv.parameters(), *lin.parameters()])
    roles = parameter_roles(torch.nn.Sequential(conv, lin))
    assert roles == {"0.weight": "weight", "0.unshared_bias": "bias", "0.bias": "bias",
                     "1.weight": "weight", "1.unshared_bias": "bias", "1.bias": "bias"}


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bias_sharing"):
        DACConv2d(2, 3, 3, bias_sharing="kernels")
    with pytest.raises(ValueError, match="activation"):
        DACLinear(2, 3, activation="rleu")
    with pytest.raises(ValueError, match="square"):
        DACConv2d(2, 3, (3, 1))
    with pytest.raises(RuntimeError, match="cannot run"):  # fused kernels are ReLU-only
        DACConv2d(2, 3, 3, activation="tanh", impl="cpp")(torch.randn(1, 2, 5, 5))
    with pytest.raises(RuntimeError, match="no 'triton' kernel"):
        DACLinear(2, 3, impl="triton")(torch.randn(1, 2))


# -- fused kernels: held to the reference like the chunked path -------------------------------

# Wider / taller planes and batch 37 reach the vector loops, the stride-2 even/odd split and
# the sample blocking of the C++ kernel, which the tiny CONV_CASES do not.
FAST_CASES = CONV_CASES + [
    (3, 4, 3, 1, 1, 19, 37),
    (3, 4, 3, 2, 1, 19, 37),
    (2, 3, 3, 2, 0, 20, 34),
    (2, 3, 5, 1, 2, 11, 29),
    (2, 3, 1, 2, 0, 12, 35),
    # Lane-blocked kernels (k = 1, 3) vectorise over the output channels (AVX-512: 16 float / 8
    # double lanes, AVX2: 8 / 4): several channel blocks with a partial last one at either
    # width, output widths off the position blocks, planes whose size is no multiple of the
    # lane count (the in-register transposes' tails, dz's lane sums), both column phases of
    # stride 2 (padding 1 and 0), and row tiles (33x35).
    (5, 11, 3, 1, 1, 9, 13),
    (4, 19, 3, 2, 1, 10, 17),
    (3, 9, 3, 2, 0, 11, 15),
    (6, 17, 1, 1, 0, 6, 9),
    (5, 13, 1, 2, 1, 7, 11),
    (3, 37, 3, 1, 1, 9, 13),
    (2, 33, 3, 2, 1, 10, 17),
    (2, 8, 3, 1, 1, 33, 35),
    (2, 5, 3, 2, 1, 33, 35),
    # other kernel sizes keep the plane-per-output-channel kernels, stride 2 included
    (3, 4, 5, 2, 2, 12, 13),
]


def kernel_isas(kernel) -> list[str]:
    """The builds to test here: every vector width this CPU runs (AVX-512 and AVX2 on an AVX-512
    machine: the AVX2 build is what a CPU without AVX-512 runs). Skips only when this CPU's own
    build is unavailable (no C++ compiler); a narrower build that fails where the native one
    builds is a failure."""
    from biasbench.kernels import build
    if not kernel.available(build.native_isa()):
        pytest.skip(f"{kernel.what} C++ kernel unavailable here: {kernel.error(build.native_isa())}")
    isas = [isa for isa in build.supported_isas() if isa != "portable"] or ["portable"]
    for isa in isas:
        assert kernel.available(isa), (isa, kernel.error(isa))
    return isas


def _cpp_or_skip() -> list[str]:
    from biasbench.kernels import dac_cpu
    return kernel_isas(dac_cpu.KERNEL)


def _tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", FAST_CASES, ids=lambda c: "x".join(map(str, c)))
def test_cpp_kernel_matches_chunked_and_reference(case, dtype):
    # Every build (vector width) against the chunked path, and the builds against each other.
    from biasbench.kernels import dac_cpu
    isas = _cpp_or_skip()
    cin, cout, k, s, p, h, w = case
    slow = _conv_layer(cin, cout, k, s, p, "kernel", impl="chunked", dtype=dtype)
    batch = 37 if h * w <= 64 else 3
    z = torch.randn(batch, cin, h, w, dtype=dtype, requires_grad=True)
    params = [z, slow.weight, slow.unshared_bias]
    ref = slow(z)
    want = [ref, *_grads(ref, params)]
    tol = _tolerance(dtype)
    results = {}
    for isa in isas:
        out = dac_cpu.dac_conv2d(z, slow.weight, slow.unshared_bias, s, p, isa)
        results[isa] = [out, *_grads(out, params)]
        for a, b in zip(results[isa], want, strict=True):
            torch.testing.assert_close(a, b, **tol)
    for a, b in zip(*results.values(), strict=False):  # the widths agree with each other too
        torch.testing.assert_close(a, b, **tol)
    if dtype == torch.float64 and batch == 3 and h < 10:  # and the loop reference, on small shapes
        check_conv_against_reference(_conv_layer(cin, cout, k, s, p, "kernel", impl="cpp"), h, w)


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (1, 1), (5, 1)])
def test_cpp_kernel_gradients_do_not_depend_on_the_thread_count(k, stride):
    # A seed must fix a run on any CPU: the same bits with 1 thread as with several, per build.
    from biasbench.kernels import dac_cpu
    for isa in _cpp_or_skip():
        layer = _conv_layer(6, 19, k, stride, k // 2, "kernel", impl="cpp", dtype=torch.float32)
        z = torch.randn(40, 6, 9, 9, requires_grad=True)
        assert_same_bits_for_any_thread_count(
            lambda z, layer=layer, isa=isa: dac_cpu.dac_conv2d(z, layer.weight, layer.unshared_bias, stride,
                                                               k // 2, isa),
            z, [layer.weight, layer.unshared_bias])


def assert_same_bits_for_any_thread_count(fn, z: torch.Tensor, params: list[torch.Tensor]) -> None:
    """fn(z)'s output and gradients are bit-identical with 1, 2 and 3 threads."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = fn(z)
            results.append([out, *_grads(out, [z, *params])])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_cpp_kernel_is_what_auto_picks_and_saves_only_inputs():
    _cpp_or_skip()
    layer = _conv_layer(8, 16, 3, 1, 1, "kernel", impl="auto", dtype=torch.float32)
    z = torch.randn(2, 8, 9, 9, requires_grad=True)
    out = layer(z)
    assert type(out.grad_fn).__name__.startswith("_DACConvCPU")
    sizes = _saved_numels(lambda: layer(z))
    assert sizes and max(sizes) <= 2 * max(z.numel(), layer.weight.numel())


def test_auto_falls_back_when_the_compiler_fails(monkeypatch):
    from biasbench.kernels import dac_cpu

    def broken_build():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(dac_cpu.KERNEL, "state", {})
    monkeypatch.setattr(dac_cpu.KERNEL, "build", lambda isa: broken_build())
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert not dac_cpu.available()
    layer = _conv_layer(3, 4, 3, 2, 1, "kernel", impl="auto")
    z = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    out = layer(z)
    assert type(out.grad_fn).__name__.startswith("_ChunkedDAC")
    torch.testing.assert_close(out, dac_conv2d_reference(z, layer.weight, layer.unshared_bias, 2, 1))
    monkeypatch.setattr(dac_cpu.KERNEL, "state", {})
    monkeypatch.setenv("BIASBENCH_DAC_CPP", "0")
    assert not dac_cpu.available()


def test_cpp_build_name_changes_with_the_cpu_flags(monkeypatch):
    # -march=native code is only safe where the ISA matches; model names alone ("AMD EPYC" under
    # a hypervisor) can cover CPUs with and without AVX-512: two such CPUs get two builds.
    from biasbench.kernels import build, dac_cpu

    model = "model name\t: AMD EPYC Processor"
    avx2 = f"{model}\nflags\t\t: fpu sse2 avx avx2 fma"
    avx512 = f"{model}\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512dq"
    source = build.HERE / dac_cpu.KERNEL.source

    def name(info: str, isa: str = "avx2") -> str:
        monkeypatch.setattr(build, "cpu_info", lambda: info)
        return build.build_name(source, dac_cpu.KERNEL.namespace(isa), isa)

    assert name(avx2) != name(avx512)  # the same AVX2 build, on CPUs that differ only in AVX-512
    assert name(avx2) == name(avx2)  # and nothing else moves it
    assert name(avx512, "avx512") not in (name(avx512), name(avx2))  # each ISA its own build
    assert name(avx2).startswith(dac_cpu.KERNEL.namespace("avx2") + "_")


def test_isa_follows_the_cpu_and_the_environment(monkeypatch):
    from biasbench.errors import UserError
    from biasbench.kernels import build
    monkeypatch.setattr(build, "cpu_flags", lambda: {"avx2", "fma", "sse2"})
    monkeypatch.delenv(build.ISA_ENV, raising=False)
    assert build.native_isa() == build.selected_isa() == "avx2"
    assert build.supported_isas() == ["avx2", "portable"]
    monkeypatch.setenv(build.ISA_ENV, "avx512")  # this "CPU" lacks AVX-512: refused, not ignored
    with pytest.raises(UserError, match="avx512f"):
        build.selected_isa()
    monkeypatch.setenv(build.ISA_ENV, "avx513")
    with pytest.raises(UserError, match="avx513"):
        build.selected_isa()
    monkeypatch.setattr(build, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    monkeypatch.delenv(build.ISA_ENV)
    assert build.selected_isa() == "avx512"
    monkeypatch.setenv(build.ISA_ENV, "avx2")  # the stand-in for a CPU without AVX-512
    assert build.selected_isa() == "avx2"
    monkeypatch.setattr(build, "cpu_flags", lambda: set())  # neither: portable vectors
    monkeypatch.delenv(build.ISA_ENV)
    assert build.selected_isa() == "portable"


def test_forced_avx2_build_is_what_layers_run(monkeypatch):
    # BIASBENCH_CPU_ISA=avx2 makes the layers call the 256-bit build: what a CPU without
    # AVX-512 runs, on this machine.
    from biasbench.kernels import build, dac_cpu
    if "avx2" not in _cpp_or_skip():
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setenv(build.ISA_ENV, "avx2")
    calls = []
    real_ops = dac_cpu.KERNEL.ops
    monkeypatch.setattr(dac_cpu.KERNEL, "ops", lambda isa=None: calls.append(isa or build.selected_isa())
                        or real_ops(isa))
    layer = _conv_layer(3, 19, 3, 1, 1, "kernel", impl="auto", dtype=torch.float32)
    z = torch.randn(2, 3, 7, 5, requires_grad=True)
    layer(z).sum().backward()
    assert calls == ["avx2", "avx2"]  # forward and backward


@pytest.mark.parametrize("kernel_module", ["dac_cpu", "dac_linear_cpu", "raa_cpu"])
def test_avx2_build_has_no_512_bit_instructions(kernel_module):
    # The stand-in for a CPU without AVX-512 must not contain one AVX-512 instruction (zmm
    # registers or opmask registers), while the AVX-512 build does use them.
    import importlib
    import shutil
    import subprocess

    from biasbench.kernels import build
    kernel = importlib.import_module(f"biasbench.kernels.{kernel_module}").KERNEL
    isas = kernel_isas(kernel)
    if "avx2" not in isas or shutil.which("objdump") is None:
        pytest.skip("needs an AVX2 CPU and objdump")

    def disassembly(isa: str) -> str:
        lib = build.library_path(kernel, isa)
        return subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout

    avx2 = disassembly("avx2")
    assert "%ymm" in avx2 and "%zmm" not in avx2 and "{%k" not in avx2
    if "avx512" in isas:
        assert "%zmm" in disassembly("avx512")


# -- fused dense kernel (biasbench/kernels/dac_linear_cpu.cpp) ----------------------------------

def _linear_cpp_or_skip() -> list[str]:
    from biasbench.kernels import dac_linear_cpu
    return kernel_isas(dac_linear_cpu.KERNEL)


def _autograd_names(out: torch.Tensor) -> list[str]:
    """Autograd nodes from `out` down to the DAC operator (DACLinear adds the output bias and
    restores leading dims after it), following the first non-leaf input."""
    names, node = [], out.grad_fn
    while node is not None:
        names.append(node.name())  # (a C++ node's type is CppFunction; its name says which)
        node = next((f for f, _ in node.next_functions
                     if f is not None and type(f).__name__ != "AccumulateGrad"), None)
    return names


def _linear_layer(cin, cout, impl, dtype, bias=True):
    torch.manual_seed(0)
    layer = DACLinear(cin, cout, bias=bias, impl=impl, dtype=dtype)
    with torch.no_grad():
        layer.unshared_bias.normal_(0, 0.7)
    return layer


# (leading dims, in, out): sizes no multiple of the vector width (8 floats / 4 doubles), a
# single sample, sample counts that leave partial blocks of 4, and leading dimensions.
LINEAR_CASES = [((37,), 13, 7), ((1,), 13, 7), ((37,), 141, 141), ((2, 3), 13, 7), ((5,), 8, 3),
                ((70,), 300, 9)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0]}x{c[1]}->{c[2]}")
def test_cpp_linear_matches_chunked_and_reference(case, dtype):
    from biasbench.kernels import dac_linear_cpu
    isas = _linear_cpp_or_skip()
    lead, cin, cout = case
    fast = _linear_layer(cin, cout, "cpp", dtype)
    slow = _linear_layer(cin, cout, "chunked", dtype)
    z = torch.randn(*lead, cin, dtype=dtype, requires_grad=True)
    out, ref = fast(z), slow(z)
    assert out.shape == (*lead, cout)
    assert any("DACLinearNode" in n for n in _autograd_names(out))
    tol = _tolerance(dtype)
    loop = dac_linear_reference(z.reshape(-1, cin), fast.weight, fast.unshared_bias) + fast.bias
    loop = loop.reshape(*lead, cout)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(out, loop, **tol)
    params = [z, fast.weight, fast.unshared_bias, fast.bias]
    got = _grads(out, params)
    want = _grads(ref, [z, slow.weight, slow.unshared_bias, slow.bias])
    want_loop = _grads(loop, params)
    for a, b, c in zip(got, want, want_loop, strict=True):
        torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(a, c, **tol)
    # every build (vector width) against the layer's, values and gradients
    flat = z.reshape(-1, cin)
    for isa in isas:
        other = (dac_linear_cpu.dac_linear(flat, fast.weight, fast.unshared_bias, isa) + fast.bias).reshape(out.shape)
        for a, b in zip([other, *_grads(other, params)], [out, *got], strict=True):
            torch.testing.assert_close(a, b, **tol)


def test_cpp_linear_gradients_do_not_depend_on_the_thread_count():
    from biasbench.kernels import dac_linear_cpu
    for isa in _linear_cpp_or_skip():
        for cin, cout, batch in ((141, 19, 70), (13, 7, 37)):
            layer = _linear_layer(cin, cout, "cpp", torch.float32)
            assert_same_bits_for_any_thread_count(
                lambda z, layer=layer, isa=isa: dac_linear_cpu.dac_linear(z, layer.weight, layer.unshared_bias, isa),
                torch.randn(batch, cin, requires_grad=True), [layer.weight, layer.unshared_bias])


@pytest.mark.parametrize("cin,cout", [(784, 256), (256, 256), (256, 10), (181, 181), (181, 10)],
                         ids=lambda v: str(v))
def test_cpp_linear_gradients_on_mnist_shapes_do_not_depend_on_the_thread_count(cin, cout):
    """The layers of the MLP 784-256-256-10 at batch 128 (issue 22), and its DAC twin's (hidden
    181: padded rows, several chunks of partial sums reduced by rows shared between threads):
    where the work is split between threads differs most from the small cases above, and the
    bits must not."""
    from biasbench.kernels import dac_linear_cpu
    for isa in _linear_cpp_or_skip():
        layer = _linear_layer(cin, cout, "cpp", torch.float32)
        z = (torch.rand if cin == 784 else torch.randn)(128, cin, requires_grad=True)  # pixels, hidden units
        assert_same_bits_for_any_thread_count(
            lambda z, layer=layer, isa=isa: dac_linear_cpu.dac_linear(z, layer.weight, layer.unshared_bias, isa),
            z, [layer.weight, layer.unshared_bias])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_linear_is_what_auto_picks_and_saves_only_inputs(dtype):
    _linear_cpp_or_skip()
    layer = DACLinear(64, 48, impl="auto", dtype=dtype)
    z = torch.randn(32, 64, dtype=dtype, requires_grad=True)
    assert any("DACLinearNode" in n for n in _autograd_names(layer(z)))
    sizes = _saved_numels(lambda: layer(z))
    assert sizes and max(sizes) <= 2 * max(z.numel(), layer.weight.numel())
    # other activations keep the chunked path
    tanh = DACLinear(64, 48, activation="tanh", dtype=dtype)
    assert any(n.startswith("_ChunkedDAC") for n in _autograd_names(tanh(z)))
    with pytest.raises(RuntimeError, match="cannot run"):
        DACLinear(64, 48, activation="tanh", impl="cpp", dtype=dtype)(z)


@pytest.mark.parametrize("bias", [True, False])
def test_cpp_linear_node_in_inference_mode_and_without_bias(bias):
    """The layer's operator has a CPU kernel for inference mode (no autograd key) and an
    autograd node otherwise: both give the reference loop's outputs; without an output bias the
    node returns no bias gradient and the others match the loop's."""
    _linear_cpp_or_skip()
    torch.manual_seed(0)
    layer = _linear_layer(13, 7, "cpp", torch.float64, bias=bias)
    z = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
    loop = dac_linear_reference(z, layer.weight, layer.unshared_bias) + (layer.bias if bias else 0)
    with torch.inference_mode():
        inferred = layer(z)
    assert inferred.is_inference()
    torch.testing.assert_close(inferred, loop.detach())
    out = layer(z)
    assert any("DACLinearNode" in n for n in _autograd_names(out))
    params = [z, layer.weight, layer.unshared_bias] + ([layer.bias] if bias else [])
    for a, b in zip(_grads(out, params), _grads(loop, params), strict=True):
        torch.testing.assert_close(a, b)


def test_linear_auto_falls_back_when_the_compiler_fails(monkeypatch):
    from biasbench.kernels import dac_linear_cpu

    def broken_build():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(dac_linear_cpu.KERNEL, "state", {})
    monkeypatch.setattr(dac_linear_cpu.KERNEL, "build", lambda isa: broken_build())
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert not dac_linear_cpu.available()
    layer = _linear_layer(6, 5, "auto", torch.float64, bias=False)
    z = torch.randn(4, 6, dtype=torch.float64)
    out = layer(z)
    assert any(n.startswith("_ChunkedDAC") for n in _autograd_names(out))
    torch.testing.assert_close(out, dac_linear_reference(z, layer.weight, layer.unshared_bias))
    with pytest.raises(RuntimeError, match="cannot run"):  # a forced kernel never falls back
        _linear_layer(6, 5, "cpp", torch.float64)(z)
    monkeypatch.setattr(dac_linear_cpu.KERNEL, "state", {})
    monkeypatch.setenv("BIASBENCH_DAC_CPP", "0")
    assert not dac_linear_cpu.available()


def test_non_relu_and_fully_unshared_layers_take_the_chunked_path():
    z = torch.randn(1, 2, 5, 5)
    for layer in (DACConv2d(2, 3, 3, activation="tanh"), DACConv2d(2, 3, 3, bias_sharing="none")):
        assert type(layer(z).grad_fn).__name__.startswith("_ChunkedDAC")


TRITON_CASES = [(2, 3, 3, 1, 1, 7, 5), (2, 3, 3, 2, 1, 7, 5), (2, 2, 1, 2, 0, 5, 7), (2, 2, 3, 2, 0, 8, 7)]

# Interpreter mode must be chosen before triton is first imported (triton.language's own jitted
# helpers are built at import), so the check runs in a fresh interpreter with TRITON_INTERPRET=1.
_TRITON_CHECK = """
import sys, torch
from biasbench.kernels import dac_triton
from biasbench.layers.dac_reference import dac_conv2d_reference
assert dac_triton.available()
torch.manual_seed(0)
for cin, cout, k, s, p, h, w in CASES:
    z = torch.randn(2, cin, h, w, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(cout, cin, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, cin, dtype=torch.float64, requires_grad=True)
    out = dac_triton.dac_conv2d(z, wt, b, s, p)
    ref = dac_conv2d_reference(z, wt, b, s, p)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, [z, wt, b], g), torch.autograd.grad(ref, [z, wt, b], g)):
        torch.testing.assert_close(got, want)
print("ok", len(CASES))
"""


def test_triton_kernel_matches_reference_in_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"CASES = {TRITON_CASES!r}\n" + _TRITON_CHECK
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and f"ok {len(TRITON_CASES)}" in proc.stdout, proc.stderr[-3000:]


# -- the Triton kernel on a GPU (benchmarks/gpu_check.sh runs these: pytest -k cuda) -----------

# (in, out, spatial size, stride) of every 3x3 conv shape in a CIFAR ResNet20
RESNET20_CONVS = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", RESNET20_CONVS, ids=lambda c: "x".join(map(str, c)))
def test_triton_kernel_on_cuda_matches_reference(case, dtype):
    from biasbench.kernels import dac_triton
    cin, cout, hw, stride = case
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(4, cin, hw, hw, device="cuda", generator=g).to(dtype).requires_grad_()
    w = (torch.randn(cout, cin, 3, 3, device="cuda", generator=g) / (9 * cin) ** 0.5).to(dtype).requires_grad_()
    b = (torch.randn(cout, cin, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    out = dac_triton.dac_conv2d(z, w, b, stride, 1)
    assert out.dtype == dtype and type(out.grad_fn).__name__.startswith("_DACConvTriton")
    # the truth: the chunked path in float64 on the same (rounded) inputs
    z64, w64, b64 = (t.detach().double().requires_grad_() for t in (z, w, b))
    ref = dac_conv2d_chunked(z64, w64, b64, stride, 1, torch.relu)
    grad = torch.randn(ref.shape, device="cuda", generator=g).to(dtype)
    got = [out, *torch.autograd.grad(out, [z, w, b], grad)]
    want = [ref, *torch.autograd.grad(ref, [z64, w64, b64], grad.double())]
    rel = 1e-4 if dtype == torch.float32 else 2e-2  # bf16 keeps 8 bits: outputs rounded once
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=rel, atol=rel * e.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layers_on_cuda_take_the_triton_kernel():
    layer = _conv_layer(3, 5, 3, 2, 1, "kernel", impl="auto", dtype=torch.float32).cuda()
    z = torch.randn(2, 3, 9, 9, device="cuda", requires_grad=True)
    out = layer(z)
    assert type(out.grad_fn).__name__.startswith("_DACConvTriton")
    torch.testing.assert_close(out, dac_conv2d_reference(z, layer.weight, layer.unshared_bias, 2, 1))


def test_fused_kernels_run_in_float32_under_cpu_autocast():
    # The C++ kernels have no bfloat16 path: under CPU autocast the layers hand them float32
    # (as autocast runs a float32 op) instead of failing on mixed dtypes.
    _cpp_or_skip()
    _linear_cpp_or_skip()
    conv = _conv_layer(3, 19, 3, 2, 1, "kernel", impl="auto", dtype=torch.float32)
    dense = _linear_layer(13, 7, "auto", torch.float32)
    for layer, shape, node in ((conv, (2, 3, 7, 5), "_DACConvCPU"), (dense, (4, 13), "DACLinearNode")):
        z = torch.randn(shape).to(torch.bfloat16).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(z)
        assert out.dtype == torch.float32 and any(node in n for n in _autograd_names(out))
        torch.testing.assert_close(out, layer(z.detach().float()))
        out.sum().backward()
        assert z.grad is not None and z.grad.dtype == torch.bfloat16
