"""`biasbench count` and `biasbench.count.complexity`: the DAC paper's figures and conventions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from biasbench.count import complexity, count_built, touched_positions
from biasbench.errors import UserError
from biasbench.layers.dac import DACConv2d, DACLinear
from biasbench.models import applicability, build_model, list_variants
from tests.conftest import one_line_error, run_cli, write_recipe


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


def test_count_cli_table_fits_80_columns_and_carries_the_counted_numbers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["count", "--model", "resnet20_v2", "--variant", "dac", "--input-size", "80"])
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    base = complexity(build_model("resnet20_v2"), (3, 80, 80))
    dac = complexity(build_model("resnet20_v2", "dac"), (3, 80, 80))
    (row,) = [line.split() for line in lines if line.startswith("dac ")]  # one plain line per variant
    assert row[4] == f"{dac['params']['total']:,}"
    assert float(row[5]) == pytest.approx(dac["params"]["total"] / base["params"]["total"], abs=5e-4)
    assert float(row[7]) == pytest.approx(dac["flops"] / base["flops"], abs=5e-4)
    assert any("aten::add x9" in line for line in lines)  # residual sums: listed as not counted


def _builds(model: str, variant: str) -> bool:
    try:
        with torch.device("meta"):  # nothing allocated: only whether it builds
            build_model(model, variant)
    except UserError:
        return False
    return True


def test_count_cli_json_and_compare_variants_shows_only_what_applies():
    code, out, err = run_cli(["count", "--model", "vgg14_32", "--compare-variants", "--json", "--variant", "mba",
                              "--variant-option", "K=2"])
    assert code == 0, err
    doc = json.loads(out)
    applies = {v for v, cell in applicability("vgg14_32").items() if cell == "yes"}
    builds = {v for v in list_variants() if _builds("vgg14_32", v)}  # what build_model accepts
    assert set(doc["variants"]) == applies == builds and "dmb" not in builds
    assert set(doc["not_applicable"]) == set(list_variants()) - builds
    assert "model `vgg14_32` has none" in doc["not_applicable"]["dmb"]
    assert doc["variants"]["dac"]["vs_baseline"]["params"] > 1.05
    assert 1.9 < doc["variants"]["mba"]["vs_baseline"]["params"] < 2.1  # K=2 reached mba only


def test_count_cli_reads_a_recipe_and_rejects_bad_input(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"model": {"name": "resnet32_v1", "variant": "dac"},
                                                "data": {"name": "imagenette", "options": {"image_size": 80}}})
    code, out, err = run_cli(["count", str(recipe), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input_shape"] == [3, 80, 80]  # from the data set's registration, without its files
    assert abs(doc["variants"]["dac"]["flops"] / 1e9 - 0.918) < 0.002
    one_line_error(*run_cli(["count"])[::2], "nothing to count")
    one_line_error(*run_cli(["count", "--model", "resnet20_v1", "--option", "width"])[::2], "key=value")
    one_line_error(*run_cli(["count", "--model", "resnet21_v1"])[::2], "unknown model")


@pytest.mark.parametrize("args,words", [
    (["--model", "cnn", "--features", "14"], ["reads images", "14"]),
    (["--model", "mlp", "--input-size", "32"], ["--input-size", "--features"]),
    (["--model", "mlp"], ["--features"]),
    (["--model", "vit_tiny_patch4", "--input-size", "30"], ["not divisible by patch"]),
    (["--model", "resnet20_v1", "--variant", "dmb", "--variant-option", "num_biases=4"], ["now `K`"]),
    (["--model", "cnn", "--variant", "dmb"], ["second conv of residual blocks", "`cnn` has none"]),
])
def test_count_refuses_impossible_shapes_and_pairs_up_front(args, words):
    code, _, err = run_cli(["count", *args])
    one_line_error(code, err, *words)


def test_counting_runs_on_meta_tensors_so_any_input_size_is_counted():
    """`--input-size 100000` used to allocate 120 GB of activations; on meta nothing is allocated,
    and the count scales exactly as the convention says (every conv, BN and the pooling by side^2)."""
    def flops(side: int) -> int:
        code, out, err = run_cli(["count", "--model", "cnn", "--input-size", str(side), "--json"])
        assert code == 0, err
        return json.loads(out)["variants"]["baseline"]["flops"]

    head = 2 * 128 * 10 + 10  # the dense layer after pooling does not grow with the image
    assert flops(100_000) - head == (flops(1000) - head) * 10_000


@pytest.mark.parametrize("name,variant,shape,options", [
    ("resnet20_v1", "dac", (3, 16, 16), {}), ("vit_tiny_patch4", "raa", (3, 8, 8), {"patch": 2, "dim": 8,
                                                                                    "depth": 1, "heads": 2}),
    ("resnet_s", "dmb", (3, 8, 8), {"width": 4}),
    ("multitask", "baseline", (9,), {"base_options": {"depth": 1, "width": 8}}),  # reads task ids: real fallback
])
def test_meta_count_equals_the_count_of_the_real_model(name, variant, shape, options):
    built = count_built(lambda: build_model(name, variant, in_channels=shape[0], input_shape=shape, **options), shape)
    real = complexity(build_model(name, variant, in_channels=shape[0], input_shape=shape, **options), shape)
    assert built == real
    assert real["flops"] > 0 and real["macs"] > 0
