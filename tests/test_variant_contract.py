"""What every registered variant promises models (models/variants.py): `norm`'s contract, the
shift rule by `feeds_activation`, and the pre-activation base that `dac` and `preact` share.
Variants come from the registry, never from a list here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasbench.data.graph import GraphBatch
from biasbench.models import build_model, list_models, list_variants, model_spec
from biasbench.models.preactivation import PreActivationVariant
from biasbench.models.variants import VARIANTS, Variant
from biasbench.params import parameter_roles

VARIANT_NAMES = list_variants()
BN_OPTIONS = {"eps": 1e-3, "momentum": 0.2, "affine": True, "track_running_stats": True, "dtype": torch.float64}


def _roles(module: nn.Module) -> list[str]:
    return list(parameter_roles(module).values())


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("dims, shape", [(2, (2, 5, 3, 3)), (1, (4, 5))])
@pytest.mark.parametrize("feeds_activation", [True, False])
def test_norm_keeps_the_shape_takes_batchnorms_options_and_drops_the_shift_it_must(name, dims, shape,
                                                                                   feeds_activation):
    v = VARIANTS.get(name)()
    norm = v.norm(5, dims=dims, feeds_activation=feeds_activation, **BN_OPTIONS)
    x = torch.randn(*shape, dtype=torch.float64)
    norm.train()
    assert norm(x).shape == x.shape
    norm.eval()
    assert norm(x).shape == x.shape
    if feeds_activation and v.removes_activation_shift:
        assert "bias" not in _roles(norm)  # the next operator's biases take the shift over
    else:
        assert "bias" in _roles(norm)  # a norm whose shift nothing takes over keeps it


class OpaqueNorm(nn.Module):
    """Only what the contract promises: a shape-preserving module (no num_features, no weight)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _example(model: str) -> object:
    spec = model_spec(model)
    x = 0.49 * torch.rand(4, *spec.tiny_input, generator=torch.Generator().manual_seed(0))
    if spec.inputs != "graphs":
        return x
    ring = torch.arange(4)  # a graph model reads a graph: a 4-node ring
    return GraphBatch(x, torch.stack([ring, (ring + 1) % 4]), ring)


@pytest.mark.parametrize("model", list_models())
def test_models_rely_on_nothing_but_norms_contract(model):
    class Opaque(Variant):
        def norm(self, num_features, dims=2, feeds_activation=True, **kwargs):
            return OpaqueNorm(super().norm(num_features, dims, feeds_activation, **kwargs))

    spec = model_spec(model)
    net = build_model(model, Opaque(), num_classes=3, in_channels=spec.tiny_input[0], input_shape=spec.tiny_input,
                      **spec.tiny_options)
    net.eval()
    with torch.no_grad():
        out = net(_example(model))
    assert out.shape[-1] == 3


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("unit", ["linear", "act_linear"])
def test_a_linear_operator_feeding_an_activation_loses_its_bias_exactly_when_the_variant_moves_it(name, unit):
    v = VARIANTS.get(name)()
    kept = v.keeps_bias(True, feeds_activation=True)
    assert kept is (not v.removes_activation_shift)
    assert v.keeps_bias(True, feeds_activation=False) and not v.keeps_bias(False, feeds_activation=True)
    bound = v.bind(model_spec("mlp"))
    fed = getattr(bound, unit)(6, 4, True, feeds_activation=True)
    plain = getattr(bound, unit)(6, 4, True)
    n_fed, n_plain = (sum(p.numel() for p in m.parameters()) for m in (fed, plain))
    assert n_plain - n_fed == (0 if kept else 4)


def test_dac_and_preact_share_the_pre_activation_base_and_no_other_variant_claims_its_rule():
    on_base = {n for n in VARIANT_NAMES if issubclass(VARIANTS.get(n), PreActivationVariant)}
    assert {"dac", "preact"} <= on_base
    # every variant that moves activations' shifts does it through the shared base
    assert on_base == {n for n in VARIANT_NAMES if VARIANTS.get(n).removes_activation_shift}
