"""Parameters and operations of a model, under the counting convention a paper uses (docs/dac.md).

    from biasbench.count import complexity
    complexity(model, (3, 80, 80))  # -> {"params": {...}, "macs": ..., "flops": ..., "skipped_ops": {...}}
    complexity(model, (3, 224, 224), convention="thop")  # -> {..., "ops": ..., "unit": "MACs"}

`CONVENTIONS` lists them; every result has `ops` (the convention's figure), `unit` and
`ops_by_operator`. `dac-paper` (the default) also keeps `macs`, `flops` (= ops) and
`flops_by_operator`; `macs` counts the multiply-adds of the same operators (conv, dense, every
matmul, attention's included; DAC's multiply-adds, not its bias additions); `thop` is thop's
module table (`biasbench.count_thop`); `fvcore` is fvcore's own FlopCountAnalysis
(`biasbench.count_fvcore`).

The default convention ("dac-paper"), for one input sample in inference mode:
- conv / dense / matmul: 2 FLOPs per multiply-add, plus 1 per output element for a layer bias;
- BatchNorm (and BN'): 2 FLOPs per element, the folded inference-time scale and shift (BN' keeps
  a shift at inference: the running mean); LayerNorm 5 per element (4 without affine);
  global average pooling (any mean over positions) 1 per input element;
- activations, max pooling (comparisons, as fvcore and thop leave them), residual additions and
  reshapes: not counted (the paper ignores activation costs; every operator without a rule is
  listed under `skipped_ops`, ReLU and pure data movement excepted, never silently dropped);
- a biasbench layer that declares an operator cost (`cost = LayerCost(...)`, layers/contract.py)
  is counted by its own rule, next to its code: DAC conv with kernel-shared biases: 2 per
  multiply-add plus the *cached* pre-activation additions, out*in per input position the kernel
  reads (the paper's m*n*s*t; for a strided conv the cache covers every input position a tap
  touches); fully unshared biases cannot be cached: one addition per multiply-add. DAC dense: 3
  per multiply-add (2 + the bias addition); MBA: one addition per output element (K*C per
  position); shared-bias pre-activation: one per element.

How: the forward runs on the *meta* device (shapes only: counting never allocates activations,
whatever the input size) under a `TorchDispatchMode` that sees every aten operator and applies
the rules above. A layer that declares a counted operator is counted as a whole module: while
counting, its forward is swapped for its custom operator (namespace `biasbench_count`) that the
counter sees as one operator with the layer's rule, so its internals (grouped convs, kernels)
never reach the count. This module names no layer class. A model whose forward reads input
*values* (multitask's task ids) cannot run on meta; for inputs up to `REAL_FALLBACK_ELEMENTS` it
is counted on a real zero input instead. fvcore traces with torch.jit, which cannot run on meta tensors: `fvcore` counts
on a real model and input.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from biasbench.count_thop import ThopCounter
from biasbench.data import INPUT_KINDS, zeros_example
from biasbench.errors import UserError
from biasbench.layers.contract import (
    COUNTED_OPERATORS,
    CountedOperator,
    Rule,
    bias_additions,
    layer_cost,
    touched_positions,
)
from biasbench.models.contract import model_hooks
from biasbench.params import count_by_role

__all__ = ["CONVENTION", "CONVENTIONS", "complexity", "count_built", "data_shape", "ratios", "touched_positions"]

CONVENTION = "dac-paper"
# name -> (the unit of its figure, what it counts): `count --convention`, docs/dac.md op by op
CONVENTIONS: dict[str, tuple[str, str]] = {
    "dac-paper": ("FLOPs", "multiply-add = 2, + biases, norms, average pooling; DAC pre-activations cached"),
    "dac-formula": ("FLOPs", "dac-paper with a DAC conv's cached additions at its output positions (m n s t "
                             "read literally: the DAC text's +5.5%)"),
    "macs": ("MACs", "multiply-adds of conv, dense and every matmul (attention's too); nothing else"),
    "thop": ("MACs", "thop's module table: Conv/Linear multiply-adds, norms 2-4 per element; functional "
                     "matmuls not counted; + RAA's shift"),
    "fvcore": ("MACs", "fvcore's FlopCountAnalysis (its own handles: one per multiply-add; norms, pooling)"),
}
REAL_FALLBACK_ELEMENTS = 1 << 20  # input elements per sample a real (not meta) count may allocate


@contextlib.contextmanager
def _layers_as_operators(model: nn.Module) -> Iterator[None]:
    """Every layer that declares a counted operator runs as that operator (its rule, not its insides)."""
    swapped = []
    for module in model.modules():
        cost = layer_cost(module)
        if cost is not None and cost.operator is not None:
            module.forward = cost.operator.stand_in(module)  # instance attribute shadows the class's forward
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


# -- rules: (args, output) -> (FLOPs, multiply-adds) ---------------------------------------------
def _conv(args, out):  # convolution(x, weight, bias, stride, padding, dilation, transposed, out_pad, groups)
    w = args[1]
    macs = out.numel() * math.prod(w.shape[1:])  # w.shape[1] is in / groups
    return 2 * macs + bias_additions(args[2], out), macs


def _addmm(args, out):  # addmm(bias, x, w^T): a dense layer with its bias
    macs = out.numel() * args[1].shape[-1]
    return 2 * macs + out.numel(), macs


def _matmul(args, out):  # mm / bmm: inner dimension of the first operand
    macs = out.numel() * args[0].shape[-1]
    return 2 * macs, macs


def _batch_norm(args, out):  # folded scale and shift at inference; scale only without affine
    return args[0].numel() * (2 if isinstance(args[1], torch.Tensor) else 1), 0


def _layer_norm(args, out):  # native_layer_norm(x, shape, weight, bias, eps): fvcore's estimate
    return args[0].numel() * (5 if isinstance(args[2], torch.Tensor) else 4), 0


def _pool(args, out):  # global average pooling: one addition per input element
    return args[0].numel(), 0


aten = torch.ops.aten
_RULES: dict[Any, Rule] = {
    aten.convolution: _conv, aten.addmm: _addmm, aten.mm: _matmul, aten.bmm: _matmul,
    aten.native_batch_norm: _batch_norm, aten._native_batch_norm_legit_no_training: _batch_norm,
    aten.native_layer_norm: _layer_norm, aten.mean: _pool, aten._adaptive_avg_pool2d: _pool,
}
# No arithmetic (views, copies, allocation, concatenation, padding) or ReLU, as fvcore had it.
_QUIET = {getattr(aten, name) for name in (
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "slice",
    "select", "alias", "clone", "detach", "contiguous", "split", "split_with_sizes", "unbind", "chunk", "cat",
    "stack", "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "new_zeros", "new_empty", "ones",
    "fill_", "zero_", "copy_", "_to_copy", "lift_fresh", "as_strided", "constant_pad_nd", "relu", "relu_",
    "dropout", "flatten")}


class _OperatorCounter(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Counting never runs under torch.compile; torch would otherwise wrap __torch_dispatch__
        # to disable dynamo, which imports it on first use (seconds).
        return False

    def __init__(self, convention: str = CONVENTION,
                 operators: dict[Any, CountedOperator] = COUNTED_OPERATORS) -> None:
        super().__init__()
        # the aten rules, and every operator a layer declared with its rule for this convention
        self.rules = {**_RULES, **{packet: op.rule(convention) for packet, op in operators.items()}}
        self.flops: Counter[str] = Counter()
        self.macs_by_op: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        name = f"{func.namespace}::{packet.__name__}"
        if packet in self.rules:
            flops, macs = self.rules[packet](args, out[0] if isinstance(out, tuple) else out)
            self.flops[name] += flops
            if macs:
                self.macs_by_op[name] += macs
        elif packet not in _QUIET:
            self.skipped[name] += 1
        return out

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op.values())


def _counter(model: nn.Module, convention: str) -> Any:
    if convention == "thop":
        return ThopCounter(model)
    return _OperatorCounter(convention)


def _run(model: nn.Module, x: Any, tensors: dict[str, torch.Tensor] | None, convention: str) -> Any:
    counter = _counter(model, convention)
    layers = _layers_as_operators(model) if convention != "thop" else contextlib.nullcontext()
    with layers, torch.no_grad(), counter:
        if tensors is None:
            model(x)
        else:
            torch.func.functional_call(model, tensors, (x,))
    return counter


class _NeedsValues(Exception):
    """A model built on meta whose forward fails there: it must be rebuilt on real tensors."""


def _example_of(model: nn.Module) -> Callable[[tuple[int, ...], Any, torch.dtype], Any]:
    """How one example of what the model reads is built: its input kind says (a graph model
    reads a one-node graph); a batch of zeros for a module built some other way."""
    hooks = model_hooks(model)
    return INPUT_KINDS.get(hooks.spec.inputs).example if hooks is not None else zeros_example


def _count(model: nn.Module, input_shape: tuple[int, ...], convention: str) -> Any:
    """Run one sample through the model on meta tensors; on real zeros where meta cannot."""
    example = _example_of(model)
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    on_meta = {n: torch.empty_like(t, device="meta") for n, t in
               itertools.chain(model.named_parameters(), model.named_buffers())}
    try:
        return _run(model, example(input_shape, "meta", dtype), on_meta, convention)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        meta_error = e
    if math.prod(input_shape) <= REAL_FALLBACK_ELEMENTS and first is not None and first.is_meta:
        raise _NeedsValues()
    if math.prod(input_shape) > REAL_FALLBACK_ELEMENTS or (first is not None and first.is_meta):
        raise UserError(f"cannot count this model on an input of shape {'x'.join(map(str, input_shape))}: "
                        f"{_first_line(meta_error)}")
    # The forward reads input values (or failed): try once on a real zero input.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small sample: one thread is fastest, and far faster on a busy machine
    try:
        device = first.device if first is not None else "cpu"
        return _run(model, example(input_shape, device, dtype), None, convention)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        raise UserError(f"cannot count this model on an input of shape {'x'.join(map(str, input_shape))}: "
                        f"{_first_line(e)}") from None
    finally:
        torch.set_num_threads(threads)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def complexity(model: nn.Module, input_shape: tuple[int, ...] | list[int], convention: str = CONVENTION
               ) -> dict[str, Any]:
    """Parameters by role and the `convention`'s operation count for one sample of shape
    `input_shape` (no batch axis).

    `ops_by_operator` splits the count; `skipped_ops` lists every operator (module, for thop and
    fvcore) the count did not cover, with how many times it occurred (residual `aten::add` is
    expected there)."""
    if convention not in CONVENTIONS:
        raise UserError(f"unknown counting convention `{convention}`; choose one of {', '.join(CONVENTIONS)}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise UserError(f"input shape {list(input_shape)} has an empty dimension; give positive sizes")
    was_training = {m: m.training for m in model.modules()}
    model.eval()  # inference-time convention (BN folded to scale and shift)
    try:
        if convention == "fvcore":
            from biasbench.count_fvcore import fvcore_count

            ops, skipped = fvcore_count(model, input_shape)
        else:
            counter = _count(model, input_shape, convention)
            ops = counter.macs_by_op if convention == "macs" else counter.ops if convention == "thop" \
                else counter.flops
            skipped = counter.skipped
    finally:
        for m, training in was_training.items():
            m.training = training
    result = {
        "convention": convention,
        "unit": CONVENTIONS[convention][0],
        "input_shape": list(input_shape),
        "params": count_by_role(model),
        "ops": int(sum(ops.values())),
        "ops_by_operator": {k: int(v) for k, v in sorted(ops.items())},
        "skipped_ops": dict(sorted(skipped.items())),
    }
    if convention == "dac-paper":
        result.update(macs=int(counter.macs), flops=result["ops"], flops_by_operator=result["ops_by_operator"])
    return result


def count_built(build: Callable[[], nn.Module], input_shape: tuple[int, ...], convention: str = CONVENTION
                ) -> dict[str, Any]:
    """`complexity` of the model `build()` makes, built on the meta device: nothing is allocated,
    whatever the input size (a ViT's position embedding grows with it). A model whose forward
    reads input values is rebuilt on the CPU for inputs up to REAL_FALLBACK_ELEMENTS; `fvcore`,
    which traces real tensors, always builds it on the CPU."""
    if convention == "fvcore":
        return complexity(build(), input_shape, convention)
    with torch.device("meta"):
        model = build()
    try:
        return complexity(model, input_shape, convention)
    except _NeedsValues:
        return complexity(build(), input_shape, convention)


def ratios(counts: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """params and ops (FLOPs, MACs under dac-paper) of `counts` relative to `reference` (e.g. the
    baseline variant), both counted under the same convention."""
    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    out = {"params": ratio(counts["params"]["total"], reference["params"]["total"]),
           "ops": ratio(counts["ops"], reference["ops"])}
    if "flops" in counts:
        out.update(macs=ratio(counts["macs"], reference["macs"]), flops=ratio(counts["flops"], reference["flops"]))
    return out


def data_shape(data_cfg: Any) -> tuple[tuple[int, ...], int]:
    """(input shape without batch axis, number of outputs) for a recipe's `data` section,
    from the data set's registration; bundled sets whose shape depends on their content are
    built (they are small)."""
    from biasbench.data import build_data, dataset_info

    info = dataset_info(data_cfg.name)
    known = info.shape(dict(data_cfg.options))
    if known is not None:
        return known
    if not info.bundled:
        raise UserError(f"the shape of data set `{data_cfg.name}` comes from its files; count with --model and "
                        "--input-size / --in-channels / --num-classes instead")
    bundle = build_data(data_cfg)
    return tuple(bundle.input_shape), bundle.num_outputs
