"""MBA and shared-bias pre-activation against their formulas; MBA on grouped convs and in the
authors' caffe form (against the caffe layer chain, values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasbench.errors import UserError
from biasbench.layers import MultiBiasActivation, SharedBiasPreActivation
from biasbench.models import build_model
from biasbench.models.variants import build_variant
from biasbench.optim import build_optimizer, build_scheduler
from biasbench.params import parameter_roles
from biasbench.recipe import OptimConfig, ScheduleConfig


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


# -- grouped convs, tokens ------------------------------------------------------------------------
def grouped_reference(x, bias, K, groups, weight, conv_bias):
    """Each group: its own channels' K copies (k-major), then that group's slice of the conv."""
    c, o = x.shape[1], weight.shape[0]
    per, per_out = c // groups, o // groups
    out = []
    for g in range(groups):
        xg = x[:, g * per:(g + 1) * per]
        copies = torch.cat([torch.relu(xg + bias[k, g * per:(g + 1) * per].view(1, -1, 1, 1)) for k in range(K)], 1)
        out.append(F.conv2d(copies, weight[g * per_out:(g + 1) * per_out], conv_bias[g * per_out:(g + 1) * per_out],
                            padding=1))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("channels,out,groups", [(6, 4, 2), (4, 4, 4), (6, 6, 3)])  # (4, 4, 4): depthwise
def test_mba_on_a_grouped_conv_keeps_each_groups_copies_together(channels, out, groups):
    torch.manual_seed(0)
    v = build_variant("mba", K=3)
    v.start_build()
    unit = v.act_conv2d(channels, out, 3, padding=1, bias=True, groups=groups)
    mba, conv = unit
    assert isinstance(mba, MultiBiasActivation) and conv.groups == groups and conv.in_channels == 3 * channels
    with torch.no_grad():
        mba.bias.normal_()
    x = torch.randn(2, channels, 5, 5)
    torch.testing.assert_close(unit(x), grouped_reference(x, mba.bias, 3, groups, conv.weight, conv.bias))


def test_mba_and_preact_on_tokens_act_on_the_last_dimension():
    mba = MultiBiasActivation(4, 2, feature_dim=-1, init=[0.5, -0.5])
    x = torch.randn(2, 3, 4)  # (B, T, d)
    y = mba(x)
    assert y.shape == (2, 3, 8)
    torch.testing.assert_close(y, torch.cat([torch.relu(x + 0.5), torch.relu(x - 0.5)], dim=-1))
    pre = SharedBiasPreActivation(4, feature_dim=-1)
    with torch.no_grad():
        pre.bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))
    torch.testing.assert_close(pre(x), torch.relu(x + pre.bias))


# -- the authors' caffe form (hli2020/caffe, examples/bias_project; spec section 7) ---------------
def caffe_chain(x, biases, weight, conv_bias, padding=1):
    """The prototxt layer by layer: ReLU (in place), K Bias layers (per channel), Concat on
    channels, ReLU, Convolution."""
    x = torch.relu(x)
    copies = []
    for k in range(len(biases)):
        top = torch.empty_like(x)
        for c in range(x.shape[1]):  # BiasLayer, channel_shared: false: top[:, c] = bottom[:, c] + b[c]
            top[:, c] = x[:, c] + biases[k][c]
        copies.append(top)
    return F.conv2d(torch.relu(torch.cat(copies, dim=1)), weight, conv_bias, padding=padding)


def test_caffe_form_equals_the_caffe_layer_chain_in_values_and_gradients():
    torch.manual_seed(1)
    v = build_variant("mba", form="caffe")
    v.start_build()
    units = [v.act_conv2d(3, 5, 3, padding=1, bias=True, stage=3) for _ in range(3)]
    fillers = [[1, 0.5, -0.5, -1], [0.3, 0.1, -0.1, -0.3], [0, 0, 0, 0]]  # by position in the stage
    for unit, filler in zip(units, fillers, strict=True):
        torch.testing.assert_close(unit[0].bias.detach(), torch.tensor(filler, dtype=torch.float32)[:, None]
                                   .expand(4, 3))
    unit = units[0]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    unit = unit.double()
    with torch.no_grad():
        unit[0].bias.add_(0.1 * torch.randn_like(unit[0].bias))  # trained values, not the fillers
    ref_bias = unit[0].bias.detach().clone().requires_grad_()
    ref_w = unit[1].weight.detach().clone().requires_grad_()
    ref_b = unit[1].bias.detach().clone().requires_grad_()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = unit(xa)
    theirs = caffe_chain(xb, [ref_bias[k] for k in range(4)], ref_w, ref_b)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    ours.backward(g)
    theirs.backward(g)
    for a, b in ((xa.grad, xb.grad), (unit[0].bias.grad, ref_bias.grad), (unit[1].weight.grad, ref_w.grad),
                 (unit[1].bias.grad, ref_b.grad)):
        torch.testing.assert_close(a, b)


def test_caffe_form_sits_in_the_stages_asked_for_with_its_initialisations_by_position():
    model = build_model("vgg20_16", "mba", num_classes=10, variant_options={"form": "caffe", "stages": [3]})
    mbas = [m for m in model.modules() if isinstance(m, MultiBiasActivation)]
    # stage 3 (64 kernels): the activations of its six convs, five feeding convs, one the head
    assert len(mbas) == 6 and all(m.channels == 64 and m.pre_relu for m in mbas)
    firsts = torch.stack([m.bias[:, 0] for m in mbas[:2]]).detach()
    torch.testing.assert_close(firsts, torch.tensor([[1, 0.5, -0.5, -1], [0.3, 0.1, -0.1, -0.3]]))
    assert all(torch.count_nonzero(m.bias) == 0 for m in mbas[2:])
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 13  # stages 1-2 stay plain
    with pytest.raises(UserError, match=r"stages \[4\] select no activation of model `resnet20_v1` \(stages it "
                                        r"has: 1, 2, 3\)"):
        build_model("resnet20_v1", "mba", variant_options={"stages": [4]})
    with pytest.raises(UserError, match="is placed by stage .*model `mlp` has none"):
        build_model("mlp", "mba", input_shape=(6,), variant_options={"stages": [1]})
    with pytest.raises(UserError, match="K = 4"):
        build_variant("mba", form="caffe", K=2)


def test_caffe_lr_multiplier_and_no_decay_reach_the_optimiser_groups():
    model = build_model("cnn", "mba", in_channels=1, width=4, variant_options={"form": "caffe"})
    mba_biases = {id(m.bias) for m in model.modules() if isinstance(m, MultiBiasActivation)}
    cfg = OptimConfig(lr=0.1, weight_decay=5e-4, bias_weight_decay=5e-4, l2=1e-4, bias_l2=1e-4)
    opt, l2 = build_optimizer(model, cfg)
    assert opt.param_groups[0]["lr"] == 0.1  # the base learning rate stays group 0 (history records it)
    (special,) = [g for g in opt.param_groups if g.get("lr_mult")]
    assert {id(p) for p in special["params"]} == mba_biases
    assert special["lr"] == pytest.approx(0.2) and special["weight_decay"] == 0.0 and special["lr_mult"] == 2.0
    assert not any(id(p) in mba_biases for g in opt.param_groups if g is not special for p in g["params"])
    assert not any(id(p) in mba_biases for params, _ in l2.groups for p in params)  # no L2 either
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", per="step"), 0.1, steps_per_epoch=10, epochs=2)
    for _ in range(7):
        opt.step()
        sched.step()
    assert special["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])  # the schedule scales both
    paper = build_model("cnn", "mba", in_channels=1, width=4)
    assert not any(g.get("lr_mult") for g in build_optimizer(paper, cfg)[0].param_groups)
