"""`match:` capacity-matched cells: solved on the meta device, within the tolerance, refused in one
line where no integer meets it; `sweep --dry-run` prints the solved values and the mismatch."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
import yaml

from biasbench.models import build_model
from biasbench.study import load_study
from tests.conftest import assert_fits, one_line_error, output_at, run_cli, tiny_recipe, write_recipe

WIDTHS = (128, 256, 512, 1024, 2048)


def match_study(tmp_path: Path, widths=WIDTHS, depth: int = 3, **match) -> Path:
    """A DAC MLP per width and a baseline whose width is solved to the DAC cell's parameters."""
    recipe = tiny_recipe(tmp_path)
    recipe["model"]["options"]["depth"] = depth
    write_recipe(tmp_path / "r.yaml", recipe)
    rows = []
    for w in widths:
        rows.append({"arm": "dac", "units": w, "model.variant": "dac", "model.options.width": w})
        rows.append({"arm": "base", "units": w, "model.variant": "baseline", "model.options.width": "match"})
    spec = {"solve": "model.options.width", "cells": {"arm": "base"}, "to": {"arm": "dac"}, "share": ["units"],
            **match}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", "replicates": 1, "zip": [rows], "match": spec},
                                   sort_keys=False))
    return path


def real_params(cell, in_features: int = 64, outputs: int = 10) -> int:
    """Parameters of the cell's model built for real (not on meta), counted one tensor at a time."""
    m = cell.recipe.model
    net = build_model(m.name, m.variant, num_classes=outputs, in_channels=in_features, input_shape=(in_features,),
                      variant_options=m.variant_options, **m.options)
    return sum(p.numel() for p in net.parameters())


def test_baseline_matched_to_dac_over_five_widths_within_one_percent(tmp_path):
    study = load_study(match_study(tmp_path))
    assert len(study.matches) == 5
    for m in study.matches:
        base, dac = study.cell(m.cell_name), study.cell(m.reference_name)
        assert base.values["units"] == dac.values["units"] and base.recipe.model.variant == "baseline"
        assert base.recipe.model.options["width"] == m.value  # the solved width is the one that trains
        got, want = real_params(base), real_params(dac)
        assert (got, want) == (m.params, m.reference_params)  # the meta count is the real one
        assert abs(got - want) <= 0.01 * want
        # the nearest integer: one unit more or less is no closer
        for other in (m.value - 1, m.value + 1):
            net = build_model("mlp", "baseline", num_classes=10, in_channels=64, input_shape=(64,),
                              **{**base.recipe.model.options, "width": other})
            assert abs(sum(p.numel() for p in net.parameters()) - want) >= abs(got - want)
    # names come from the values as written: the solved width does not rename a cell
    assert [c.name for c in study.cells][:2] == ["arm=dac,units=128", "arm=base,units=128"]


def test_solving_allocates_no_tensor(tmp_path, monkeypatch):
    # Every probe model is on the meta device ...
    from biasbench import params

    seen = []
    real = params.count_by_role

    def spy(model, trainable_only=False):
        seen.append(all(p.is_meta for p in model.parameters()))
        return real(model, trainable_only)

    monkeypatch.setattr(params, "count_by_role", spy)
    load_study(match_study(tmp_path, widths=(128, 256)))
    assert len(seen) >= 4 and all(seen)
    # ... so a reference of 4e10 parameters (160 GB as float32) is matched in seconds, in little memory.
    monkeypatch.setattr(params, "count_by_role", real)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    study = load_study(match_study(tmp_path, widths=(100_000,), depth=5))
    assert time.monotonic() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    (m,) = study.matches
    assert m.reference_params > 4e10 and abs(m.mismatch) <= 0.01


def test_flops_matching_counts_flops(tmp_path):
    from biasbench.count import count_built

    study = load_study(match_study(tmp_path, widths=(256, 512), by="flops"))
    by_params = {m.cell_name: m.value for m in load_study(match_study(tmp_path, widths=(256, 512))).matches}
    for m in study.matches:
        counts = []
        for name in (m.cell_name, m.reference_name):
            r = study.cell(name).recipe.model
            counts.append(count_built(lambda r=r: build_model("mlp", r.variant, num_classes=10, in_channels=64,
                                                              input_shape=(64,), **r.options), (64,))["flops"])
        assert counts == [m.flops, m.reference_flops] and abs(counts[0] / counts[1] - 1) <= 0.01
        # A DAC layer holds a weight and an unshared bias per multiply-add and costs 3 FLOPs for
        # it (1.5 per parameter), a baseline layer 2 per weight: the FLOP-matched baseline is
        # narrower than the parameter-matched one, by about sqrt(1.5 / 2)
        assert m.value / by_params[m.cell_name] == pytest.approx((1.5 / 2) ** 0.5, rel=0.03)


def test_no_integer_within_tolerance_is_refused_in_one_line(tmp_path):
    # width 16: one unit moves the count by ~9%, so 1% cannot be met
    code, _, err = run_cli(["sweep", str(match_study(tmp_path, widths=(16,))), "--dry-run"])
    one_line_error(code, err, "the nearest, 13, is -4.34% off", "match.tolerance")
    assert load_study(match_study(tmp_path, widths=(16,), tolerance=0.05)).matches[0].value == 13


@pytest.mark.parametrize("change, words", [
    (lambda d: d["zip"][0][1].update({"model.options.width": 40}), ["gives it as 40", "write `match`"]),
    (lambda d: d["zip"][0][0].update({"model.options.width": "match"}), ["does not select it"]),
    (lambda d: d["match"].pop("share"), ["has 2 reference cells", "match.share"]),
    (lambda d: d["match"].update(solve="model.options.depth"), ["not a grid or zip key"]),
    (lambda d: d["match"].update(cells={"arm": "nope"}), ["selects no cell"]),
    (lambda d: d["match"].update(by="macs"), ["match.by", "one of params, flops"]),
    (lambda d: d["match"].update(tolerance=0), ["above 0"]),
])
def test_bad_match_is_refused_in_one_line(tmp_path, change, words):
    path = match_study(tmp_path, widths=(128, 256))
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, _, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, *words)


def test_dry_run_prints_solved_values_and_mismatch(tmp_path, monkeypatch):
    path = match_study(tmp_path)
    study = load_study(path)
    code, text, err = output_at(["sweep", str(path), "--dry-run"], 80, monkeypatch)
    assert code == 0, err
    assert_fits(text)
    for m in study.matches:
        row = next(line.split() for line in text.splitlines() if line.startswith(m.cell_name + " "))
        assert row[1] == str(m.value) and row[-1] == f"{m.mismatch:+.2%}"
    code, text, err = run_cli(["sweep", str(path), "--dry-run", "--json"])
    doc = json.loads(text)
    assert [(d["cell"], d["value"], d["params"]) for d in doc["matches"]] == \
        [(m.cell_name, m.value, m.params) for m in study.matches]
    assert all(abs(d["mismatch"]) <= 0.01 for d in doc["matches"])


def test_sgemm_study_solves_its_wide_arm():
    for smoke, tolerance in ((False, 0.05), (True, 0.15)):
        study = load_study(Path(__file__).parents[1] / "studies/dac_sgemm.yaml", smoke=smoke)
        wide = [c for c in study.cells if c.values["arm"] == "wide"]
        assert len(study.matches) == len(wide) > 0
        assert all(abs(m.mismatch) <= tolerance for m in study.matches)
        assert {m.cell_name for m in study.matches} == {c.name for c in wide}


def test_vgg_matched_study_widens_the_baseline_and_keeps_the_papers_study():
    repo = Path(__file__).parents[1]
    study = load_study(repo / "studies/dac_vgg_cifar_matched.yaml")
    solved = {(study.cell(m.cell_name).recipe.model.name, m.value) for m in study.matches}
    assert solved == {("vgg20_16", 17), ("vgg14_32", 34)} and all(abs(m.mismatch) <= 0.03 for m in study.matches)
    for m in study.matches:  # the solve holds for the models built for real (RGB input, 10 or 100 classes)
        classes = 100 if study.cell(m.cell_name).recipe.data.name == "cifar100" else 10
        counts = [real_params(study.cell(name), in_features=3, outputs=classes) for name in (m.cell_name,
                                                                                                m.reference_name)]
        assert counts == [m.params, m.reference_params]
    net = build_model("vgg20_16", "baseline", num_classes=10, in_channels=3, input_shape=(3, 32, 32), first=17)
    assert next(net.parameters()).shape[0] == 17  # `first` is the first conv's kernels
    from biasbench.study.rounds import check_comparisons

    for smoke in (False, True):  # DAC against the matched baseline, per data set and net
        check_comparisons(load_study(repo / "studies/dac_vgg_cifar_matched.yaml", smoke=smoke))
    paper = load_study(repo / "studies/dac_vgg_cifar.yaml")  # the reproduction: the paper's kernels
    assert not paper.matches and all("first" not in c.recipe.model.options for c in paper.cells)
