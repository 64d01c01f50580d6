"""`biasbench count` and `biasbench.count.complexity`: the DAC paper's figures and conventions."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from biasbench.count import complexity, touched_positions
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.models import build_model
from tests.conftest import RECIPES, run_cli


def gflops(name: str, variant: str, size: int = 80) -> float:
    return complexity(build_model(name, variant), (3, size, size))["flops"] / 1e9


# Paper, Table 2 (Imagenette / Imagewoof at 80x80; the same for v1 and v2).
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("depth,base,dac", [(20, 0.509, 0.542), (32, 0.865, 0.918)])
def test_resnet_gflops_at_80px_match_the_paper(depth, base, dac, version):
    assert abs(gflops(f"resnet{depth}_{version}", "baseline") - base) < 0.002
    assert abs(gflops(f"resnet{depth}_{version}", "dac") - dac) < 0.002


def test_resnet20_flops_follow_the_written_convention_exactly():
    # conv: 2 per multiply-add; BN: 2 per element; GAP: 1 per element; dense: 2 per MAC + bias.
    h, macs, bn, dac_adds = 80, 3 * 16 * 9 * 80 * 80, 16 * 80 * 80, 0
    c_in = 16
    for c_out in (16, 32, 64):
        for _ in range(3):
            h_in, h = h, h // (2 if c_out != c_in else 1)
            macs += c_in * c_out * 9 * h * h + c_out * c_out * 9 * h * h
            bn += 2 * c_out * h * h
            dac_adds += c_in * c_out * h_in * h_in + c_out * c_out * h * h  # cache on the input grid
            c_in = c_out
    head = 64 * h * h + 2 * 64 * 10 + 10
    base = complexity(build_model("resnet20_v1"), (3, 80, 80))
    assert base["macs"] == macs + 640
    assert base["flops"] == 2 * macs + 2 * bn + head
    dac = complexity(build_model("resnet20_v1", "dac"), (3, 80, 80))
    assert dac["flops"] == base["flops"] + dac_adds + 640  # + the DAC head's 64*10 additions
    assert "aten::add" in base["skipped_ops"]  # residual sums: listed, not silently dropped


@pytest.mark.parametrize("m,n", [(7, 1), (16, 5), (64, 10)])
def test_dac_dense_growth_factors(m, n):
    torch.manual_seed(0)
    # baseline: the previous layer's shared bias (m of them), ReLU, then the dense layer
    base = nn.Sequential(nn.Linear(3, m), nn.ReLU(), nn.Linear(m, n))
    dac = nn.Sequential(nn.Linear(3, m, bias=False), DACLinear(m, n))
    cb, cd = complexity(base, (3,)), complexity(dac, (3,))
    weights = m * n
    params_factor = 1 + (cd["params"]["total"] - cb["params"]["total"]) / weights
    flops_factor = 1 + (cd["flops"] - cb["flops"]) / (2 * weights)
    assert params_factor == pytest.approx(2 - 1 / n)
    assert flops_factor == pytest.approx(1.5 - 1 / (2 * n))


@pytest.mark.parametrize("k", [1, 3])
def test_dac_conv_growth_factors_with_caching(k):
    m, n, s = 8, 12, 10
    base = nn.Sequential(nn.Conv2d(2, m, 1), nn.ReLU(), nn.Conv2d(m, n, k, padding=k // 2, bias=False))
    dac = nn.Sequential(nn.Conv2d(2, m, 1, bias=False), DACConv2d(m, n, k, padding=k // 2))
    cb, cd = complexity(base, (2, s, s)), complexity(dac, (2, s, s))
    conv_flops, conv_weights = 2 * m * n * k * k * s * s, m * n * k * k
    assert 1 + (cd["flops"] - cb["flops"]) / conv_flops == pytest.approx(1 + 0.5 / k**2 * (1 - 1 / n))
    param_growth = 1 + (cd["params"]["total"] - cb["params"]["total"]) / conv_weights
    assert param_growth == pytest.approx(1 + 1 / k**2 - 1 / (n * k**2))


def test_touched_positions_of_strided_convs():
    assert touched_positions(80, 3, 2, 1) == 80  # 3x3 stride 2 reads every input position
    assert touched_positions(80, 1, 2, 0) == 40  # 1x1 stride 2 reads every other one
    assert touched_positions(5, 3, 1, 0) == 5


@pytest.mark.parametrize("variant", ["baseline", "dac"])
def test_macs_agree_with_torch_flop_counter(variant):
    # FlopCounterMode counts conv and matmul FLOPs (2 per multiply-add), nothing else: our MACs.
    model = build_model("resnet20_v2", variant, num_classes=7)
    for m in model.modules():
        if isinstance(m, (DACConv2d, DACLinear)):
            m.impl = "chunked"  # the pure-PyTorch path, whose convs and einsums torch can see
    counts = complexity(model, (3, 16, 16))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 16, 16))
    assert counter.get_total_flops() == 2 * counts["macs"]


def test_complexity_leaves_the_model_as_it_was():
    model = build_model("resnet20_v1", "dac").train()
    model[1].eval()
    threads = torch.get_num_threads()
    out = complexity(model, (3, 8, 8))
    assert model.training and not model[1].training and torch.get_num_threads() == threads
    assert all("forward" not in vars(m) for m in model.modules())  # stand-ins removed
    assert set(out) >= {"params", "macs", "flops", "skipped_ops", "flops_by_operator"}


def test_count_cli_prints_table_with_ratios_fast():
    t0 = time.perf_counter()
    code, out, err = run_cli(["count", "--model", "resnet20_v2", "--variant", "dac", "--input-size", "80"])
    assert code == 0, err
    assert time.perf_counter() - t0 < 5
    assert "0.5420" in out and "0.5093" in out and "1.110" in out and "aten::add" in out


def test_count_cli_json_and_compare_variants():
    code, out, err = run_cli(["count", "--model", "vgg14_32", "--compare-variants", "--json", "--variant", "mba",
                              "--variant-option", "K=2"])
    assert code == 0, err
    doc = json.loads(out)
    assert {"baseline", "dac", "preact", "mba"} <= set(doc["variants"])
    assert doc["variants"]["dac"]["vs_baseline"]["params"] > 1.05
    assert 1.9 < doc["variants"]["mba"]["vs_baseline"]["params"] < 2.1  # K=2 reached mba only


def test_count_cli_reads_a_recipe_and_rejects_bad_input(tmp_path):
    # ResNet32 v1 DAC on Imagenette (a cell of studies/dac_imagenet_subsets.yaml) as a recipe file
    recipe = tmp_path / "resnet32_v1_dac.yaml"
    recipe.write_text(f"extends: {RECIPES / 'base/dac_imagenette.yaml'}\nmodel: {{name: resnet32_v1, variant: dac}}\n")
    code, out, err = run_cli(["count", str(recipe), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input_shape"] == [3, 80, 80]
    assert abs(doc["variants"]["dac"]["flops"] / 1e9 - 0.918) < 0.002
    assert run_cli(["count"])[0] == 2
    assert run_cli(["count", "--model", "resnet20_v1", "--option", "width"])[0] == 2
    assert run_cli(["count", "--model", "resnet21_v1"])[0] == 2
