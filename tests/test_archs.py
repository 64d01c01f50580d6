"""DNRT's architectures (issue 11, point 6): parameter counts pinned to independent sources, and
the baseline units computing exactly the networks they stand for.

- Ours (AlexNet, VGG-11, MobileNetV2, ShuffleNetV2): against torchvision's own networks (same
  layers; CIFAR strides only move where the resolution drops) and a formula from the papers'
  layer tables; with torchvision's weights copied in, the same outputs as torchvision's network
  given the CIFAR stem, which checks that a ShuffleNet unit carrying its input unactivated and
  a pool placed before the activation compute the paper's function.
- timm's (DeiT, CaiT, TNT): against timm's own count for the same configuration, RAA's
  w (d) + b (1) in every MLP, and ARR's taps.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d
from biasbench.layers.preact import SharedBiasPreActivation
from biasbench.layers.raa import RAA
from biasbench.models import build_model, model_hooks


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):
        return build(*args, **kwargs)


def ours(name: str, variant: str = "baseline", classes: int = 10, **options) -> nn.Module:
    return build_model(name, variant, num_classes=classes, input_shape=(3, 32, 32), **options)


# -- parameter counts ---------------------------------------------------------------------------
def conv(c_in: int, c_out: int, k: int, bias: bool = False, groups: int = 1) -> int:
    return c_in // groups * c_out * k * k + bias * c_out


def dense(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out


def bn(c: int) -> int:
    return 2 * c


def vgg11_formula(classes: int, w: int = 64) -> int:
    """Simonyan & Zisserman's configuration A: 8 convs with biases, BN, one dense layer."""
    widths = [w, 2 * w, 4 * w, 4 * w, 8 * w, 8 * w, 8 * w, 8 * w]
    return sum(conv(a, b, 3, bias=True) + bn(b) for a, b in zip([3, *widths[:-1]], widths)) + dense(8 * w, classes)


def mobilenet_v2_formula(classes: int) -> int:
    """Sandler et al., Table 2 (t, c, n, s): stem 32, bottlenecks, 1x1 conv to 1280, dense."""
    table = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    total, c = conv(3, 32, 3) + bn(32), 32
    for t, c_out, n in table:
        for i in range(n):
            c_in = c if i == 0 else c_out
            h = c_in * t
            total += (conv(c_in, h, 1) + bn(h) if t != 1 else 0) + conv(h, h, 3, groups=h) + bn(h) \
                + conv(h, c_out, 1) + bn(c_out)
        c = c_out
    return total + conv(320, 1280, 1) + bn(1280) + dense(1280, classes)


def test_our_cnns_have_torchvisions_parameter_counts_and_the_papers_formulas():
    tv = torchvision.models
    cases = [
        ("alexnet", {}, n_params(on_meta(tv.alexnet).features) + dense(256, 10)),
        ("vgg11", {}, n_params(on_meta(tv.vgg11_bn).features) + dense(512, 10)),
        ("mobilenet_v2", {}, n_params(on_meta(lambda: tv.mobilenet_v2(num_classes=10)))),
        ("mobilenet_v2", {"width": 0.5}, n_params(on_meta(lambda: tv.mobilenet_v2(num_classes=10, width_mult=0.5)))),
        ("shufflenet_v2", {}, n_params(on_meta(lambda: tv.shufflenet_v2_x1_0(num_classes=10)))),
        ("shufflenet_v2", {"width": 0.5}, n_params(on_meta(lambda: tv.shufflenet_v2_x0_5(num_classes=10)))),
        ("shufflenet_v2", {"width": 2.0}, n_params(on_meta(lambda: tv.shufflenet_v2_x2_0(num_classes=10)))),
    ]
    for name, options, expected in cases:
        assert n_params(on_meta(ours, name, **options)) == expected, (name, options)
    assert n_params(on_meta(lambda: ours("vgg11", classes=100))) == vgg11_formula(100)
    assert n_params(on_meta(lambda: ours("vgg11", width=16))) == vgg11_formula(10, 16)
    assert n_params(on_meta(lambda: ours("mobilenet_v2", classes=100))) == mobilenet_v2_formula(100)


TIMM = {  # ours -> (timm's name, timm's arguments for the same configuration)
    "deit_tiny_patch4": ("deit_tiny_patch16_224", dict(img_size=32, patch_size=4)),
    "cait_xxs_patch4": ("cait_xxs24_224", dict(img_size=32, patch_size=4)),
    "tnt_small_patch4": ("tnt_s_legacy_patch16_224", dict(img_size=32, patch_size=4, first_stride=4)),
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_families_count_as_timm_and_raa_adds_w_and_b_in_every_mlp(name):
    import timm
    from timm.layers import Mlp

    timm_name, kwargs = TIMM[name]
    reference = on_meta(lambda: timm.create_model(timm_name, num_classes=10, **kwargs))
    hidden = [m.fc2.in_features for m in reference.modules() if isinstance(m, Mlp)]
    assert len(hidden) == {"deit_tiny_patch4": 12, "cait_xxs_patch4": 26, "tnt_small_patch4": 24}[name]
    assert n_params(on_meta(lambda: ours(name))) == n_params(reference)
    raa = on_meta(lambda: ours(name, "raa"))
    assert n_params(raa) == n_params(reference) + sum(h + 1 for h in hidden)
    assert sorted(m.num_features for m in raa.modules() if isinstance(m, RAA)) == sorted(hidden)
    assert not any(isinstance(m, nn.GELU) for m in raa.modules())


def test_deit_tiny_at_patch_4_is_dnrts_vit_tiny():
    """The DNRT authors' only model, vit_tiny_patch4_32 (biasbench's vit_tiny_patch4, pinned to
    their code), has DeiT-Tiny's architecture: the same counts with GELU and with RAA."""
    for variant in ("baseline", "raa"):
        deit, vit = on_meta(ours, "deit_tiny_patch4", variant), on_meta(ours, "vit_tiny_patch4", variant)
        assert n_params(deit) == n_params(vit)
    distilled = on_meta(lambda: ours("deit_tiny_patch4", distilled=True))  # + token, its position, a head
    assert n_params(distilled) == n_params(on_meta(lambda: ours("deit_tiny_patch4"))) + 192 + 192 + dense(192, 10)


@pytest.mark.parametrize("name,taps,dims", [("deit_tiny_patch4", 12, 192), ("cait_xxs_patch4", 2, 192),
                                             ("tnt_small_patch4", 12, 384), ("pvt_tiny", 8, None)])
def test_arr_reads_the_class_token_of_every_block_or_pooled_tokens(name, taps, dims):
    net = on_meta(lambda: ours(name, "arr"))
    (term,) = model_hooks(net).loss_terms.values()
    assert len(term.dims) == taps
    assert term.dims == ([dims] * taps if dims else [64, 64, 128, 128, 320, 320, 512, 512])


def test_the_arr_tap_of_a_tiny_deit_is_each_blocks_class_token():
    torch.manual_seed(0)
    net = build_model("deit_tiny_patch4", "arr", num_classes=3, input_shape=(3, 8, 8), dim=8, depth=2, heads=2,
                      drop_path=0.0).train()
    (term,) = model_hooks(net).loss_terms.values()
    seen = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, i, out: seen.append(out[:, 0].detach().clone()))
    net(torch.rand(4, 3, 8, 8))
    for got, want in zip(term.tap.take(), seen, strict=True):
        assert torch.equal(got, want)


# -- the baseline units compute the papers' networks ------------------------------------------
def _copy_in_order(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer of `source` into `target`, matched by order and shape."""
    src, dst = list(source.state_dict().values()), target.state_dict()
    assert len(src) == len(dst)
    for (key, value), new in zip(dst.items(), src, strict=True):
        assert value.shape == new.shape, key
        value.copy_(new)


def _randomise_norms(net: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _same_function(reference: nn.Module, net: nn.Module, shape=(2, 3, 32, 32)) -> None:
    torch.manual_seed(0)
    _randomise_norms(reference)
    _copy_in_order(reference, net)
    x = torch.randn(*shape)
    reference.eval(), net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)


def test_shufflenet_v2_is_torchvisions_with_the_cifar_stem():
    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    reference.conv1[0].stride, reference.maxpool = (1, 1), nn.Identity()
    _same_function(reference, ours("shufflenet_v2", width=0.5))


def test_mobilenet_v2_is_torchvisions_with_the_cifar_strides():
    reference = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    reference.features[0][0].stride = (1, 1)  # stem
    reference.features[2].conv[1][0].stride = (1, 1)  # the second sequence's first depthwise conv
    _same_function(reference, ours("mobilenet_v2", width=0.5))


def test_alexnet_is_the_cifar_alexnet_and_vgg11_is_torchvisions_features_with_one_dense_layer():
    tv = torchvision.models.alexnet()
    c = [m for m in tv.features if isinstance(m, nn.Conv2d)]
    c[0].padding = (5, 5)
    pool = nn.MaxPool2d(2)
    reference = nn.Sequential(c[0], nn.ReLU(), pool, c[1], nn.ReLU(), pool, c[2], nn.ReLU(), c[3], nn.ReLU(), c[4],
                              nn.ReLU(), pool, nn.Flatten(), nn.Linear(256, 10))
    _same_function(reference, ours("alexnet"))
    reference = nn.Sequential(torchvision.models.vgg11_bn().features, nn.Flatten(), nn.Linear(512, 10))
    _same_function(reference, ours("vgg11"))


# -- variants on the new families -----------------------------------------------------------------
def test_dac_on_mobilenet_makes_depthwise_convs_the_standard_connection_and_1x1_convs_dac():
    net = ours("mobilenet_v2", "dac", width=0.25)
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(isinstance(m, SharedBiasPreActivation) for m in net.modules()) == 17
    assert sum(isinstance(m, DACConv2d) for m in net.modules()) == 17  # every projection


def test_new_models_refuse_images_they_cannot_read_in_one_line():
    for name, shape in [("alexnet", (3, 16, 16)), ("vgg11", (3, 16, 16)), ("pvt_tiny", (3, 16, 16)),
                        ("deit_tiny_patch4", (3, 30, 30))]:
        with pytest.raises(UserError) as e:
            build_model(name, num_classes=10, input_shape=shape)
        assert "\n" not in str(e.value) and f"`{name}`" in str(e.value), str(e.value)
    with pytest.raises(UserError, match="not both"):
        build_model("shufflenet_v2", input_shape=(3, 32, 32), width=0.5, channels=[4, 8, 8, 8, 16])
    with pytest.raises(UserError, match="relu"):  # MobileNetV2's ReLU6 has no RAA form
        build_model("mobilenet_v2", "raa", input_shape=(3, 32, 32))
