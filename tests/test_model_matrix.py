"""Every model with every variant, honestly: list_models() x list_variants() (and the activations).

Each accepted pair must contain its mechanism: its layers are present, its parameter count
follows the paper's formula unit by unit (computed here from the units the model asked for,
not from the layers the variant built), and moving the mechanism's parameters off their
initial values changes the output (ARR: its loss term reads the model's responses). Each
refused pair is refused in one line that names both. `biasbench list` says exactly what
`build_model` accepts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest
import torch
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.abn import DynamicModulatedConv2d
from biasbench.layers.activations import ACTIVATIONS
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.layers.mba import MultiBiasActivation
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.layers.raa import RAA, RAA2d
from biasbench.models import applicability, build_model, list_models, list_variants, model_hooks, model_spec
from biasbench.models.multitask import MultiTaskBiases
from biasbench.models.variants import VARIANTS, Variant
from tests.conftest import RECIPES, one_line_error, run_cli
from tests.unit_formulas import baseline_unit, conv_weights, moves_shifts, unit_arg

MODELS, VARIANT_NAMES = list_models(), list_variants()
UNITS = ("conv2d", "linear", "norm", "act", "backbone_act", "act_linear", "act_conv2d", "act_pool_linear")


def recording(cls: type[Variant]) -> type[Variant]:
    """`cls` that records every unit the model asks for (outermost calls only) in `self.calls`."""
    def wrap(unit: str):
        def method(self, *args, **kwargs):
            self.depth[0] += 1
            try:
                out = getattr(super(rec, self), unit)(*args, **kwargs)
            finally:
                self.depth[0] -= 1
            if self.depth[0] == 0:
                self.calls.append((unit, args, kwargs))
            return out
        return method

    rec = type(f"Recording{cls.__name__}", (cls,), {u: wrap(u) for u in UNITS})
    return rec


def make(cls: type[Variant], **options) -> Variant:
    v = recording(cls)(**options)
    v.calls, v.depth = [], [0]
    return v


@moves_shifts
def dac_unit(v, unit, args, kwargs) -> int:  # section 1: one bias per (output, input) pair; BN' loses beta
    if unit == "norm":
        return args[0] * (1 if unit_arg(args, kwargs, 2, "feeds_activation", True) else 2)
    if unit == "backbone_act":
        return 0  # no linear operator behind it: removed
    if unit == "act_conv2d":
        c_in, c_out, k, g = conv_weights(args, kwargs)
        per_tap = 1 if v.bias_sharing == "kernel" else k * k
        return baseline_unit(v, unit, args, kwargs) + c_out * c_in // g * per_tap
    if unit in ("act_linear", "act_pool_linear"):
        return baseline_unit(v, unit, args, kwargs) + args[0] * args[1]
    return baseline_unit(v, unit, args, kwargs)


@moves_shifts
def preact_unit(v, unit, args, kwargs) -> int:  # DAC Table 3: one shared bias per input channel
    if unit in ("norm", "backbone_act"):
        return dac_unit(v, unit, args, kwargs)
    if unit in ("act_conv2d", "act_linear", "act_pool_linear"):
        return baseline_unit(v, unit, args, kwargs) + args[0]
    return baseline_unit(v, unit, args, kwargs)


def mba_unit(v, unit, args, kwargs) -> int:  # section 2: K biases per channel, K-fold weights behind
    if unit == "act_conv2d":
        c_in, c_out, k, g = conv_weights(args, kwargs)
        return baseline_unit(v, unit, args, kwargs) + (v.K - 1) * c_in // g * c_out * k * k + v.K * c_in
    if unit in ("act_linear", "act_pool_linear"):
        return baseline_unit(v, unit, args, kwargs) + (v.K - 1) * args[0] * args[1] + v.K * args[0]
    return baseline_unit(v, unit, args, kwargs)


def dmb_unit(v, unit, args, kwargs) -> int:  # section 3: conv bias + DMBL(in, out, K) on block_conv2
    if unit == "act_conv2d" and kwargs.get("role") == "block_conv2":
        c_in, c_out, k, g = conv_weights(args, kwargs)
        bias = unit_arg(args, kwargs, 5, "bias", False)
        return baseline_unit(v, unit, args, kwargs) + (not bias) * c_out + c_in * c_out + v.K * c_out + c_in * v.K \
            + v.K
    return baseline_unit(v, unit, args, kwargs)


def raa_unit(v, unit, args, kwargs) -> int:  # section 4: RAA adds w (C) and b (1) wherever an activation is
    if unit in ("act", "backbone_act", "act_conv2d", "act_linear", "act_pool_linear"):
        return baseline_unit(v, unit, args, kwargs) + args[0] + 1
    return baseline_unit(v, unit, args, kwargs)


FORMULA = {"baseline": baseline_unit, "dac": dac_unit, "preact": preact_unit, "mba": mba_unit, "dmb": dmb_unit,
           "raa": raa_unit, "arr": baseline_unit, "dnrt": raa_unit}


def _own_test(name: str):
    """A variant's own test file, `tests/test_variant_NAME.py`, where a variant added as one file
    declares its `FORMULA` (and `MECHANISM_PARAMETERS`) so that this test needs no edit; None when absent."""
    module = f"tests.test_variant_{name}"
    return importlib.import_module(module) if importlib.util.find_spec(module) else None


OWN_TESTS = {n: own for n in VARIANT_NAMES if n not in FORMULA and (own := _own_test(n)) is not None}
FORMULA |= {n: own.FORMULA for n, own in OWN_TESTS.items() if hasattr(own, "FORMULA")}


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build(model: str, v: Variant, **extra):
    spec = model_spec(model)
    return build_model(model, v, num_classes=3, in_channels=spec.tiny_input[0], input_shape=spec.tiny_input,
                       **{**spec.tiny_options, **extra})


def example(model: str):
    # in [0, 0.49): multitask reads the last column as a task id (0 after rounding)
    x = 0.49 * torch.rand(4, *model_spec(model).tiny_input, generator=torch.Generator().manual_seed(0))
    if model_spec(model).inputs != "graphs":
        return x
    from biasbench.data.graph import GraphBatch  # a graph model: a 4-node ring, logits of every node

    ring = torch.arange(4)
    return GraphBatch(x, torch.stack([ring, (ring + 1) % 4]), ring)


# The parameters that *are* each mechanism (not the weights of the layer it sits in).
MECHANISM_PARAMETERS = {DACConv2d: ("unshared_bias",), DACLinear: ("unshared_bias",),
                        SharedBiasPreActivation: ("bias",), MultiBiasActivation: ("bias",),
                        DynamicModulatedConv2d: ("modulator.bank",), RAA: ("weight", "bias"),
                        RAA2d: ("weight", "bias")}
for _own in OWN_TESTS.values():
    MECHANISM_PARAMETERS |= getattr(_own, "MECHANISM_PARAMETERS", {})


def mechanism_parameters(net: nn.Module) -> list[nn.Parameter]:
    found = []
    for path, m in net.named_modules():
        for name in MECHANISM_PARAMETERS.get(type(m), ()):
            found.append(_parameter(net, f"{path}.{name}" if path else name))
    return found


def _parameter(net: nn.Module, qualified: str) -> nn.Parameter:
    if isinstance(net, MultiTaskBiases) and qualified.startswith("base."):
        banked = dict(net._slots)  # the base's biases live in per-task banks
        key = banked.get(qualified.removeprefix("base."))
        if key is not None:
            return net.banks[key]
    return net.get_parameter(qualified)


def expected_params(model: str, name: str, v: Variant, bound: Variant) -> int:
    """The parameter count the papers' formulas give: the model's skeleton (what no unit builds,
    from the baseline twin with the same widths) plus each unit's count under the variant."""
    twin = make(type("Twin", (Variant,), {"dense_width_factor": bound.dense_width_factor}),
                activation=bound.activation)
    skeleton = n_params(build(model, twin)) - sum(baseline_unit(twin, *c) for c in twin.calls)
    return skeleton + sum(FORMULA[name](bound, *c) for c in v.calls)


def test_every_variant_declares_a_formula_here():
    assert set(VARIANT_NAMES) == set(FORMULA), ("a new variant needs its per-unit parameter formula: `FORMULA` in "
                                                "tests/test_variant_NAME.py (tests/unit_formulas.py)")


@pytest.mark.parametrize("model", MODELS)
def test_every_pair_is_built_faithfully_or_refused_in_one_line(model):
    cells = applicability(model)
    assert set(cells) == set(VARIANT_NAMES)
    torch.manual_seed(0)
    for name in VARIANT_NAMES:
        cls = VARIANTS.get(name)
        v = make(cls)
        if cells[name] != "yes":
            with pytest.raises(UserError) as refused:
                build(model, v)
            message = str(refused.value)
            assert "\n" not in message and f"`{name}`" in message and f"`{model}`" in message, message
            continue
        net = build(model, v).eval()
        bound = model_hooks(net).variant  # the variant as built: activation resolved
        # 1. its layers are present
        assert not cls.mechanism or any(isinstance(m, cls.mechanism) for m in net.modules()), (model, name)
        # 2. its parameter count follows the formula, unit by unit, against the baseline's skeleton
        assert n_params(net) == expected_params(model, name, v, bound), (model, name)
        # 3. the mechanism is wired in: moving its parameters moves the output
        x = example(model)
        if name == "baseline":
            continue  # no mechanism to move
        if name == "arr":
            (term,) = model_hooks(net).loss_terms.values()
            net.train()
            y = torch.arange(4) % 2
            for _ in range(2):  # the first batch sets the class means, the second is pulled to them
                loss = term(net(x), y)
            assert loss.item() > 0 and loss.requires_grad
            continue
        params = mechanism_parameters(net)
        assert params, (model, name)
        net.train()  # batch statistics keep the signal alive through deep plain nets at init
        with torch.no_grad():
            before = net(x)
            for p in params:
                p.add_(torch.randn_like(p) * 0.5)
            assert not torch.allclose(before, net(x), atol=1e-4), (model, name)


@pytest.mark.parametrize("model", [m for m in MODELS if model_spec(m).activation is not None])
def test_every_activation_reaches_the_baseline_of_every_model(model):
    for activation, entry in ACTIVATIONS.items():
        net = build(model, make(Variant, activation=activation))
        kind = type(entry.module(4, 1))
        assert any(type(m) is kind for m in net.modules()), (model, activation)
        default = model_spec(model).activation
        if activation != default:  # nothing of the model's default is left behind
            default_kind = type(ACTIVATIONS[default].module(4, 1))
            assert not any(type(m) is default_kind for m in net.modules()), (model, activation)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_variants_take_the_activations_their_formula_allows_and_refuse_the_others(model):
    for name in VARIANT_NAMES:
        cls = VARIANTS.get(name)
        if applicability(model)[name] == "-":
            continue
        for activation in ACTIVATIONS:
            allowed = cls.activations is None or activation in cls.activations
            if not allowed:
                with pytest.raises(UserError) as refused:
                    build(model, make(cls, activation=activation))
                assert "\n" not in str(refused.value) and activation in str(refused.value)
                continue
            v = make(cls, activation=activation)
            net = build(model, v)
            bound = model_hooks(net).variant
            assert bound.activation == activation
            assert n_params(net) == expected_params(model, name, v, bound), (name, activation)


def test_a_model_with_a_fixed_nonlinearity_refuses_an_activation():
    with pytest.raises(UserError, match="`bias_rnn` has a fixed nonlinearity"):
        build("bias_rnn", make(Variant, activation="gelu"))


def test_an_unknown_activation_and_an_unknown_option_are_one_line_errors():
    with pytest.raises(UserError) as e:
        build_model("cnn", "dac", variant_options={"activation": "swish"})
    assert str(e.value).startswith("unknown activation `swish`") and "silu" in str(e.value)
    with pytest.raises(UserError) as e:
        build_model("cnn", "dac", variant_options={"K": 4})
    assert str(e.value) == "variant `dac` takes no option `K`; its options: activation, bias_sharing"


def test_list_agrees_with_build_model(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["list", "models", "--json"])
    assert code == 0, err
    listed = {m["name"]: m["variants"] for m in json.loads(out)["models"]}
    assert set(listed) == set(MODELS)
    for model, cells in listed.items():
        for name, cell in cells.items():
            options = {} if cell in ("yes", "-") else {"activation": cell}
            try:
                build(model, make(VARIANTS.get(name), **options))
                accepted = True
            except UserError:
                accepted = False
            assert accepted == (cell != "-"), (model, name, cell)
            if cell not in ("yes", "-"):  # accepted only with that activation
                with pytest.raises(UserError):
                    build(model, make(VARIANTS.get(name)))
    code, out, err = run_cli(["list", "models"])
    table = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in MODELS]
    header = next(line.split() for line in out.splitlines() if line.startswith("model "))
    short = {"base": "baseline", "pre": "preact"}
    for row in table:
        assert len(row) == len(header)
        for column, cell in zip(header[2:], row[2:], strict=True):
            assert cell == listed[row[0]][short.get(column, column)]
    assert all(len(line) <= 80 for line in out.splitlines())


@pytest.mark.parametrize("overrides,words", [
    (["model.variant=dmb"], ["variant `dmb` modulates the second conv of residual blocks", "model `cnn` has none"]),
    (["model.variant=arr", "model.name=mlp"], ["variant `arr`", "model `mlp` has none"]),
    (["model.variant_options.activation=swish"], ["unknown activation `swish`"]),
])
def test_training_a_pair_that_does_not_apply_is_refused_before_anything_is_written(tmp_path, overrides, words):
    """The issue's first finding: the quick start with model.variant=dmb trained the baseline.
    Refused before any line about the run is printed, and by --dry-run too."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    for dry in ([], ["--dry-run"]):
        code, out, err = run_cli(["train", str(RECIPES / "quickstart.yaml"), "--smoke", *sets,
                                  "--out", str(tmp_path / "runs"), *dry])
        one_line_error(code, err, *words)
        assert out == ""  # no "runs go to ..." for a run that cannot exist
    assert not (tmp_path / "runs").exists()
