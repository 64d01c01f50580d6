"""Every registered study analysis (study/analyses/, one file each) reads its example options,
names only keys the study has, computes and renders (Markdown, HTML, its figure files) on the DAC
SGEMM smoke study: its cells as `sweep --smoke` plans them, with results files the test writes
(losses that fall with width, a failed and a diverged run), so no training is needed."""

from __future__ import annotations

import dataclasses
import json

import matplotlib.image
import pytest
import yaml

from biasbench import render
from biasbench.fsutil import atomic_write_json
from biasbench.study import analyses, load_study
from biasbench.study.manifest import Manifest
from biasbench.study.report import write_study_report
from tests.conftest import REPO
from tests.test_study_report import _doc

REGISTERED = [a.name for a in analyses.ordered()]


def _smoke_result(cell, seed: int) -> tuple[str, list[float], int, float]:
    """(status, per-epoch test loss, params, FLOPs): lower with more units, DAC a little lower."""
    v = cell.values
    units, depth = v["units"], v["model.options.depth"]
    if (v["arm"], units, depth, seed) == ("base", 6, 3, 1):
        return "completed", [0.5] * 3, 100, 200.0  # fails the smoke form's criterion (val_loss above 0.3)
    if (v["model.options.shape"], v["arm"], units, depth, seed) == ("pyramidal", "dac", 6, 2, 0):
        return "diverged", [0.2], 100, 200.0
    level = 0.02 + 1.0 / units + 0.01 * depth - (0.01 if v["arm"] == "dac" else 0.0) + 0.002 * seed
    params = units * units * depth * (2 if v["arm"] != "base" else 1)
    return "completed", [3 * level, 1.5 * level, level], params, 2.0 * params


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """The smoke study's folder, its `analysis:` the example of every registered analysis."""
    tmp = tmp_path_factory.mktemp("smoke")
    doc = yaml.safe_load((REPO / "studies/dac_sgemm.yaml").read_text())
    doc["recipe"] = str(REPO / "studies" / doc["recipe"])
    doc["analysis"] = {a.name: a.example for a in analyses.ordered()}
    doc["smoke"].pop("analysis", None)
    (tmp / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(tmp / "study.yaml", smoke=True)  # refuses a key the study lacks
    out = tmp / "out"
    manifest = Manifest.for_study(study, out, "local")
    for cell in study.cells:
        for _, seed in cell.seeds():
            status, curve, params, flops = _smoke_result(cell, seed)
            atomic_write_json(out / cell.name / f"seed{seed}" / "results.json",
                              _doc(cell, seed, status, curve, "loss", params, flops))
            manifest.update(f"{cell.name}/seed{seed}", status=status)
    manifest.save(force=True)
    return study, out


def test_every_registration_declares_what_the_study_file_and_the_report_need():
    assert REGISTERED and len(set(REGISTERED)) == len(REGISTERED)
    for a in analyses.ordered():
        assert dataclasses.is_dataclass(a.spec) and a.title and callable(a.compute) and callable(a.render)
        spec = a.read(a.example)
        assert set(a.keys(spec)) >= set(getattr(spec, "where", {}))  # the `where` keys are study keys too


def test_the_keys_an_analysis_names_come_from_its_spec_fields():
    table = analyses.ANALYSES["table"]
    spec = table.read({"rows": ["a", "b"], "columns": "c", "where": {"d": 1}, "metric": "test_e"})
    assert sorted(table.keys(spec)) == ["a", "b", "c", "d"]  # not the metric: a metric is not a study key
    pairs = analyses.ANALYSES["pairs"]
    assert sorted(pairs.keys(pairs.read({"by": "v", "baseline": "x", "match": ["m"]}))) == ["m", "v"]


@pytest.mark.parametrize("name", REGISTERED)
def test_each_registered_analysis_computes_and_renders_on_the_smoke_study(smoke_study, name, tmp_path):
    study, out = smoke_study
    analysis = analyses.ANALYSES[name]
    assert name in study.analyses  # read and checked by the study loader (sweep's checks)
    runs = analyses.load_study_runs(out)
    numbers = analysis.compute(runs, runs.analyses[name])
    blocks = analysis.render(runs, runs.analyses[name], numbers, tmp_path)
    assert blocks and analyses.NOTHING not in blocks, blocks  # the smoke study gives it something to show
    figures = [payload[1] for kind, payload in blocks if kind == "img"]
    for png in figures:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).ndim == 3
    md, html = render.markdown(blocks, tmp_path), render.html(blocks, name, tmp_path)
    assert md.count("![") == len(figures) and html.count("data:image/png;base64,") == len(figures)
    assert md.count("\n|") >= 2 * sum(kind == "table" for kind, _ in blocks)  # each table has a header and a rule
    json.dumps(dataclasses.asdict(numbers) if dataclasses.is_dataclass(numbers) else
               [dataclasses.asdict(n) for n in numbers], default=str)  # its numbers go to study_report.json


def test_the_study_report_has_a_section_per_registered_analysis_in_order(smoke_study, tmp_path):
    _, out = smoke_study
    target = write_study_report(out, tmp_path / "rep")
    md = target.read_text()
    at = [md.index(f"## {a.title}\n") for a in analyses.ordered()]
    assert at == sorted(at)
    for link in (line for line in md.splitlines() if line.startswith("![")):
        assert (tmp_path / "rep" / link[link.index("](") + 2:-1]).is_file()
    numbers = json.loads((tmp_path / "rep" / "study_report.json").read_text())
    assert list(numbers) == REGISTERED and all(numbers[name] for name in REGISTERED)
