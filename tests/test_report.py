"""`biasbench report` from real smoke runs: tables, valid figures, provenance, history view."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from tests.conftest import assert_fits, one_line_error, output_at, run_cli
from tests.fake_runs import correctness, template_doc, write_run
from tests.smoke_runs import smoke_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def study(runs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real runs plus edited copies: a wider model and a `dac` variant of both, with FLOP
    counts as the count issue will record them, so both complexity figures have two lines."""
    root = tmp_path_factory.mktemp("study")
    docs = [json.loads(p.read_text()) for p in sorted(runs_dir.rglob("results.json"))]
    for width, scale in ((16, 1.0), (32, 3.0)):
        for variant, gain, extra in (("baseline", 0.0, 1.0), ("dac", 0.004, 1.055)):
            for d in docs:
                e = copy.deepcopy(d)
                e["recipe"]["model"]["options"]["width"] = width
                e["recipe"]["model"]["variant"] = variant
                e["name"] = f"cnn{width}_{variant}"
                e["params"]["total"] = int(d["params"]["total"] * scale * extra)
                e["complexity"] = {"macs": 2.0e6 * scale * extra, "flops": 4.0e6 * scale * extra}
                for row in [*e["history"], e["final"]]:
                    row["test_acc"] = min(1.0, row["test_acc"] + gain + 0.002 * (scale - 1))
                path = root / e["name"] / f"seed{e['seed']}" / "results.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(e))
    return root


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.asarray(img)[..., :3].std()) > 0.01  # not a blank, single-colour canvas


def test_markdown_report_from_real_runs(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    code, stdout, err = run_cli(["report", str(runs_dir), "--out", str(out)])
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert "## Groups" in md and "| group" in md
    row = next(line for line in md.splitlines() if line.startswith("| quickstart_smoke "))
    assert [c.strip() for c in row.split("|")[2:4]] == ["3", "3/0/0"]  # runs; ok/div/int
    assert "## Runs (provenance)" in md
    docs = [json.loads(p.read_text()) for p in sorted(runs_dir.rglob("results.json"))]
    for d in docs:
        assert str(d["environment"]["git_revision"]) in md and d["environment"]["torch"] in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/curves.png" in links
    for link in links:
        assert not Path(link).is_absolute()
        assert_valid_png(out / link)
    assert {"figures/test_acc_vs_flops.png", "figures/test_acc_vs_params.png", "figures/test_acc_estimates.png"
            } <= set(links)
    assert json.loads((out / "compare.json").read_text())["groups"][0]["runs"] == 3


def test_report_with_variants_and_flops(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(study), "--out", str(out), "--baseline", "cnn16_baseline"])
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert "## Against cnn16_baseline" in md
    for name in ("cnn16_dac", "cnn32_baseline", "cnn32_dac"):
        assert name in md
    row = next(line for line in md.splitlines() if line.startswith("| cnn32_baseline "))
    assert "| 12M " in row  # FLOPs shown when the results carry them
    for fig in ("curves.png", "test_acc_estimates.png", "test_acc_vs_flops.png", "test_acc_vs_params.png"):
        assert_valid_png(out / "figures" / fig)
        assert f"figures/{fig}" in md


def test_html_report_is_one_file(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(study), "--out", str(out), "--format", "html"])
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page and "cnn32_dac" in page


def test_history_of_one_run(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    path = runs_dir / "seed0" / "results.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    code, out, _ = run_cli(["report", str(path)])
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("ep "))
    assert header.split() == ["ep", "lr", "tr", "loss", "tr", "acc", "va", "loss", "va", "acc", "te", "loss", "te",
                              "acc", "s"]
    for row in doc["history"]:
        assert f"{100 * row['test_acc']:.2f}%" in out
    code, out, _ = run_cli(["report", str(runs_dir), "--history"])
    assert code == 0 and out.count("quickstart_smoke · seed") == 3


@pytest.mark.parametrize(
    "extra,word", [([], "--out DIR"), (["--out", "OUT", "--format", "pdf"], "md or html")]
)
def test_bad_report_input(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], word: str
) -> None:
    args = ["report", str(runs_dir), *[str(tmp_path / "o") if a == "OUT" else a for a in extra]]
    code, _, err = run_cli(args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and word in lines[0]


# ---------------------------------------------------------------------------------------------
# Figures and tables agree; figures a reviewer accepts.
# ---------------------------------------------------------------------------------------------

N = 359
VARIANTS = {"baseline": (0.0, 1.0), "dac": (0.012, 1.1), "mba": (0.006, 3.9)}  # accuracy gain, size factor


def three_by_three(root: Path, template: dict[str, Any], *, top: float = 0.93, flops: float = 9.1e5,
                   seeds: int = 3) -> Path:
    """3 variants x `seeds` seeds of a 6-epoch classifier, with predictions and a validation curve
    whose best epoch is 4 (so the robust window is 2..6, min_mean picks the best test epoch)."""
    for variant, (gain, size) in VARIANTS.items():
        for seed in range(seeds):
            peak = top + gain + 0.004 * seed
            accs = [min(1.0, peak - d) for d in (0.20, 0.08, 0.03, 0.0, 0.005, 0.01)]
            write_run(root, template, name=f"smoke_{variant}", seed=seed, variant=variant,
                      correct=correctness(seed * 7 + len(variant), 6, N, accs),
                      val_acc=[0.7, 0.8, 0.85, 0.9, 0.88, 0.86],
                      complexity={"flops": flops * size, "macs": flops * size / 2}, params=int(35674 * size))
    return root


def table_cells(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `## heading` as {first cell: {header: cell}}."""
    lines = md.split(f"## {heading}\n", 1)[1].strip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(headers, cells, strict=True))
    return out


def figure_data(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / "figures" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def template(runs_dir: Path) -> dict[str, Any]:
    return template_doc(runs_dir)


@pytest.mark.parametrize("estimator", ["final", "robust", "min_mean"])
def test_figures_and_tables_agree(template: dict[str, Any], tmp_path: Path, estimator: str) -> None:
    root = three_by_three(tmp_path / "runs", template)
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(root), "--out", str(out), "--estimator", estimator])
    assert code == 0, err
    md = (out / "report.md").read_text()
    groups = table_cells(md, "Groups")
    assert f"estimator: {estimator}" in md and len(groups) == 3
    estimates = {p["group"]: p for p in figure_data(out, "test_acc_estimates")["points"]}
    flops = {p["group"]: p for p in figure_data(out, "test_acc_vs_flops")["points"]}
    curves = {g["group"]: g for g in figure_data(out, "curves")["groups"]}
    for name in ("test_acc_estimates", "test_acc_vs_flops", "test_acc_vs_params", "curves"):
        assert figure_data(out, name)["estimator"] == estimator
    summary = {g["label"]: g["estimate"] for g in json.loads((out / "compare.json").read_text())["groups"]}
    for label, row in groups.items():
        shown, se = row["test_acc ± SE"].split(" ± ")
        point, est = estimates[label], summary[label]
        assert f"{point['value']:.2f}%" == shown  # the figure plots the table's number...
        assert f"{100 * est['summary']['se']:.2f}%" == se
        assert point["value"] == pytest.approx(100 * est["value"])  # ...which is compare's, unrounded
        assert point["ci"] == pytest.approx([100 * c for c in est["summary"]["ci"]])  # the 95% CI of the SE
        assert flops[label]["value"] == point["value"] and curves[label]["estimate"]["value"] == point["value"]
        window = point["window"]
        if estimator == "robust":
            assert row["e* (window)"].endswith(f"({window[0]}-{window[1]})")
        elif estimator == "min_mean":
            assert row["epoch"] == str(window[0])
        else:
            assert f"estimator: final (epoch {window[0]})" in md
        assert curves[label]["estimate"]["window"] == window == est["window"]
    assert json.loads((out / "compare.json").read_text())["estimator"] == estimator
    assert {p["group"]: p["color"] for p in flops.values()} == {p["group"]: p["color"] for p in estimates.values()}
    assert {g["group"]: g["color"] for g in curves.values()} == {p["group"]: p["color"] for p in estimates.values()}
    assert estimates["smoke_baseline"]["color"] == "tab:orange" and estimates["smoke_dac"]["color"] == "tab:blue"


def test_robust_window_is_stated_as_used(template: dict[str, Any], tmp_path: Path) -> None:
    for seed in range(2):  # two epochs only: the 5-epoch window around e* = 2 is clipped to 1..2
        write_run(tmp_path / "runs", template, name="short", seed=seed, correct=correctness(seed, 2, N, [0.8, 0.9]),
                  val_acc=[0.8, 0.9])
    out = tmp_path / "rep"
    assert run_cli(["report", str(tmp_path / "runs"), "--out", str(out), "--estimator", "robust"])[0] == 0
    assert table_cells((out / "report.md").read_text(), "Groups")["short"]["e* (window)"] == "2 (1-2)"
    assert figure_data(out, "curves")["groups"][0]["estimate"]["window"] == [1, 2]


def test_limits_units_and_one_replicate(template: dict[str, Any], tmp_path: Path) -> None:
    root = three_by_three(tmp_path / "runs", template, top=0.994, flops=2.0e9)  # near 100%: CIs reach past it
    write_run(root, template, name="single", seed=0, variant="preact", correct=correctness(0, 6, N, [0.99] * 6),
              val_acc=[0.9] * 6, complexity={"flops": 2.5e9}, params=2_500_000)
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(root), "--out", str(out), "--baseline", "smoke_baseline"])
    assert code == 0, err
    flops, params = figure_data(out, "test_acc_vs_flops"), figure_data(out, "test_acc_vs_params")
    assert flops["x_unit"] == "GFLOPs" and params["x_unit"] == "parameters (M)"
    assert all(1 <= p["x"] < 1000 for p in flops["points"])  # plain numbers in the unit: no 1e9, no offset
    assert any(p["ci"] and p["ci"][1] > 100 for p in flops["points"])  # the data would go past 100%...
    assert flops["axes"][0]["ylim"][1] <= 100 and figure_data(out, "test_acc_estimates")["axes"][0]["xlim"][1] <= 100
    for ax in figure_data(out, "curves")["axes"]:  # ...the axes never do
        if "accuracy" in ax["title"]:
            assert 0 <= ax["ylim"][0] and ax["ylim"][1] <= 100
    single = next(p for p in flops["points"] if p["group"] == "single")
    assert single["n"] == 1 and single["ci"] is None and "n = 1, no bar: single" in flops["note"]
    assert all(p["ci"] for p in flops["points"] if p["group"] != "single")  # a bar whenever n >= 2
    small = three_by_three(tmp_path / "small", template, flops=1.0e5)
    assert run_cli(["report", str(small), "--out", str(tmp_path / "r2")])[0] == 0
    assert figure_data(tmp_path / "r2", "test_acc_vs_flops")["x_unit"] == "kFLOPs"
    assert figure_data(tmp_path / "r2", "test_acc_vs_params")["x_unit"] == "parameters (k)"


def test_report_into_an_unwritable_folder(runs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import biasbench.fsutil

    out = tmp_path / "rep"
    assert run_cli(["report", str(runs_dir), "--out", str(out)])[0] == 0
    before = (out / "report.md").read_text()

    def read_only(*args: Any, **kwargs: Any) -> Any:  # what mkstemp meets in a read-only folder (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(biasbench.fsutil.tempfile, "mkstemp", read_only)
    code, _, err = run_cli(["report", str(runs_dir), "--out", str(out)])
    one_line_error(code, err, str(out), "Permission denied", "--out")
    assert (out / "report.md").read_text() == before  # nothing written before is lost


def test_history_fits_80_columns_and_has_json(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["report", str(runs_dir), "--history"]
    _, wide, _ = output_at(args, 300, monkeypatch)
    code, narrow, _ = output_at(args, 80, monkeypatch)
    assert code == 0
    assert_fits(narrow, 80, wide=wide)
    code, out, _ = run_cli([*args, "--json", "-"])
    docs = json.loads(out)
    assert code == 0 and len(docs) == 3 and docs[0]["history"][0]["epoch"] == 1


def test_report_and_compare_fit_80_columns(template: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = three_by_three(tmp_path / "runs", template)
    for args in (["compare", str(root), "--estimator", "robust"],
                 ["report", str(root), "--out", str(tmp_path / "rep")]):
        _, wide, _ = output_at(args, 300, monkeypatch)
        code, narrow, err = output_at(args, 80, monkeypatch)
        assert code == 0, err
        assert_fits(narrow, 80, wide=wide)


@pytest.mark.slow
def test_report_of_real_smoke_runs_of_three_variants(tmp_path: Path) -> None:
    """Real training: the quickstart's smoke form as baseline, dac and mba, 3 seeds each."""
    from biasbench.recipe import load_recipe
    from biasbench.trainer import train_recipe
    from tests.smoke_runs import ROOT

    for variant in VARIANTS:
        recipe = load_recipe(ROOT / "recipes/quickstart.yaml", [f"output.dir={tmp_path / 'runs'}",
                             "train.replicates=3", "output.checkpoint=false", f"model.variant={variant}",
                             f"output.name=smoke_{variant}"], smoke=True)
        train_recipe(recipe, torch.device("cpu"), overwrite=True)
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(tmp_path / "runs"), "--out", str(out), "--estimator", "robust"])
    assert code == 0, err
    groups = table_cells((out / "report.md").read_text(), "Groups")
    estimates = {p["group"]: p for p in figure_data(out, "test_acc_estimates")["points"]}
    assert set(groups) == set(estimates) == {f"smoke_{v}" for v in VARIANTS}
    for label, row in groups.items():
        assert row["test_acc ± SE"].startswith(f"{estimates[label]['value']:.2f}%")
    for png in (out / "figures").glob("*.png"):
        assert_valid_png(png)


def test_a_new_report_folder_appears_whole_or_not_at_all(runs_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills up after the figures, at compare.json (seen on a small tmpfs): no half
    # report is left, and the line names the file as the user would look for it.
    import errno

    import biasbench.report

    real = biasbench.report.atomic_write_json

    def full_at_compare_json(path: Path, obj: Any) -> None:
        if Path(path).name == "compare.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(biasbench.report, "atomic_write_json", full_at_compare_json)
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(runs_dir), "--out", str(out)])
    one_line_error(code, err, str(out / "compare.json"), "(ENOSPC)", "free some space")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its hidden draft
    monkeypatch.setattr(biasbench.report, "atomic_write_json", real)
    assert run_cli(["report", str(runs_dir), "--out", str(out)])[0] == 0
    assert (out / "report.md").is_file() and (out / "figures" / "curves.png").is_file()
