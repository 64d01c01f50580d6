"""The DAC paper's experiments as studies (studies/dac_*.yaml): they cover the paper's grids, load
in full and smoke form, build every model, and keep the protocol in the base recipes; the
remaining DAC recipes (the short name, the smoke pair) load and build."""

from __future__ import annotations

import pytest

from biasbench.count import data_shape
from biasbench.data import dataset_info
from biasbench.models import build_model
from biasbench.recipe import load_raw, load_recipe
from biasbench.study import load_study
from tests.conftest import RECIPES, REPO

STUDIES = sorted((REPO / "studies").glob("*.yaml"))
DAC_STUDIES = [p for p in STUDIES if p.name.startswith("dac_")]
RECIPE_FILES = [RECIPES / "resnet32_dac.yaml"] + sorted(RECIPES.glob("smoke_*_digits.yaml"))


def _build(recipe):
    shape, outputs = data_shape(recipe.data)
    return build_model(recipe.model.name, recipe.model.variant, num_classes=outputs, in_channels=shape[0],
                       input_shape=shape, variant_options=recipe.model.variant_options, **recipe.model.options)


def _cells(name: str, smoke: bool = False) -> dict[str, object]:
    return {c.name: c for c in load_study(REPO / "studies" / name, smoke=smoke).cells}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.name == "dnrt_activations.yaml" else p
                                  for p in STUDIES], ids=lambda p: p.name)  # that one: 15.2 s of CPU, 54 s at load 13
def test_study_header_smoke_form_and_models(path):
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert f"biasbench sweep studies/{path.name}" in header and "--smoke" in header
    assert "Reproduces:" in header and "Time:" in header
    study, smoke = load_study(path), load_study(path, smoke=True)
    assert smoke.run_count() < study.run_count()
    if path.name.startswith("real_"):  # the real-data short forms (make test-real): a subset of the real files
        assert all(c.recipe.data.name in ("mnist", "fashion_mnist") and c.recipe.data.root and
                   c.recipe.data.options.get("train_size") for c in smoke.cells)
    else:
        assert all(dataset_info(c.recipe.data.name).bundled for c in smoke.cells)  # runs offline, no data.root
    built = set()
    for cell in study.cells + smoke.cells:  # every distinct model of both forms builds
        key = repr((cell.recipe.model, cell.recipe.data.name, cell.recipe.data.options))
        if key not in built:
            built.add(key)
            _build(cell.recipe)


def test_resnet_study_is_table_1_and_figure_6():
    cells = _cells("dac_resnet_cifar.yaml")
    assert len(cells) == 32
    for ds in ("cifar10", "cifar100"):
        for layers in (20, 32, 44, 56):
            for v in ("v1", "v2"):
                for variant in ("baseline", "dac"):
                    cell = cells[f"dataset={ds},layers={layers},version={v},variant={variant}"]
                    assert cell.recipe.model.name == f"resnet{layers}_{v}" and cell.recipe.data.name == ds
                    assert cell.recipe.train.replicates == 5
    study = load_study(REPO / "studies/dac_resnet_cifar.yaml")
    assert study.analyses["table"].estimator == "min_mean"  # Table 1: min over epochs of the mean error
    assert study.analyses["pairs"].estimator == "robust"  # Figure 6: the robust best estimate


def test_vgg_imagenet_isic_and_ablation_studies_cover_the_paper():
    vgg = _cells("dac_vgg_cifar.yaml")
    assert {(c.recipe.model.name, c.recipe.model.variant, c.recipe.data.name) for c in vgg.values()} == {
        (m, v, d) for m in ("vgg20_16", "vgg14_32") for v in ("baseline", "dac") for d in ("cifar10", "cifar100")}
    sub = _cells("dac_imagenet_subsets.yaml")
    assert len(sub) == 16 and all(c.recipe.data.options["image_size"] == 80 for c in sub.values())
    assert {c.recipe.data.name for c in sub.values()} == {"imagenette", "imagewoof"}
    isic = _cells("dac_isic2019.yaml")
    assert {(c.recipe.model.name, c.recipe.model.variant) for c in isic.values()} == {
        (f"resnet{d}_v1", v) for d in (20, 32) for v in ("baseline", "dac")}
    abl = [c.recipe for c in _cells("dac_ablations_cifar.yaml").values()]
    preact = {(r.data.name, r.model.name) for r in abl if r.model.variant == "preact"}
    assert preact == {(d, f"resnet20_{v}") for d in ("cifar10", "cifar100") for v in ("v1", "v2")}
    mba = {r.model.variant_options["K"] for r in abl if r.model.variant == "mba"}
    assert mba == {2, 4, 8} and all(r.data.name == "cifar100" for r in abl if r.model.variant == "mba")
    wide = {r.model.variant for r in abl if r.model.options.get("width") == 4}
    assert wide == {"baseline", "dac"}


def test_sgemm_study_has_the_papers_ranges_and_three_arms():
    cells = load_study(REPO / "studies/dac_sgemm.yaml").cells
    depths = {c.values["model.options.depth"] for c in cells}
    assert min(depths) == 5 and max(depths) == 16  # "from 5 to 16 layers before the last one"
    rect = {(c.values["arm"], c.recipe.model.options["width"]) for c in cells
            if c.values["model.options.shape"] == "rectangular"}
    # Figure 3's rectangular groups 25/50/100/200 for DAC; `base` has the DAC twin's units, and
    # `wide` is solved by `match:` to DAC's parameter count: about sqrt(2) more units than `base`.
    assert {w for a, w in rect if a == "dac"} == {25, 50, 100, 200}
    dac_width = {(c.values["model.options.depth"], c.values["units"]): c.recipe.model.options["width"]
                 for c in cells if c.values["arm"] == "dac" and c.values["model.options.shape"] == "rectangular"}
    for c in cells:
        if c.values["arm"] == "wide" and c.values["model.options.shape"] == "rectangular":
            twin = dac_width[c.values["model.options.depth"], c.values["units"]]
            assert abs(c.recipe.model.options["width"] - twin) <= 0.05 * twin
    assert {w for a, w in rect if a == "base"} == {18, 35, 71, 141}
    assert {c.values["model.options.shape"] for c in cells} == {"rectangular", "pyramidal"}
    assert all(c.recipe.train.replicates == 5 and c.recipe.data.name == "sgemm" for c in cells)
    smoke = load_study(REPO / "studies/dac_sgemm.yaml", smoke=True)
    assert smoke.run_count() >= 24  # the acceptance test's study


def test_paper_protocol_lives_in_the_base_recipe():
    cell = _cells("dac_resnet_cifar.yaml")["dataset=cifar100,layers=56,version=v2,variant=dac"]
    recipe = cell.recipe
    protocol = (recipe.optim.name, recipe.optim.lr, recipe.optim.momentum, recipe.train.batch_size)
    assert protocol == ("sgd", 0.1, 0.9, 128)
    assert recipe.optim.l2 > 0 and recipe.optim.bias_l2 == 0 and recipe.data.val_folds == 5
    assert recipe.data.augment == "crop_flip" and recipe.data.root == "data/cifar100"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_remaining_dac_recipes_and_their_smoke_forms_build(path):
    _build(load_recipe(path))
    if load_raw(path).get("smoke"):
        _build(load_recipe(path, smoke=True))
    if path.name == "resnet32_dac.yaml":
        r = load_recipe(path)
        assert (r.model.name, r.model.variant, r.data.name) == ("resnet32_v2", "dac", "cifar10")
        assert "biasbench train recipes/resnet32_dac.yaml" in path.read_text()
