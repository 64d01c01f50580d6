"""MBA and shared-bias pre-activation against their formulas."""

from __future__ import annotations

import pytest
import torch

from biasbench.layers import MultiBiasActivation, SharedBiasPreActivation
from biasbench.params import parameter_roles


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 5, 3)])
@pytest.mark.parametrize("pre_relu", [False, True])
def test_mba_formula_and_channel_order(shape, pre_relu):
    mba = MultiBiasActivation(4, 3, pre_relu=pre_relu, dtype=torch.float64)
    with torch.no_grad():
        mba.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    y = mba(x)
    assert y.shape == (shape[0], 12, *shape[2:])
    for k in range(3):
        for c in range(4):
            xc = torch.relu(x[:, c]) if pre_relu else x[:, c]
            torch.testing.assert_close(y[:, k * 4 + c], torch.relu(xc + mba.bias[k, c]))


def test_mba_pre_relu_changes_negative_inputs():
    mba = MultiBiasActivation(1, 1, init=[1.0])
    x = torch.tensor([[-0.5]])
    assert mba(x).item() == pytest.approx(0.5)
    assert MultiBiasActivation(1, 1, init=[1.0], pre_relu=True)(x).item() == pytest.approx(1.0)


def test_mba_init_and_reset():
    mba = MultiBiasActivation(3, 4, init=[1, 0.5, -0.5, -1])
    want = torch.tensor([1, 0.5, -0.5, -1])[:, None].expand(4, 3)
    torch.testing.assert_close(mba.bias.detach(), want)
    with torch.no_grad():
        mba.bias.zero_()
    mba.reset_parameters()
    torch.testing.assert_close(mba.bias.detach(), want)
    assert torch.count_nonzero(MultiBiasActivation(3, 2).bias) == 0
    assert mba.out_channels == 12


def test_mba_rejects_bad_init_and_input():
    with pytest.raises(ValueError, match="K=4"):
        MultiBiasActivation(3, 4, init=[1.0, -1.0])
    with pytest.raises(ValueError, match="zeros"):
        MultiBiasActivation(3, 2, init="ones")
    with pytest.raises(ValueError, match="expected"):
        MultiBiasActivation(3, 2)(torch.randn(2, 4))


def test_mba_gradient_reaches_biases():
    mba = MultiBiasActivation(2, 2, init=[0.5, -0.5])
    x = torch.randn(8, 2, 3, 3)
    mba(x).sum().backward()
    # d/db[k,c] of sum ReLU(x + b) = number of positions where x + b > 0
    want = torch.stack([((x[:, c] + b) > 0).sum() for b in (0.5, -0.5) for c in range(2)])
    torch.testing.assert_close(mba.bias.grad.flatten(), want.float())


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 5)])
def test_preact_formula(shape):
    pre = SharedBiasPreActivation(3, activation="relu", dtype=torch.float64)
    assert torch.count_nonzero(pre.bias) == 0
    with torch.no_grad():
        pre.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    y = pre(x)
    for c in range(3):
        torch.testing.assert_close(y[:, c], torch.relu(x[:, c] + pre.bias[c]))


def test_preact_pluggable_activation_and_reset():
    pre = SharedBiasPreActivation(2, activation="tanh")
    with torch.no_grad():
        pre.bias.fill_(0.3)
    x = torch.randn(4, 2)
    torch.testing.assert_close(pre(x), torch.tanh(x + 0.3))
    pre.reset_parameters()
    assert torch.count_nonzero(pre.bias) == 0


def test_roles_are_bias():
    model = torch.nn.Sequential(MultiBiasActivation(3, 2), SharedBiasPreActivation(3))
    assert parameter_roles(model) == {"0.bias": "bias", "1.bias": "bias"}
