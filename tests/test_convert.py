"""`convert` (issue 11, point 7): a variant applied to any traceable module by the DAC paper's rule.

Acceptance: converting biasbench's own baselines gives, with the same weights, exactly the
network `build_model` builds with the variant (parameter count, outputs, `count`); torchvision's
and timm's networks convert, and what is left is listed; bad input is one line.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from biasbench.count import complexity
from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.layers.norm import BatchNorm2dNoShift
from biasbench.layers.raa import RAA, RAA2d
from biasbench.models import build_model, convert, list_variants, model_hooks
from biasbench.models.convert import conversion
from biasbench.models.variants import build_variant
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe

SHAPE = (3, 32, 32)
# Every variant that needs no more than a traced network offers (its activations, and those that
# feed linear operators): not response taps or residual blocks, which only a model declares.
CONVERTIBLE = [v for v in list_variants()
               if v != "baseline" and build_variant(v).needs() <= {"activations", "act_linear"}]


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _same_weights(source: nn.Module, target: nn.Module) -> None:
    """`source`'s parameters and buffers into `target`, in order, every shape checked."""
    src, dst = source.state_dict(), target.state_dict()
    assert len(src) == len(dst)
    for (name, value), (key, new) in zip(dst.items(), src.items(), strict=True):
        assert value.shape == new.shape, (name, key)
        value.copy_(new)


@pytest.mark.parametrize("model", ["resnet20_v1", "resnet20_v2", "vgg20_16"])
def test_converting_a_baseline_is_building_the_variant(model):
    baseline = build_model(model, input_shape=SHAPE)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    for variant in CONVERTIBLE:
        torch.manual_seed(1)
        built = build_model(model, variant, input_shape=SHAPE)
        with torch.no_grad():  # move every parameter off its initial value: biases, BN shifts, ...
            for p in built.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        converted = convert(baseline, variant, input_shape=SHAPE, name=model)
        assert n_params(converted) == n_params(built), variant
        _same_weights(built, converted)
        built.eval(), converted.eval()
        with torch.no_grad():
            assert torch.equal(converted(x), built(x)), variant
        counted, reference = complexity(converted, SHAPE), complexity(built, SHAPE)
        assert (counted["flops"], counted["params"]) == (reference["flops"], reference["params"]), variant
        report = conversion(converted)
        assert report.left == () and report.converted == report.activations, report.line()


def test_the_v1_identity_path_loses_its_activation_and_bns_their_shift_under_dac():
    converted = convert(build_model("resnet20_v1", input_shape=SHAPE), "dac", input_shape=SHAPE)
    report = conversion(converted)
    assert report.units == 19 and report.shifts_removed == 19  # 18 block convs + head; 19 BNs
    assert sum(isinstance(m, BatchNorm2dNoShift) for m in converted.modules()) == 19
    assert not any(isinstance(m, nn.ReLU) for m in converted.modules())  # the backbone is linear


def test_arr_on_a_converted_model_taps_the_named_modules():
    baseline = build_model("resnet20_v1", input_shape=SHAPE)
    converted = convert(baseline, "dnrt", input_shape=SHAPE, taps=["3", "6", "9"], activation="relu")
    (term,) = model_hooks(converted).loss_terms.values()
    assert term.dims == [16, 32, 64]
    converted.train()
    y = torch.tensor([0, 1, 0, 1])
    for _ in range(2):
        loss = term(converted(torch.randn(4, *SHAPE)), y)
    assert loss.item() > 0 and loss.requires_grad
    assert sum(isinstance(m, RAA2d) for m in converted.modules()) == 28


def test_torchvision_resnet18_converts_and_lists_the_stem_activation_it_leaves():
    net = torchvision.models.resnet18(num_classes=10)
    converted = convert(net, "dac", input_shape=SHAPE, name="resnet18")
    report = conversion(converted)
    assert (report.activations, report.converted, report.units) == (17, 16, 19)  # 16 convs + 2 projections + fc
    assert report.left == (("relu", "they feed a MaxPool2d"),), report.left
    assert "1 left: 1 they feed a MaxPool2d" in report.line()
    assert sum(isinstance(m, DACConv2d) for m in converted.modules()) == 18
    assert isinstance(converted.fc, nn.Sequential) and isinstance(converted.fc[-1], DACLinear)
    assert isinstance(net.fc, nn.Linear)  # the original is untouched
    # RAA starts as the activation it replaces: the converted network computes the original's function
    raa = convert(net, "raa", input_shape=SHAPE, activation="relu")
    assert sum(isinstance(m, RAA2d) for m in raa.modules()) == 17  # the shared ReLU modules each get their own
    x = torch.randn(2, *SHAPE)
    net.eval(), raa.eval()
    with torch.no_grad():
        torch.testing.assert_close(raa(x), net(x))
    assert complexity(converted, SHAPE)["flops"] > complexity(net, SHAPE)["flops"]


def test_torchvision_mobilenet_v2_under_dac_at_initialisation_is_the_same_function():
    """DAC's biases start at zero and BN's shifts start at zero: converting a fresh network
    changes its parameters, not its function (the head behind a dropout is left, and listed)."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval()
    converted = convert(net, "dac", input_shape=SHAPE).eval()
    report = conversion(converted)
    assert (report.activations, report.converted) == (35, 34)
    assert report.left[0][1] == "they feed an average pool that does not lead straight to a dense layer"
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), rtol=1e-4, atol=1e-5)
    assert model_hooks(converted).variant.activation == "relu6"  # phi is the model's own activation


def test_timm_deit_tiny_converts_every_mlp_activation():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    converted = convert(net, "dac", name="deit_tiny_patch16_224").eval()  # timm's input size: 224
    report = conversion(converted)
    assert (report.activations, report.converted, report.units, report.shifts_removed) == (12, 12, 12, 12)
    assert sum(isinstance(m, DACLinear) for m in converted.modules()) == 12
    assert all(converted.get_submodule(f"blocks.{i}.mlp.fc1").bias is None for i in range(12))  # fed the act
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # at initialisation: fc1's bias and DAC's biases are zero
        torch.testing.assert_close(converted(x), net(x), rtol=1e-4, atol=1e-4)
    dnrt = convert(net, "dnrt")
    assert sum(isinstance(m, RAA) for m in dnrt.modules()) == 12
    assert model_hooks(dnrt).loss_terms["arr"].dims == [192] * 12  # every block's class token


class _Gated(nn.Module):
    """One activation feeds a conv, one feeds a multiplication (a gate)."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return (self.head(torch.relu(self.conv(x))) * torch.relu(self.gate(x))).mean((2, 3))


def test_what_cannot_be_converted_is_listed_never_dropped():
    converted = convert(_Gated(), "dac", input_shape=SHAPE)
    report = conversion(converted)
    assert (report.activations, report.converted) == (2, 1)
    assert "1 left: 1 they feed a multiplication" in report.line()


class _Untraceable(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_bad_input_is_one_line():
    cases = [
        (lambda: convert(_Untraceable(), "dac", input_shape=SHAPE), "torch.fx cannot trace"),
        (lambda: convert(torchvision.models.mobilenet_v2(), "mba", input_shape=SHAPE), "set model.variant_options"),
        (lambda: convert(_Gated(), "arr", input_shape=SHAPE), "variant `arr`"),
        (lambda: convert(_Gated(), "dmb", input_shape=SHAPE), "variant `dmb`"),
        (lambda: convert(_Gated(), "dac"), "give input_shape"),
        (lambda: build_model("timm:deit_tiny_patch16_24", input_shape=SHAPE), "did you mean `deit_tiny_patch16_224`"),
        (lambda: build_model("torchvision:resnet18", input_shape=SHAPE, weights="DEFAULT"), "downloads nothing"),
        (lambda: build_model("timm:resnet18", input_shape=SHAPE, pretrained=True), "downloads nothing"),
        (lambda: build_model("torchvision:resnet18", in_channels=1, input_shape=(1, 32, 32)), "3 channels"),
        (lambda: build_model("timm:vit_tiny_patch16_224", input_shape=SHAPE), "model.options.img_size"),
    ]
    for make, words in cases:
        with pytest.raises(UserError) as e:
            make()
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


def test_a_recipe_trains_a_converted_library_model(tmp_path):
    doc = tiny_recipe(tmp_path, model={"name": "timm:test_resnet", "variant": "dac", "options": {}},
                      train={"epochs": 1, "batch_size": 128})
    code, out, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    assert code == 0, err
    import json

    (results,) = (tmp_path / "runs").rglob("results.json")
    doc = json.loads(results.read_text())
    assert doc["conversion"]["variant"] == "dac" and doc["conversion"]["units"] > 0
    assert doc["params"]["total"] == n_params(build_model("timm:test_resnet", "dac", in_channels=1,
                                                         input_shape=(1, 8, 8)))
    assert "convert timm:test_resnet to dac: " in out
    doc_bad = tiny_recipe(tmp_path, model={"name": "timm:no_such_net", "options": {}})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "bad.yaml", doc_bad))])
    one_line_error(code, err, "unknown timm model `no_such_net`")
