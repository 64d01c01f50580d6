"""What a layer declares (layers/contract.py, params.py) is what generic code reads.

Every biasbench layer class is found by walking the `biasbench.layers` package, never listed
here: each must declare the role of every parameter it owns. A layer defined below, outside
biasbench, shows that a new layer's cost, thop row, warm-up kernel and copy rule reach `count`,
the trainer and `convert` without an edit anywhere else.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch
from torch import nn

import biasbench.layers
from biasbench.count import complexity
from biasbench.errors import UserError
from biasbench.layers.contract import LayerCost, counted_operator, kernels_to_warm
from biasbench.layers.dac import DACLinear
from biasbench.models import applicability, build_model, convert, list_models, model_spec
from biasbench.models.variants import Variant
from biasbench.params import count_by_role, parameter_roles

ROOT = Path(__file__).resolve().parents[1]


def layer_classes() -> list[type[nn.Module]]:
    """Every nn.Module subclass defined in a module of the biasbench.layers package."""
    found = {}
    for info in pkgutil.iter_modules(biasbench.layers.__path__, "biasbench.layers."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nn.Module) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def _value(p: inspect.Parameter):
    """A small argument for a required constructor parameter, chosen from its annotation."""
    note = str(p.annotation)
    if "Sequence" in note or "list" in note:
        return [4]
    if note.startswith("int"):
        return 4
    if "None" in note:
        return None
    raise AssertionError(f"no example value for parameter `{p.name}: {note}`")


def instance(cls: type[nn.Module]) -> nn.Module:
    params = inspect.signature(cls.__init__).parameters.values()
    args = {p.name: _value(p) for p in params if p.name != "self" and p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return cls(**args)


LAYERS = [c for c in layer_classes() if not c.__name__.startswith("_")]


def test_the_walk_finds_the_layers_of_every_mechanism():
    names = {c.__name__ for c in LAYERS}
    # one per mechanism module at least: the walk is not vacuous
    modules = {c.__module__ for c in LAYERS}
    assert len(modules) >= 8 and len(names) >= 10, sorted(names)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_every_layer_declares_the_role_of_every_parameter_it_owns(cls):
    layer = instance(cls)
    assert "param_roles" in dir(cls), f"{cls.__name__} declares no param_roles"
    own = {name for name, _ in layer.named_parameters(recurse=False)}
    missing = own - set(cls.param_roles)
    assert not missing, f"{cls.__name__} does not declare {sorted(missing)}"
    assert set(cls.param_roles.values()) <= {"weight", "bias", "other"}


@pytest.mark.parametrize("model", list_models())
def test_every_biasbench_module_in_a_model_declares_its_parameters(model):
    # under every variant that applies: a variant's own layers may live in its file in
    # biasbench/models/, outside the walk above (a `bias_scale` left undeclared would be guessed a bias)
    spec = model_spec(model)
    for variant, cell in applicability(model).items():
        if cell == "-":
            continue
        net = build_model(model, variant, num_classes=3, in_channels=spec.tiny_input[0], input_shape=spec.tiny_input,
                          variant_options=None if cell == "yes" else {"activation": cell}, **spec.tiny_options)
        for path, m in net.named_modules():
            own = [name for name, _ in m.named_parameters(recurse=False)]
            if own and type(m).__module__.startswith("biasbench."):
                assert set(own) <= set(getattr(m, "param_roles", {})), f"{variant}: {path}: {type(m).__name__} {own}"


class ScaledBiasDAC(DACLinear):
    """A new layer: a learned scale on each bias (the issue's new variant), roles not extended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_scale = nn.Parameter(torch.ones(self.out_features))


def test_a_parameter_a_declaring_layer_leaves_out_is_refused_never_guessed_from_its_name():
    with pytest.raises(ValueError, match="bias_scale"):
        parameter_roles(ScaledBiasDAC(3, 2))

    class Declared(ScaledBiasDAC):
        param_roles = {**DACLinear.param_roles, "bias_scale": "other"}

    roles = parameter_roles(Declared(3, 2))
    assert roles["bias_scale"] == "other" and roles["unshared_bias"] == "bias"
    assert count_by_role(Declared(3, 2))["other"] == 2


def test_modules_that_declare_nothing_have_their_roles_read_from_names():
    class Foreign(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(2, 2))
            self.bias_scale = nn.Parameter(torch.zeros(2))
            self.gate = nn.Parameter(torch.zeros(2))

    assert parameter_roles(Foreign()) == {"weight": "weight", "bias_scale": "bias", "gate": "other"}


# -- cost: a layer defined here is counted by its own rule, with no edit to count.py --------------
PER_ELEMENT = 7


def _toy_cost(args, out):
    return PER_ELEMENT * out.numel(), out.numel()


def _toy_thop(m, x, y):
    return 3 * x.numel()


class ToyShift(nn.Module):
    param_roles = {"shift": "bias"}
    cost = LayerCost(counted_operator("test_toy_shift(Tensor x, float scale) -> Tensor",
                                      lambda x, scale: x.clone(), lambda m, x: (x, 2.0), {"dac-paper": _toy_cost}),
                     thop=_toy_thop)

    def __init__(self, n: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(n))

    def forward(self, x):  # internals the count must never see: a matmul
        return x @ torch.eye(x.shape[-1]) + self.shift

    @classmethod
    def warm_up_kernel(cls, device: torch.device) -> str | None:
        return "TOY" if device.type == "cuda" else None


def test_a_declared_operator_is_counted_by_its_rule_under_every_operator_convention():
    model = nn.Sequential(nn.Linear(5, 4), ToyShift(4))
    dense = 2 * 5 * 4 + 4
    paper = complexity(model, (5,))
    assert paper["ops_by_operator"]["biasbench_count::test_toy_shift"] == PER_ELEMENT * 4
    assert paper["flops"] == dense + PER_ELEMENT * 4 and paper["macs"] == 5 * 4 + 4
    assert "aten::mm" not in paper["ops_by_operator"]  # its internals did not reach the count
    # no dac-formula rule declared: dac-paper's applies; macs: the rule's multiply-adds
    assert complexity(model, (5,), convention="dac-formula")["ops"] == paper["flops"]
    assert complexity(model, (5,), convention="macs")["ops"] == paper["macs"]
    assert complexity(model, (5,), convention="thop")["ops_by_operator"]["ToyShift"] == 3 * 4


def test_the_count_names_no_layer_class():
    tree = ast.parse((ROOT / "biasbench" / "count.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("biasbench.layers.") and m != "biasbench.layers.contract"}


# -- warm-up --------------------------------------------------------------------------------------
def test_the_kernels_to_warm_are_the_ones_the_models_layers_declare_for_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    dac = build_model("mlp", "dac", num_classes=3, input_shape=(6,), depth=2, width=8)
    raa = build_model("mlp", "raa", num_classes=3, input_shape=(6,), depth=2, width=8)
    assert kernels_to_warm(dac, cpu) == kernels_to_warm(dac, cuda) == ["DAC"]
    assert kernels_to_warm(raa, cpu) == ["RAA"] and kernels_to_warm(raa, cuda) == []  # no CUDA kernel
    toy = nn.Sequential(ToyShift(3), raa)
    assert kernels_to_warm(toy, cuda) == ["TOY"] and kernels_to_warm(toy, cpu) == ["RAA"]
    assert kernels_to_warm(build_model("mlp", "baseline", input_shape=(6,)), cpu) == []


def test_the_trainer_imports_no_layer_class():
    tree = ast.parse((ROOT / "biasbench" / "trainer.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("biasbench.layers.") and m != "biasbench.layers.contract"}


# -- conversion -----------------------------------------------------------------------------------
def _two_convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, bias=True))


def test_convert_copies_the_original_weight_and_bias_into_the_units_layer():
    original = _two_convs()
    dac = convert(original, "dac", input_shape=(3, 8, 8))
    unit = dac.get_submodule("2")
    assert torch.equal(unit.weight, original[2].weight) and torch.equal(unit.bias, original[2].bias)


class BiasIgnoringVariant(Variant):
    """A variant whose conv unit drops the bias it is asked for."""

    name = "bias_ignoring"
    requires = frozenset({"act_linear"})

    def act_conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, *, groups=1,
                   role=None, stage=None, feeds_activation=False, **kwargs):
        return nn.Sequential(self.act(in_channels), nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                                              padding=padding, groups=groups, bias=False, **kwargs))


def test_convert_refuses_to_drop_an_original_bias_the_unit_has_no_room_for():
    with pytest.raises(UserError, match="no bias to take"):
        convert(_two_convs(), BiasIgnoringVariant(), input_shape=(3, 8, 8))


def test_a_grouped_dac_conv_takes_the_original_by_its_own_copy_rule_group_by_group():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True))
    grouped = convert(original, "dac", input_shape=(3, 6, 6)).get_submodule("2")
    for conv, w, b in zip(grouped.convs, original[2].weight.chunk(2), original[2].bias.chunk(2), strict=True):
        assert torch.equal(conv.weight, w) and torch.equal(conv.bias, b)
