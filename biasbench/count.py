"""Parameters, MACs and FLOPs of a model, under the DAC paper's conventions (docs/dac.md).

    from biasbench.count import complexity
    complexity(model, (3, 80, 80))  # -> {"params": {...}, "macs": ..., "flops": ..., "skipped_ops": {...}}

The counting convention ("dac-paper"), for one input sample in inference mode:
- conv / dense / matmul: 2 FLOPs per multiply-add, plus 1 per output element for a layer bias;
- BatchNorm (and BN'): 2 FLOPs per element, the folded inference-time scale and shift (BN' keeps
  a shift at inference: the running mean), as fvcore counts it; global average pooling 1 per
  input element;
- activations, residual additions and reshapes: not counted (the paper ignores activation
  costs; residual additions are listed under `skipped_ops`, not silently dropped);
- DAC conv with kernel-shared biases: 2 per multiply-add plus the *cached* pre-activation
  additions, out*in per input position the kernel reads (the paper's m*n*s*t; for a strided
  conv the cache covers every input position a tap touches). Fully unshared biases cannot be
  cached: one addition per multiply-add. DAC dense: 3 per multiply-add (2 + the bias addition);
- MBA: one addition per output element (K*C per position); shared-bias pre-activation: one
  per element.

fvcore traces the model and counts standard operators. DAC, MBA and shared-bias
pre-activation layers are counted as whole modules: while counting, their forward is swapped
for a custom operator (namespace `biasbench_count`) that fvcore sees as one node with its own
handle, so their internals (grouped convs, kernels) never reach the count.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

with warnings.catch_warnings():  # fvcore touches torch.jit.script, deprecated in recent torch
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import batchnorm_flop_jit, get_shape
from torch import nn

from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.layers.mba import MultiBiasActivation
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.params import count_by_role

CONVENTION = "dac-paper"

# -- custom operators that stand for whole layers while counting --------------------------------
_LIB = torch.library.Library("biasbench_count", "DEF")
_LIB.define("dac_conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padding, bool cached) -> Tensor")
_LIB.define("dac_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIB.define("multi_bias(Tensor x, int K) -> Tensor")
_LIB.define("shared_bias_preact(Tensor x) -> Tensor")
# The stand-ins only need the right output shapes: later layers' counts depend on shapes alone.
_LIB.impl("dac_conv2d", lambda x, w, b, s, p, cached: F.conv2d(x, w, b, s, p), "CompositeExplicitAutograd")
_LIB.impl("dac_linear", lambda x, w, b: F.linear(x, w, b), "CompositeExplicitAutograd")
_LIB.impl("multi_bias", lambda x, k: torch.cat([x] * k, dim=1), "CompositeExplicitAutograd")
_LIB.impl("shared_bias_preact", lambda x: x.clone(), "CompositeExplicitAutograd")
_OPS = torch.ops.biasbench_count


def _stand_in(module: nn.Module):
    if isinstance(module, DACConv2d):
        cached = module.unshared_bias.dim() == 2
        return lambda x: _OPS.dac_conv2d(x, module.weight, module.bias, module.stride, module.padding, cached)
    if isinstance(module, DACLinear):
        return lambda x: _OPS.dac_linear(x, module.weight, module.bias)
    if isinstance(module, MultiBiasActivation):
        return lambda x: _OPS.multi_bias(x, module.K)
    if isinstance(module, SharedBiasPreActivation):
        return lambda x: _OPS.shared_bias_preact(x)
    return None


@contextlib.contextmanager
def _layers_as_operators(model: nn.Module) -> Iterator[None]:
    swapped = []
    for module in model.modules():
        stand_in = _stand_in(module)
        if stand_in is not None:
            module.forward = stand_in  # instance attribute shadows the class's forward
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


# -- handles: each returns FLOPs and adds its multiply-adds to the tally -----------------------
def touched_positions(size: int, kernel: int, stride: int, padding: int) -> int:
    """Input positions along one axis that some kernel tap reads (padding excluded)."""
    out = (size + 2 * padding - kernel) // stride + 1
    return len({o * stride - padding + a for o in range(out) for a in range(kernel)} & set(range(size)))


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return math.prod(shape) if shape is not None else 0


def _handles(tally: Counter) -> dict[str, Any]:
    def with_bias(macs: int, bias: Any, outputs: list) -> int:
        tally["macs"] += macs
        return 2 * macs + (_numel(outputs[0]) if get_shape(bias) is not None else 0)

    def conv(inputs, outputs):
        w = get_shape(inputs[1])
        return with_bias(_numel(outputs[0]) * math.prod(w[1:]), inputs[2], outputs)

    def linear(inputs, outputs):  # aten::linear(x, weight, bias)
        w = get_shape(inputs[1])
        return with_bias(_numel(outputs[0]) * w[1], inputs[2], outputs)

    def addmm(inputs, outputs):  # aten::addmm(bias, x, weight^T)
        return with_bias(_numel(outputs[0]) * get_shape(inputs[1])[-1], inputs[0], outputs)

    def matmul(inputs, outputs):  # mm / matmul / bmm: inner dimension of the first operand
        tally["macs"] += _numel(outputs[0]) * get_shape(inputs[0])[-1]
        return 2 * _numel(outputs[0]) * get_shape(inputs[0])[-1]

    def dac_conv(inputs, outputs):
        n, c_in, h, w = get_shape(inputs[0])
        c_out, _, k, _ = get_shape(inputs[1])
        stride, padding, cached = (inputs[i].toIValue() for i in (3, 4, 5))
        macs = _numel(outputs[0]) * c_in * k * k
        if cached:  # phi(B[i,j] + z[j, p]) once per (i, j, input position read)
            read = touched_positions(h, k, stride, padding) * touched_positions(w, k, stride, padding)
            adds = n * c_out * c_in * read
        else:  # one bias per weight: one addition per multiply-add
            adds = macs
        return with_bias(macs, inputs[2], outputs) + adds

    def dac_dense(inputs, outputs):
        macs = _numel(outputs[0]) * get_shape(inputs[1])[1]
        return with_bias(macs, inputs[2], outputs) + macs  # + one bias addition per weight

    def elementwise_out(inputs, outputs):
        return _numel(outputs[0])

    return {
        "aten::_convolution": conv, "aten::linear": linear, "aten::addmm": addmm,
        "aten::mm": matmul, "aten::matmul": matmul, "aten::bmm": matmul,
        "aten::batch_norm": batchnorm_flop_jit,
        "biasbench_count::dac_conv2d": dac_conv, "biasbench_count::dac_linear": dac_dense,
        "biasbench_count::multi_bias": elementwise_out, "biasbench_count::shared_bias_preact": elementwise_out,
    }


def complexity(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """Parameters by role, MACs and FLOPs for one sample of shape `input_shape` (no batch axis).

    `flops_by_operator` splits the FLOPs; `skipped_ops` lists every operator the count did not
    cover, with how many times it occurred (residual `aten::add` is expected there)."""
    input_shape = tuple(int(s) for s in input_shape)
    param = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    tally: Counter = Counter()
    was_training = {m: m.training for m in model.modules()}
    model.eval()  # inference-time convention (BN folded to scale and shift)
    threads = torch.get_num_threads()
    # One sample through small convs: one thread is fastest, and far faster on a busy machine.
    torch.set_num_threads(1)
    try:
        with _layers_as_operators(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit tracing deprecation and tracer notices
            analysis = FlopCountAnalysis(model, x).set_op_handle(**_handles(tally))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            flops = int(analysis.total())
            by_op = {op: int(v) for op, v in sorted(analysis.by_operator().items()) if v}
            skipped = dict(sorted(analysis.unsupported_ops().items()))
    finally:
        torch.set_num_threads(threads)
        for m, training in was_training.items():
            m.training = training
    return {
        "convention": CONVENTION,
        "input_shape": list(input_shape),
        "params": count_by_role(model),
        "macs": int(tally["macs"]),
        "flops": flops,
        "flops_by_operator": by_op,
        "skipped_ops": skipped,
    }


def ratios(counts: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """params / FLOPs / MACs of `counts` relative to `reference` (e.g. the baseline variant)."""
    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {"params": ratio(counts["params"]["total"], reference["params"]["total"]),
            "macs": ratio(counts["macs"], reference["macs"]),
            "flops": ratio(counts["flops"], reference["flops"])}


# -- the input a recipe's model sees, without reading its data ------------------------------------
# (channels, classes) of the data sets whose files may be absent; image side from options.
_IMAGE_SETS = {"cifar10": (3, 10, 32), "cifar100": (3, 100, 32), "svhn": (3, 10, 32), "mnist": (1, 10, 28),
               "fashion_mnist": (1, 10, 28), "kmnist": (1, 10, 28),
               "imagenette": (3, 10, 80), "imagewoof": (3, 10, 80), "isic2019": (3, 8, 80), "digits": (1, 10, 8)}
_SGEMM_FEATURES = 14


def data_shape(data_cfg: Any) -> tuple[tuple[int, ...], int]:
    """(input shape without batch axis, number of outputs) for a recipe's `data` section."""
    name = data_cfg.name
    if name in _IMAGE_SETS:
        channels, classes, side = _IMAGE_SETS[name]
        side = int(data_cfg.options.get("image_size", side))
        return (channels, side, side), classes
    if name == "sgemm":
        return (_SGEMM_FEATURES,), 1
    if name == "synthetic" and data_cfg.options.get("task") == "regression":
        return (int(data_cfg.options.get("features", 16)),), 1
    from biasbench.data import build_data  # bundled sets: small enough to build

    bundle = build_data(data_cfg)
    return tuple(bundle.input_shape), bundle.num_outputs
