"""`count --convention`: the counts papers print (DNRT Table 4 under thop; fvcore's own numbers)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from biasbench.count import complexity, count_built
from biasbench.models import build_model
from tests.conftest import one_line_error, run_cli

VIT_224 = ["--model", "vit_tiny_patch4", "--option", "patch=16", "--input-size", "224", "--num-classes", "1000"]
TNT_224 = ["--model", "tnt_small_patch4", "--option", "patch=16", "--input-size", "224", "--num-classes", "1000"]


def _count_json(args: list[str]) -> dict:
    code, out, err = run_cli(["count", *args, "--json"])
    assert code == 0, err
    return json.loads(out)["variants"]


def _paper_digits(ops: int) -> float:
    """The DNRT paper prints G to 3 decimals, truncated (1.0786 G is printed 1.078 G)."""
    return math.floor(ops / 1e6) / 1e3


def _vit_tiny_thop(tokens: int = 197, d: int = 192, blocks: int = 12, classes: int = 1000) -> int:
    """thop's rules on ViT-Tiny at 224 px: its Linear layers (qkv, proj, fc1, fc2, head), the patch
    conv (196 patches x 768 inputs x 192) and 25 affine LayerNorms at 4 per element."""
    linear = blocks * tokens * (d * 3 * d + d * d + 2 * d * 4 * d) + d * classes
    return linear + 196 * 3 * 16 * 16 * d + (2 * blocks + 1) * tokens * d * 4


def test_thop_reproduces_dnrt_table_4():
    vit = _count_json([*VIT_224, "--variant", "dnrt", "--variant-option", "activation=relu", "--convention", "thop"])
    assert vit["baseline"]["ops"] == _vit_tiny_thop()  # ReLU: zero in thop's table
    assert vit["dnrt"]["ops"] - vit["baseline"]["ops"] == 12 * 197 * 768  # RAA's shift: 768 MACs per token
    tnt = _count_json([*TNT_224, "--variant", "dnrt", "--convention", "thop"])
    table_4 = [(vit["baseline"], 1.078), (vit["dnrt"], 1.080), (tnt["baseline"], 4.849), (tnt["dnrt"], 4.856)]
    assert [_paper_digits(row["ops"]) for row, _ in table_4] == [g for _, g in table_4]
    assert {row["unit"] for row, _ in table_4} == {"MACs"}


def test_thop_table_prints_the_papers_digits_at_80_columns():
    code, out, _ = run_cli(["count", *TNT_224, "--variant", "dnrt", "--convention", "thop"])
    assert code == 0 and "4.8493G" in out and "4.8566G" in out and "MACs (thop)" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_macs_counts_attention_matmuls_too():
    """macs = thop's Linear/conv multiply-adds + QK^T and AV (2 x 3 heads x 197 x 197 x 64 per block)."""
    shape = (3, 224, 224)
    row = count_built(lambda: build_model("vit_tiny_patch4", num_classes=1000, input_shape=shape, patch=16), shape,
                      "macs")
    linear_and_conv = _vit_tiny_thop() - 25 * 197 * 192 * 4
    assert row["ops"] == linear_and_conv + 12 * 2 * 3 * 197 * 197 * 64


@pytest.mark.parametrize("name,options,shape", [("resnet20_v1", {}, (3, 32, 32)),
                                                ("vit_tiny_patch4", {}, (3, 32, 32))])
def test_fvcore_convention_is_fvcores_own_count(name, options, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        torch.manual_seed(0)
        model = build_model(name, num_classes=10, input_shape=shape, **options).eval()
        analysis = FlopCountAnalysis(model, torch.zeros(1, *shape))
        analysis.unsupported_ops_warnings(False)
        expected = analysis.total()
    row = complexity(model, shape, "fvcore")
    assert row["ops"] == expected and row["unit"] == "MACs"
    assert expected != complexity(model, shape, "dac-paper")["ops"]  # a different convention indeed
    if name == "resnet20_v1":  # fvcore's conv + BN (2 per element, inference) + pool + linear
        macs = complexity(model, shape, "macs")["ops"]
        bn = sum(v for k, v in complexity(model, shape)["flops_by_operator"].items() if "batch_norm" in k)
        assert expected == macs + bn + 64 * 8 * 8


def test_fvcore_refuses_in_one_line_what_it_cannot_trace():
    """The multitask model's forward calls torch.func.functional_call, which torch.jit cannot trace."""
    code, _, err = run_cli(["count", "--model", "multitask", "--features", "8", "--convention", "fvcore"])
    one_line_error(code, err, "fvcore cannot trace this model", "--convention dac-paper")
    code, _, err = run_cli(["count", "--model", "multitask", "--features", "8", "--convention", "thop"])
    assert code == 0, err


def test_thop_lists_layers_it_has_no_rule_for():
    shape = (3, 32, 32)
    row = count_built(lambda: build_model("resnet20_v1", "dac", num_classes=10, input_shape=shape), shape, "thop")
    assert row["skipped_ops"].get("DACConv2d", 0) > 0  # not silently zero


def test_a_dnrt_relu_count_compares_with_a_relu_baseline():
    rows = _count_json(["--model", "vit_tiny_patch4", "--variant", "dnrt", "--variant-option", "activation=relu"])
    relu = complexity(build_model("vit_tiny_patch4", num_classes=10, input_shape=(3, 32, 32),
                                  variant_options={"activation": "relu"}), (3, 32, 32))
    gelu = complexity(build_model("vit_tiny_patch4", num_classes=10, input_shape=(3, 32, 32)), (3, 32, 32))
    assert rows["baseline"]["skipped_ops"] == relu["skipped_ops"] != gelu["skipped_ops"]


def test_an_unknown_convention_is_refused_in_one_line():
    code, _, err = run_cli(["count", "--model", "resnet20_v1", "--convention", "flops"])
    one_line_error(code, err, "--convention `flops`", "thop", "fvcore")


@pytest.mark.parametrize("name,options", [("vgg20_16", {}), ("vgg14_32", {}), ("resnet20_v2", {"width": 4})])
def test_dac_formula_gives_the_dac_texts_five_and_a_half_percent(name, options):
    """DAC section 5: "5.5% more FLOPs" for VGG 20/16, 14/32 and the 4x wide ResNet20; dac-paper
    (which reproduces Table 2's 0.509 / 0.542) gives +6.4 to +7.0% on the same networks."""
    shape = (3, 32, 32)

    def ratio(convention):
        base, dac = (count_built(lambda v=v: build_model(name, v, num_classes=10, input_shape=shape, **options),
                                 shape, convention)["ops"] for v in ("baseline", "dac"))
        return dac / base - 1

    assert round(100 * ratio("dac-formula"), 1) == 5.5
    assert ratio("dac-paper") > 0.064
