"""The per-unit parameter formulas' shared pieces: the baseline's count of each unit a model asks
for, and the rule of a variant that moves activation shifts downstream (drops the biases that feed
them). `tests/test_model_matrix.py` holds the built-in variants' formulas; a new variant's own test
file, `tests/test_variant_NAME.py`, defines its `FORMULA` (and `MECHANISM_PARAMETERS`) from these,
and the matrix test reads them from there.
"""

from __future__ import annotations


def unit_arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def conv_weights(args, kwargs) -> tuple[int, int, int, int]:
    c_in, c_out, k = args[:3]
    return c_in, c_out, k, kwargs.get("groups", 1)


def act_params(activation: str, c: int) -> int:
    return c * c + c if activation == "gdn" else 0  # GDN: gamma (C x C) and beta (C)


def baseline_unit(v, unit, args, kwargs) -> int:
    a = v.activation
    if unit in ("act", "backbone_act"):
        return act_params(a, args[0])
    if unit == "norm":
        return 2 * args[0]
    if unit in ("conv2d", "act_conv2d"):
        c_in, c_out, k, g = conv_weights(args, kwargs)
        bias = unit_arg(args, kwargs, 5, "bias", False)
        return (act_params(a, c_in) if unit == "act_conv2d" else 0) + c_in // g * c_out * k * k + bias * c_out
    if unit in ("linear", "act_linear"):
        c_in, c_out = args[:2]
        bias = unit_arg(args, kwargs, 2, "bias", True)
        return (act_params(a, c_in) if unit == "act_linear" else 0) + c_in * c_out + bias * c_out
    c_in, c_out = args[:2]  # act_pool_linear
    return act_params(a, c_in) + c_in * c_out + c_out


def dropped_shift(unit, args, kwargs) -> int:
    """Section 1: a linear operator's bias that feeds a moved activation (the model says
    `feeds_activation=True`) is dropped: its c_out parameters."""
    if unit in ("conv2d", "act_conv2d"):
        bias = unit_arg(args, kwargs, 5, "bias", False)
    elif unit in ("linear", "act_linear"):
        bias = unit_arg(args, kwargs, 2, "bias", True)
    else:
        return 0
    return args[1] if bias and kwargs.get("feeds_activation", False) else 0


def moves_shifts(formula):
    """A formula of a variant that moves activations downstream: less the dropped biases."""
    def counted(v, unit, args, kwargs) -> int:
        return formula(v, unit, args, kwargs) - dropped_shift(unit, args, kwargs)
    return counted
