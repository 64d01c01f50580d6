"""DNRT (spec section 4): RAA, ARR against a hand-written sequential reference, models, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biasbench import trainer
from biasbench.errors import UserError
from biasbench.layers.arr import AggregatedResponseLoss
from biasbench.layers.raa import RAA, RAA2d
from biasbench.models import build_model, model_hooks
from biasbench.recipe import load_recipe
from tests.conftest import RECIPES, tiny_recipe, write_recipe

CPU = torch.device("cpu")



def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# -- RAA ------------------------------------------------------------------------------------------
def test_raa_equals_exact_gelu_and_relu_at_init():
    # The fused kernel computes erf its own way: equal to float32 rounding (1 ulp at |x| ~ 10).
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16) * 3
    torch.testing.assert_close(RAA(16, "gelu")(x), F.gelu(x, approximate="none"), rtol=3e-7, atol=1e-6)
    torch.testing.assert_close(RAA(16, "relu")(x), F.relu(x), rtol=0, atol=0)
    maps = torch.randn(2, 5, 4, 4) * 3
    torch.testing.assert_close(RAA2d(5, "gelu")(maps), F.gelu(maps), rtol=3e-7, atol=1e-6)
    torch.testing.assert_close(RAA2d(5, "relu")(maps), F.relu(maps), rtol=0, atol=0)


def test_raa_shift_is_one_scalar_per_vector_and_gradients_reach_w_and_b():
    torch.manual_seed(0)
    for form in ("gelu", "relu"):
        raa = RAA(6, form)
        with torch.no_grad():
            raa.weight.normal_()
            raa.bias.fill_(0.3)
        x = torch.randn(4, 6)
        s = (x * raa.weight).sum(1, keepdim=True) + 0.3  # w.x + b, one per row
        phi = 0.5 * (1 + torch.erf((x + s) / math.sqrt(2)))
        expected = x * phi if form == "gelu" else torch.clamp(x + s, min=0)
        torch.testing.assert_close(raa(x), expected)
        fresh = RAA(6, form)
        fresh(torch.randn(8, 6) + 0.5).sum().backward()
        assert fresh.weight.grad is not None and fresh.weight.grad.abs().sum() > 0
        assert fresh.bias.grad is not None and fresh.bias.grad.abs().sum() > 0


def test_raa2d_shifts_per_pixel_over_channels():
    torch.manual_seed(1)
    raa = RAA2d(3, "gelu")
    with torch.no_grad():
        raa.weight.normal_()
        raa.bias.fill_(-0.2)
    x = torch.randn(2, 3, 4, 5)
    per_pixel = RAA(3, "gelu")
    per_pixel.load_state_dict(raa.state_dict())
    expected = per_pixel(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(raa(x), expected)


# -- ARR against a sample-by-sample reference ---------------------------------------------------
def reference_arr(batches, num_classes, m, lam, target):
    """The paper's loop, written plainly: one sample at a time, in batch order."""
    means: list[dict[int, torch.Tensor]] = None  # type: ignore[assignment]
    losses = []
    for responses, labels in batches:
        if means is None:
            means = [{} for _ in responses]
        per_layer = []
        for j, x in enumerate(responses):
            total = 0.0
            for i, k in enumerate(labels.tolist()):
                xi = x[i]
                if k not in means[j]:
                    means[j][k] = xi.clone()  # the first sample sets the mean; nothing to compare
                    continue
                before = means[j][k]
                after = (1 - m) * before + m * xi
                means[j][k] = after
                ref = before if target == "pre" else after
                total += (xi - ref).abs().sum().item() / x.shape[1]
            per_layer.append(total / len(labels))
        losses.append(lam * sum(per_layer) / len(per_layer))
    return losses, means


@pytest.mark.parametrize("target", ["pre", "post"])
def test_arr_loss_and_running_means_equal_the_sequential_reference(target):
    torch.manual_seed(3)
    dims, k, m, lam = [4, 3], 3, 0.1, 2.5
    batches = []
    for labels in ([0, 1, 0, 0, 2, 1], [2, 2, 0, 1, 1, 1], [1, 0, 0, 0, 2, 2]):
        y = torch.tensor(labels)
        batches.append(([torch.randn(len(y), d) for d in dims], y))
    expected_losses, expected_means = reference_arr(batches, k, m, lam, target)
    term = AggregatedResponseLoss(None, dims, k, momentum=m, lam=lam, target=target)
    for (responses, y), want in zip(batches, expected_losses, strict=True):
        got = term.loss(responses, y)
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    for j, mean in enumerate(term.means()):
        for cls, want in expected_means[j].items():
            torch.testing.assert_close(mean[cls], want, rtol=1e-5, atol=1e-6)
    assert term.seen.tolist() == [True, True, True]


def test_arr_first_sample_sets_the_mean_and_means_carry_no_gradient():
    term = AggregatedResponseLoss(None, [2], 4, momentum=0.1, lam=1.0)
    x = torch.tensor([[1.0, -2.0]], requires_grad=True)
    loss = term.loss([x], torch.tensor([3]))
    assert loss.item() == 0.0
    assert torch.equal(term.mean_0[3], torch.tensor([1.0, -2.0])) and not term.mean_0.requires_grad
    assert term.seen.tolist() == [False, False, False, True]
    x2 = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss = term.loss([x2], torch.tensor([3]))  # pre: ||x - mu||_1 / d = (1 + 2) / 2
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    torch.testing.assert_close(x2.grad, torch.tensor([[0.5, 0.5]]))  # sign / d, nothing flows into the means
    torch.testing.assert_close(term.mean_0[3], torch.tensor([1.1, -1.8]))


def test_arr_state_is_in_the_state_dict():
    term = AggregatedResponseLoss(None, [4, 6], 10)
    assert set(term.state_dict()) == {"mean_0", "mean_1", "seen"}


# -- models ---------------------------------------------------------------------------------------
def vit_count(classes: int, raa: bool, dim=192, depth=12, mlp=4, tokens=65, patch=4, channels=3) -> int:
    embed = channels * patch * patch * dim + dim + dim + tokens * dim  # conv, cls token, position
    block = (
        2 * (2 * dim)
        + (dim * 3 * dim + 3 * dim)
        + (dim * dim + dim)
        + (dim * mlp * dim + mlp * dim)
        + (mlp * dim * dim + dim)
    )
    if raa:
        block += mlp * dim + 1  # w (d) and b over the MLP's hidden vector
    return embed + depth * block + 2 * dim + dim * classes + classes


def test_vit_tiny_patch4_parameter_counts():
    base = build_model("vit_tiny_patch4", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    raa = build_model("vit_tiny_patch4", "raa", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    # The spec's 5,362,762 is the GELU baseline (timm's ViT-Tiny, patch 4, 65 tokens); RAA adds
    # 12 x (768 + 1) = 9,228 on top of it.
    assert n_params(base) == vit_count(10, raa=False) == 5_362_762
    assert n_params(raa) == vit_count(10, raa=True) == 5_362_762 + 9_228
    assert sum(isinstance(m, RAA) for m in raa.modules()) == 12


def test_resnet18_cifar_count_and_raa_everywhere():
    base = build_model("resnet18", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32))
    assert n_params(base) == 11_173_962  # the usual CIFAR ResNet-18 (3x3 stem, no max-pool)
    raa = build_model("resnet18", "raa", num_classes=10, in_channels=3, input_shape=(3, 32, 32),
                      variant_options={"activation": "gelu"}, width=8)
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in raa.modules())
    forms = {m.form for m in raa.modules() if isinstance(m, RAA2d)}
    assert forms == {"gelu"}
    relu_form = build_model("resnet18", "raa", num_classes=10, in_channels=3, input_shape=(3, 32, 32), width=8)
    assert {m.form for m in relu_form.modules() if isinstance(m, RAA2d)} == {"relu"}  # resnet18's own ReLU


def test_the_activation_is_a_variant_option_and_never_ignored():
    """`activation` as a model option was honoured by some models and ignored by others: now it is
    refused with the key to use, and the variant option reaches every model that builds activations."""
    with pytest.raises(UserError, match="model.variant_options.activation"):
        build_model("resnet_s", num_classes=10, in_channels=3, input_shape=(3, 32, 32), activation="gelu")
    for name in ("resnet_s", "cnn", "resnet20_v1"):
        net = build_model(name, num_classes=10, in_channels=3, input_shape=(3, 32, 32),
                          variant_options={"activation": "gelu"})
        assert any(isinstance(m, torch.nn.GELU) for m in net.modules()), name
        assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules()), name


def test_arr_terms_follow_the_variant_and_read_every_block():
    model = build_model(
        "vit_tiny_patch4",
        "dnrt",
        num_classes=10,
        in_channels=1,
        input_shape=(1, 8, 8),
        variant_options={"lam": 20, "target": "post"},
        patch=2,
        dim=16,
        depth=3,
        heads=2,
    )
    (term,) = model_hooks(model).loss_terms.values()
    assert (term.lam, term.target, term.dims) == (20.0, "post", [16, 16, 16])
    # the term reads the class token of every block, in training only
    model.train()(torch.randn(4, 1, 8, 8))
    responses = term.tap.take()
    assert [tuple(r.shape) for r in responses] == [(4, 16)] * 3
    raa = build_model("vit_tiny_patch4", "raa", num_classes=10, in_channels=1, input_shape=(1, 8, 8), patch=2,
                      dim=16, depth=1, heads=2)
    assert dict(model_hooks(raa).loss_terms) == {}


def test_arr_taps_every_stage_of_the_cifar_resnets():
    """DNRT's long-tailed experiment runs ResNet-32: ARR reads each stage's pooled output."""
    model = build_model("resnet32_v1", "arr", num_classes=10, in_channels=3, input_shape=(3, 16, 16))
    (term,) = model_hooks(model).loss_terms.values()
    assert term.dims == [16, 32, 64]
    x = torch.randn(3, 3, 16, 16)
    model.train()(x)
    responses = term.tap.take()
    stage_ends = [model[i] for i in model.stage_ends]  # the last block of each stage
    assert len(stage_ends) == 3
    h = model[0:2](x)  # stem conv + BN
    expected = []
    for i, layer in enumerate(list(model)[2:-1], start=2):
        h = layer(h)
        if i in model.stage_ends:
            expected.append(h.mean(dim=(2, 3)))
    for got, want in zip(responses, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_arr_variant_on_a_model_without_response_layers_is_refused(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={"variant": "arr"}))
    recipe = load_recipe(path)
    with pytest.raises(UserError, match="variant `arr` regularises the responses .*model `mlp` has none"):
        trainer.build_for_recipe(recipe, 0, CPU)


# -- training: smoke recipes learn, evaluation leaves ARR alone, resume restores the means ----------
def _smoke(path, tmp_path, *overrides, **kw):
    recipe = load_recipe(path, [f"output.dir={tmp_path}", *overrides], smoke=True)
    return trainer.train_recipe(recipe, CPU, **kw)


def test_vit_dnrt_smoke_learns_and_resume_restores_arr_means(tmp_path):
    path = RECIPES / "dnrt" / "cifar10" / "vit_tiny_dnrt.yaml"
    (straight,) = _smoke(path, tmp_path / "a", "train.epochs=3")
    assert straight["final"]["test_acc"] > 0.3  # chance is 0.1
    _smoke(path, tmp_path / "b", "train.epochs=3", stop_after=2)
    (resumed,) = _smoke(path, tmp_path / "b", "train.epochs=3", resume=True)
    assert resumed["history"] == [
        dict(h, seconds=s["seconds"]) for h, s in zip(straight["history"], resumed["history"], strict=True)
    ]
    a = torch.load(next((tmp_path / "a").rglob("checkpoint.pt")), weights_only=True)["criterion"]
    b = torch.load(next((tmp_path / "b").rglob("checkpoint.pt")), weights_only=True)["criterion"]
    assert any(k.startswith("terms.arr.mean_") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluation_never_touches_arr_state(tmp_path):
    recipe = load_recipe(
        RECIPES / "dnrt" / "cifar100" / "resnet18_dnrt.yaml", [f"output.dir={tmp_path}"], smoke=True
    )
    bundle, model = trainer.build_for_recipe(recipe, 0, CPU)
    criterion = trainer.build_criterion(recipe, bundle, model)
    from biasbench.data.loader import TensorLoader

    before = {k: v.clone() for k, v in criterion.state_dict().items()}
    trainer.evaluate(model, TensorLoader(bundle, bundle.test, 256, CPU), criterion)
    assert all(torch.equal(before[k], v) for k, v in criterion.state_dict().items())


def test_resnet18_dnrt_smoke_learns(tmp_path):
    (doc,) = _smoke(RECIPES / "dnrt" / "cifar100" / "resnet18_dnrt.yaml", tmp_path)
    assert doc["status"] == "completed" and doc["final"]["test_acc"] > 0.6
