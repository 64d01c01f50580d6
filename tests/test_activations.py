"""The activation registry (every activation the papers compare) and GDN against its formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasbench.count import complexity
from biasbench.errors import UserError
from biasbench.layers.activations import ACTIVATIONS, ELEMENTWISE, activation, make_activation
from biasbench.layers.gdn import GDN
from biasbench.models import build_model
from biasbench.params import parameter_roles


def test_the_table_holds_the_papers_activations():
    # DNRT Tables 1-2: Softplus, ELU, SELU, SiLU, ReLU, GELU, GDN; plus ReLU6 and LeakyReLU
    assert set(ACTIVATIONS) == {"relu", "gelu", "silu", "elu", "selu", "softplus", "relu6", "leaky_relu", "gdn"}
    assert set(ELEMENTWISE) == set(ACTIVATIONS) - {"gdn"}


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_module_and_elementwise_forms_agree(name):
    x = torch.linspace(-8, 8, 301).reshape(1, 301, 1, 1)
    entry = ACTIVATIONS[name]
    torch.testing.assert_close(make_activation(name, 301, dims=2)(x), entry.elementwise(x))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_an_activation_is_found_by_name_by_its_module_class_and_by_its_module(name):
    entry = ACTIVATIONS[name]
    module = make_activation(name, 5, dims=2)
    assert isinstance(module, entry.module_type)
    assert activation(name) is activation(type(module)) is activation(module) is entry


def test_a_module_with_other_settings_is_refused_not_read_as_the_registered_one():
    assert activation(nn.ReLU(inplace=True)).name == "relu"  # in place or not: the same values
    for other in (nn.LeakyReLU(0.2), nn.GELU(approximate="tanh"), nn.ELU(alpha=0.5), nn.Softplus(beta=2.0)):
        with pytest.raises(UserError) as e:
            activation(other)
        assert "\n" not in str(e.value) and type(other).__name__ in str(e.value)


def test_a_class_that_is_no_activation_is_one_line_naming_the_known_classes():
    with pytest.raises(UserError) as e:
        activation(nn.Tanh)
    assert "\n" not in str(e.value) and "Tanh" in str(e.value) and "GELU" in str(e.value)


def test_unknown_activation_is_one_line_with_a_suggestion():
    with pytest.raises(UserError) as e:
        make_activation("selu6", 4)
    assert "\n" not in str(e.value) and "did you mean" in str(e.value)


# -- GDN -----------------------------------------------------------------------------------------
def gdn_loop(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2) at every position, written plainly."""
    n, c, h, w = x.shape
    y = torch.empty_like(x)
    for b in range(n):
        for r in range(h):
            for s in range(w):
                for i in range(c):
                    norm = beta[i] + sum(gamma[i, j] * x[b, j, r, s] ** 2 for j in range(c))
                    y[b, i, r, s] = x[b, i, r, s] / torch.sqrt(norm)
    return y


def _randomised(gdn: GDN, seed: int = 0) -> GDN:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # well inside the positive region: the lower bound is the identity there
        gdn.beta_stored.copy_(torch.rand(gdn.beta_stored.shape, generator=g, dtype=gdn.beta_stored.dtype) + 0.5)
        gdn.gamma_stored.copy_(torch.rand(gdn.gamma_stored.shape, generator=g, dtype=gdn.gamma_stored.dtype) * 0.6
                               + 0.1)
    return gdn


def test_gdn_equals_its_formula_on_maps_and_vectors():
    gdn = _randomised(GDN(3, dtype=torch.float64))
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(gdn(x), gdn_loop(x, gdn.beta, gdn.gamma))
    vectors = _randomised(GDN(3, feature_dim=-1, dtype=torch.float64))
    tokens = torch.randn(2, 4, 3, dtype=torch.float64)  # (B, T, d): normalised over the last dimension
    maps = tokens.permute(0, 2, 1).unsqueeze(-1)  # the same numbers as (B, d, T, 1)
    torch.testing.assert_close(vectors(tokens), gdn_loop(maps, vectors.beta, vectors.gamma).squeeze(-1)
                               .permute(0, 2, 1))


def test_gdn_starts_as_balle_initialises_it():
    gdn = GDN(4)
    torch.testing.assert_close(gdn.beta, torch.ones(4))
    torch.testing.assert_close(gdn.gamma, 0.1 * torch.eye(4), atol=1e-7, rtol=0)
    x = torch.randn(3, 4)
    torch.testing.assert_close(GDN(4, feature_dim=-1)(x), x / torch.sqrt(1 + 0.1 * x * x), atol=1e-6, rtol=1e-6)


def test_gdn_gradients_match_finite_differences():
    gdn = _randomised(GDN(3, dtype=torch.float64), seed=1)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x, beta_stored, gamma_stored):
        return torch.func.functional_call(gdn, {"beta_stored": beta_stored, "gamma_stored": gamma_stored}, (x,))

    params = (gdn.beta_stored.detach().clone().requires_grad_(), gdn.gamma_stored.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(f, (x, *params))


def test_gdn_parameters_stay_positive_under_any_gradient():
    gdn = GDN(3)
    opt = torch.optim.SGD(gdn.parameters(), lr=0.5)
    for _ in range(50):  # push beta and gamma down as hard as possible
        opt.zero_grad()
        (gdn.beta.sum() + gdn.gamma.sum()).backward()
        opt.step()
    assert gdn.beta.min().item() >= 1e-6 * (1 - 1e-3)
    assert gdn.gamma.min().item() >= -1e-12
    at_bound = gdn.gamma_stored.detach() <= 2.0**-18
    assert at_bound.any()
    gdn.zero_grad()
    (-gdn.gamma.sum()).backward()  # a gradient that would raise a parameter at its bound passes
    assert (gdn.gamma_stored.grad < 0).all()
    gdn.zero_grad()
    gdn.gamma.sum().backward()  # one that would push it further down does not
    assert (gdn.gamma_stored.grad[at_bound] == 0).all()


def test_gdn_as_every_models_activation_is_counted_and_its_parameters_have_roles():
    net = build_model("cnn", in_channels=1, input_shape=(1, 8, 8), width=4, variant_options={"activation": "gdn"})
    gdns = [m for m in net.modules() if isinstance(m, GDN)]
    assert len(gdns) == 5 and not any(isinstance(m, nn.ReLU) for m in net.modules())
    roles = parameter_roles(net)
    assert {r for n, r in roles.items() if n.endswith("gamma_stored")} == {"weight"}
    assert {r for n, r in roles.items() if n.endswith("beta_stored")} == {"bias"}
    relu = build_model("cnn", in_channels=1, input_shape=(1, 8, 8), width=4)
    c_gdn, c_relu = complexity(net, (1, 8, 8)), complexity(relu, (1, 8, 8))
    # each GDN normalises by a 1x1 conv of x^2 over its channels: C*C multiply-adds per position
    positions = [(4, 64), (4, 64), (8, 16), (8, 16), (16, 4)]  # (channels, positions) each unit reads
    assert c_gdn["macs"] - c_relu["macs"] == sum(c * c * p for c, p in positions)
