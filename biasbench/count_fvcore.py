"""The `fvcore` counting convention: fvcore's own `FlopCountAnalysis`, not a re-implementation.

fvcore traces the model with torch.jit on a real input (one sample of zeros, inference mode)
and applies its handles per aten operator (fvcore 0.1.5, `_DEFAULT_SUPPORTED_OPS`): one "flop"
per multiply-add for convolution, linear/addmm, mm, matmul, bmm and einsum (attention's
matmuls included; no bias additions); batch norm in inference 2 per element (1 without
affine); layer, group and instance norm 5 per element (4 without affine); adaptive average
pooling 1 per input element; upsampling (nearest 1, bilinear 4 per output element).
Everything else (activations, additions, softmax, max pooling, RAA's shift as its own
operator) is not counted; fvcore lists those as unsupported, and so do we (`skipped_ops`).
Models torch.jit cannot trace are refused in one line.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import nn

from biasbench.errors import UserError


def fvcore_count(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Counter[str], Counter[str]]:
    """(fvcore's count by operator, the operators it did not count) for one sample."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore's import calls torch.jit.script, which torch deprecates
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise UserError("--convention fvcore needs fvcore: pip install fvcore (a dependency of biasbench)") from None
    first = next(model.parameters(), None)
    if first is not None and first.is_meta:
        raise UserError("--convention fvcore counts a real model; this one is on the meta device")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else "cpu"
    x = torch.zeros((1, *input_shape), dtype=dtype, device=device)
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
            by_operator = Counter({op: int(n) for op, n in analysis.by_operator().items()})
            skipped = Counter(dict(analysis.unsupported_ops()))
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same answer: fvcore cannot count it
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"fvcore cannot trace this model ({type(e).__name__}: {first_line}); "
                        "use --convention dac-paper, macs or thop") from None
    return by_operator, skipped
