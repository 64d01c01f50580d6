"""ABN (spec section 3): the layers against their formulas, ResNet-S / ResNet-DMB parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biasbench.count import complexity
from biasbench.errors import UserError
from biasbench.layers.abn import DynamicModulatedConv2d, DynamicMultiBiasLinear
from biasbench.models import build_model
from biasbench.params import parameter_roles


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- reference counts, written from the architecture, not from the code ------------------------
def conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def dmbl(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out + k * c_out + (c_in * k + k)  # W (no bias), bank, gate Linear(in, K)


def resnet_s_count(dmb: bool, classes: int = 10, k: int = 4) -> int:
    total = conv(3, 64, 3) + bn(64)
    c_in = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2)):
        for b in range(2):
            s = stride if b == 0 else 1
            total += conv(c_in, planes, 3) + bn(planes)
            if dmb:  # the second conv: DynamicModulatedConv2d keeps its conv bias, adds a DMBL
                total += conv(planes, planes, 3, bias=True) + dmbl(planes, planes, k) + bn(planes)
            else:
                total += conv(planes, planes, 3) + bn(planes)
            if s != 1 or c_in != planes:
                total += conv(c_in, planes, 1) + bn(planes)
            c_in = planes
    return total + 256 * classes + classes


def test_resnet_s_and_dmb_parameter_counts():
    base = build_model("resnet_s", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    dmb = build_model("resnet_s", "dmb", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    assert n_params(base) == resnet_s_count(dmb=False) == 2_777_674  # the paper's Table 1
    assert n_params(dmb) == resnet_s_count(dmb=True) == 2_957_794
    assert sum(isinstance(m, DynamicModulatedConv2d) for m in dmb.modules()) == 6


def test_resnet_s_block_order_is_conv_bn_relu_conv_bn_add_relu():
    """The baseline unit-written block equals the classic post-activated BasicBlock."""
    torch.manual_seed(0)
    model = build_model(
        "resnet_s", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32), width=8
    )
    model.eval()
    block = model.stages[1][0]  # a block with a projection shortcut
    x = torch.relu(torch.randn(2, 8, 16, 16))  # a block's input is post-ReLU in the classic form
    conv1, conv2, proj = block.conv1[1], block.conv2[1], block.shortcut[0][1]
    classic = torch.relu(block.bn2(conv2(torch.relu(block.bn1(conv1(x))))) + block.shortcut[1](proj(x)))
    torch.testing.assert_close(torch.relu(block(x)), classic)


def test_dynamic_multi_bias_linear_equals_its_formula():
    torch.manual_seed(1)
    layer = DynamicMultiBiasLinear(6, 5, K=3)
    with torch.no_grad():
        layer.bank.normal_()  # the bank starts at zero; give it values so the mixture matters
    x = torch.randn(4, 6)
    gate = x @ layer.gate.weight.T + layer.gate.bias
    mix = torch.exp(gate) / torch.exp(gate).sum(1, keepdim=True)
    expected = x @ layer.weight.T + mix @ layer.bank
    torch.testing.assert_close(layer(x), expected)
    # at initialisation the bank is zero: a bias-free dense layer
    fresh = DynamicMultiBiasLinear(6, 5, K=3)
    assert torch.equal(fresh.bank, torch.zeros(3, 5))
    torch.testing.assert_close(fresh(x), x @ fresh.weight.T)


def test_dynamic_modulated_conv_equals_its_formula_and_keeps_its_bias():
    torch.manual_seed(2)
    layer = DynamicModulatedConv2d(3, 4, 3, K=2, padding=1)
    with torch.no_grad():
        layer.modulator.bank.normal_()
    x = torch.randn(2, 3, 5, 5)
    ctx = x.mean(dim=(2, 3))  # the context comes from the conv's input
    m = layer.modulator(ctx)
    expected = (
        nn.functional.conv2d(x, layer.conv.weight, layer.conv.bias, padding=1)
        * (1 + torch.tanh(m))[:, :, None, None]
    )
    torch.testing.assert_close(layer(x), expected)
    assert layer.conv.bias is not None


def test_bias_bank_is_a_bias_for_the_optimiser():
    roles = parameter_roles(DynamicMultiBiasLinear(3, 2, 4))
    assert roles == {"weight": "weight", "bank": "bias", "gate.weight": "weight", "gate.bias": "bias"}


def test_dmb_variant_changes_only_block_conv2_of_the_cifar_resnets():
    """The DAC issue's ResNets mark their second convs with role="block_conv2" too."""
    base = build_model("resnet20_v1", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    model = build_model("resnet20_v1", "dmb", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlockV1"]
    assert len(blocks) == 9  # 3 stages x 3 blocks
    assert all(isinstance(b.conv2[1], DynamicModulatedConv2d) for b in blocks)
    assert not any(isinstance(m, DynamicModulatedConv2d) for b in blocks for m in b.conv1.modules())
    assert sum(isinstance(m, DynamicModulatedConv2d) for m in model.modules()) == 9
    # everything else is the baseline: the extra parameters are the nine convs' biases and modulators
    extra = sum(c + dmbl(c, c, 4) for c in (16,) * 3 + (32,) * 3 + (64,) * 3)
    assert n_params(model) == n_params(base) + extra
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dmb_is_refused_where_there_are_no_residual_blocks_and_K_is_its_option():
    with pytest.raises(UserError) as e:
        build_model("cnn", "dmb", num_classes=10, in_channels=1, input_shape=(1, 8, 8))
    assert str(e.value) == "variant `dmb` modulates the second conv of residual blocks; model `cnn` has none"
    with pytest.raises(UserError, match="option `num_biases` is now `K`"):
        build_model("resnet_s", "dmb", in_channels=3, input_shape=(3, 8, 8), variant_options={"num_biases": 4})
    eight = build_model("resnet_s", "dmb", in_channels=3, input_shape=(3, 8, 8), width=4, variant_options={"K": 8})
    assert {m.modulator.bank.shape[0] for m in eight.modules() if isinstance(m, DynamicModulatedConv2d)} == {8}


def test_count_covers_the_modulation_and_lists_its_elementwise_work():
    base = build_model(
        "resnet_s", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32), width=8
    )
    dmb = build_model("resnet_s", "dmb", num_classes=10, in_channels=3, input_shape=(3, 32, 32), width=8)
    cb, cd = complexity(base, (3, 32, 32)), complexity(dmb, (3, 32, 32))
    assert cd["params"]["total"] == n_params(dmb)
    # the six DMBL dense layers, gates and bank mixtures: MACs added, not lost
    extra_macs = sum(c * c + c * 4 + 4 * c for c in (8, 8, 16, 16, 32, 32))
    assert cd["macs"] - cb["macs"] == extra_macs
    for op in ("aten::tanh", "aten::_softmax", "aten::mul"):  # element-wise work, listed not dropped
        assert cd["skipped_ops"].get(op) == 6
