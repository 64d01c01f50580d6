"""Paper model families (ResNet v1/v2, VGG, MLP) in every DAC-related variant.

Parameter counts are computed here from the architectures' formulas, not read from the code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.layers.dac_reference import dac_conv2d_reference
from biasbench.layers.grouped_dac import GroupedDACConv2d
from biasbench.layers.norm import BatchNorm2dNoShift
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.models import applicability, build_model
from biasbench.models.resnet import BasicBlockV1
from biasbench.models.variants import Variant, build_variant
from biasbench.models.vgg import vgg_widths

PAPER_MODELS = [f"resnet{d}_{v}" for d in (20, 32, 44, 56) for v in ("v1", "v2")] + ["vgg20_16", "vgg14_32"]



def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_convs(depth: int, width: int = 1) -> list[tuple[int, int, int]]:
    """(in, out, k) of the block convs of a CIFAR ResNet with option-A shortcuts."""
    n, c = (depth - 2) // 6, 16 * width
    convs, c_in = [], c
    for c_out in (c, 2 * c, 4 * c):
        for _ in range(n):
            convs += [(c_in, c_out, 3), (c_out, c_out, 3)]
            c_in = c_out
    return convs


def resnet_baseline_params(depth: int, width: int = 1, classes: int = 10) -> int:
    c = 16 * width
    convs = resnet_convs(depth, width)
    weights = 3 * c * 9 + sum(i * o * k * k for i, o, k in convs)
    bn_channels = c + sum(o for _, o, _ in convs)  # v1: stem BN + one BN per conv (v2 has as many)
    return weights + 2 * bn_channels + 4 * c * classes + classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet_baseline_parameter_count_matches_formula(depth, version):
    assert n_params(build_model(f"resnet{depth}_{version}")) == resnet_baseline_params(depth)


def test_resnet20_is_the_known_0_27M_model():
    assert resnet_baseline_params(20) == 269_722


def test_dac_adds_one_bias_per_kernel_and_per_head_weight_and_drops_bn_shifts():
    convs = resnet_convs(20)
    unshared = sum(i * o for i, o, _ in convs) + 64 * 10  # block convs + DAC dense head
    bn_shifts = 16 + sum(o for _, o, _ in convs)
    for version in ("v1", "v2"):
        dac = build_model(f"resnet20_{version}", "dac")
        assert n_params(dac) == resnet_baseline_params(20) + unshared - bn_shifts
    growth = n_params(build_model("resnet20_v1", "dac")) / resnet_baseline_params(20)
    assert 1.10 < growth < 1.12  # the paper's "about +11%"


def test_wide_resnet20_v2_has_about_4_3M_parameters():
    exact = resnet_baseline_params(20, width=4)
    assert n_params(build_model("resnet20_v2", width=4)) == exact
    assert round(exact / 1e6, 1) == 4.3


def test_projection_shortcuts_add_1x1_convs_and_their_bn():
    extra = (16 * 32 + 32 * 64) + 2 * (32 + 64)  # two 1x1 projections + their BN (v1)
    assert n_params(build_model("resnet20_v1", shortcut="B")) == resnet_baseline_params(20) + extra
    with pytest.raises(UserError):
        build_model("resnet20_v1", shortcut="C")


def test_vgg_widths_and_parameters_follow_the_paper():
    assert vgg_widths(19, 16, (7, 13)) == [16] * 7 + [32] * 6 + [64] * 6
    assert vgg_widths(13, 32, (5, 9)) == [32] * 5 + [64] * 4 + [128] * 4
    for name, widths in (("vgg20_16", vgg_widths(19, 16, (7, 13))), ("vgg14_32", vgg_widths(13, 32, (5, 9)))):
        chans = [3] + widths
        expected = sum(9 * a * b for a, b in zip(chans, chans[1:])) + 2 * sum(widths) + widths[-1] * 10 + 10
        assert n_params(build_model(name)) == expected


def test_dac_mlp_twin_has_about_the_baseline_parameter_count():
    base = build_model("mlp", input_shape=(14,), num_classes=1, depth=8, width=200)
    dac = build_model("mlp", "dac", input_shape=(14,), num_classes=1, depth=8, width=200)
    assert [m.out_features for m in dac.modules() if isinstance(m, DACLinear)][0] == 141  # 200 / sqrt(2)
    assert abs(n_params(dac) / n_params(base) - 1) < 0.02


def test_dac_conversion_rule_on_resnet_v1():
    model = build_model("resnet20_v1", "dac")
    assert isinstance(model[0], nn.Conv2d)  # the stem reads raw pixels and stays plain
    assert sum(isinstance(m, DACConv2d) for m in model.modules()) == 18
    assert isinstance(model[-1][-1], DACLinear)  # GAP -> DAC dense head
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())  # v1 backbone becomes linear
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, BatchNorm2dNoShift) and m.bias is None for m in norms)


def test_baseline_v1_block_is_post_activated():
    torch.manual_seed(0)
    block = BasicBlockV1(Variant(), 8, 8, 1, "A").eval()
    s = torch.randn(2, 8, 6, 6)  # the backbone carries sums before their ReLU
    conv1, conv2 = block.conv1[1], block.conv2[1]
    expected = block.bn2(conv2(torch.relu(block.bn1(conv1(torch.relu(s)))))) + torch.relu(s)
    torch.testing.assert_close(block(s), expected)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fresh_dac_equals_shared_bias_preactivation_with_same_weights(version):
    # DAC biases start at zero, so DAC and the shared-bias ablation share placement and function.
    torch.manual_seed(0)
    dac, pre = build_model(f"resnet20_{version}", "dac").eval(), build_model(f"resnet20_{version}", "preact").eval()
    src = [p for n, p in dac.named_parameters() if not n.endswith("unshared_bias")]
    dst = [p for m in pre.modules() if not isinstance(m, nn.Sequential)
           for n, p in m.named_parameters(recurse=False) if type(m).__name__ != "SharedBiasPreActivation"]
    assert [p.shape for p in src] == [p.shape for p in dst]
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.copy_(a)
        x = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(dac(x), pre(x), rtol=1e-4, atol=1e-5)


class _RoleRecorder(Variant):
    def __init__(self):
        super().__init__()
        self.roles: list[str | None] = []

    def act_conv2d(self, *args, role=None, **kw):
        self.roles.append(role)
        return super().act_conv2d(*args, role=role, **kw)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet_block_convs_name_their_roles(version):
    rec = _RoleRecorder()
    build_model(f"resnet20_{version}", rec, shortcut="B")
    assert rec.roles.count("block_conv1") == 9 and rec.roles.count("block_conv2") == 9
    assert rec.roles.count("shortcut") == 2 and len(rec.roles) == 20


@pytest.mark.parametrize("K", [2, 4, 8])
def test_mba_multiplies_weights_behind_activations_by_K(K):
    base, mba = build_model("resnet20_v1"), build_model("resnet20_v1", "mba", variant_options={"K": K})
    act_weights = sum(i * o * k * k for i, o, k in resnet_convs(20)) + 64 * 10
    mba_biases = K * (sum(i for i, _, _ in resnet_convs(20)) + 64)  # K biases per input channel
    assert n_params(mba) == n_params(base) + (K - 1) * act_weights + mba_biases


def test_variant_options_are_checked():
    with pytest.raises(UserError):
        build_variant("mba", K=0)
    with pytest.raises(UserError):
        build_variant("dac", bias_sharing="sometimes")
    with pytest.raises(UserError):
        build_variant("preact", K=4)
    unshared = build_model("cnn", "dac", in_channels=1, variant_options={"bias_sharing": "none"})
    assert all(m.unshared_bias.dim() == 4 for m in unshared.modules() if isinstance(m, DACConv2d))


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_paper_model_runs_forward_and_backward_in_every_variant(name):
    torch.manual_seed(0)
    for variant in [v for v, cell in applicability(name).items() if cell == "yes"]:  # as the contract says
        model = build_model(name, variant, num_classes=5)
        x = torch.randn(2, 3, 16, 16)
        out = model(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (name, variant)


# -- grouped and depthwise convs (DAC paper, section 4) ------------------------------------------
def block_diagonal(weights: list[torch.Tensor], biases: list[torch.Tensor], c_in: int) -> tuple[torch.Tensor, ...]:
    """Per-group (out/g, in/g, k, k) weights and (out/g, in/g) biases as one dense DAC conv whose
    weights are zero between groups: the DAC formula over all inputs, restricted to the group."""
    out = sum(w.shape[0] for w in weights)
    k = weights[0].shape[-1]
    dtype = weights[0].dtype
    w_full, b_full = torch.zeros(out, c_in, k, k, dtype=dtype), torch.zeros(out, c_in, dtype=dtype)
    row = col = 0
    for w, b in zip(weights, biases, strict=True):
        w_full[row:row + w.shape[0], col:col + w.shape[1]] = w
        b_full[row:row + w.shape[0], col:col + w.shape[1]] = b
        row, col = row + w.shape[0], col + w.shape[1]
    return w_full, b_full


@pytest.mark.parametrize("c_in,c_out,groups", [(4, 6, 2), (3, 6, 3)])  # grouped; depthwise with multiplier 2
def test_dac_on_a_grouped_conv_is_the_dac_formula_within_each_group(c_in, c_out, groups):
    torch.manual_seed(0)
    v = build_variant("dac")
    layer = v.act_conv2d(c_in, c_out, 3, stride=1, padding=1, groups=groups).double()
    assert isinstance(layer, GroupedDACConv2d)
    with torch.no_grad():
        for conv in layer.convs:
            conv.unshared_bias.normal_()
    z = torch.randn(2, c_in, 5, 5, dtype=torch.float64)
    w, b = block_diagonal([c.weight for c in layer.convs], [c.unshared_bias for c in layer.convs], c_in)
    torch.testing.assert_close(layer(z), dac_conv2d_reference(z, w, b, 1, 1))
    # one bias per (output, input-in-its-group) pair: out x in/g, next to the grouped conv's weights
    assert sum(c.unshared_bias.numel() for c in layer.convs) == c_out * c_in // groups


def test_dac_on_a_depthwise_conv_reduces_to_a_standard_connection():
    """Section 4: with one input per kernel the shared bias is already unshared; DAC's B has one
    entry per channel and the layer is phi(z_c + b_c) followed by the plain depthwise conv."""
    torch.manual_seed(1)
    unit = build_variant("dac").act_conv2d(4, 4, 3, padding=1, groups=4).double()
    pre, conv = unit
    assert isinstance(pre, SharedBiasPreActivation) and isinstance(conv, nn.Conv2d) and conv.groups == 4
    with torch.no_grad():
        pre.bias.normal_()
    z = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w, b = block_diagonal([conv.weight[c:c + 1] for c in range(4)], [pre.bias[c:c + 1, None] for c in range(4)], 4)
    torch.testing.assert_close(unit(z), dac_conv2d_reference(z, w, b, 1, 1))  # the DAC formula, B (C, 1)
    assert sum(p.numel() for p in unit.parameters()) == 4 * 9 + 4


def test_units_pass_layer_options_through_and_dac_refuses_what_its_layers_lack():
    assert Variant().act_conv2d(4, 4, 3, padding=2, dilation=2)[1].dilation == (2, 2)
    assert build_variant("dac").act_conv2d(4, 4, 3, dtype=torch.float64).weight.dtype == torch.float64
    with pytest.raises(ValueError, match="dilation"):
        build_variant("dac").act_conv2d(4, 4, 3, dilation=2)
