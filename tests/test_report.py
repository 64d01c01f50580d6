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

from tests.conftest import run_cli
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
    assert "## Groups" in md and "| group" in md and "quickstart_smoke" in md and "3 (3/0/0)" in md
    assert "## Runs (provenance)" in md
    docs = [json.loads(p.read_text()) for p in sorted(runs_dir.rglob("results.json"))]
    for d in docs:
        assert str(d["environment"]["git_revision"]) in md and d["environment"]["torch"] in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/curves.png" in links
    for link in links:
        assert not Path(link).is_absolute()
        assert_valid_png(out / link)
    assert "figures/test_acc_vs_flops.png" in links and "figures/test_acc_vs_params.png" in links
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
    assert "| 6M " in row and "| 12M " in row  # MACs and FLOPs shown when the results carry them
    for fig in ("curves.png", "test_acc_vs_flops.png", "test_acc_vs_params.png"):
        assert_valid_png(out / "figures" / fig)
        assert f"figures/{fig}" in md


def test_html_report_is_one_file(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    code, _, err = run_cli(["report", str(study), "--out", str(out), "--format", "html"])
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "cnn32_dac" in page


def test_history_of_one_run(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    path = runs_dir / "seed0" / "results.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    code, out, _ = run_cli(["report", str(path)])
    assert code == 0
    assert "test_acc" in out and "val_acc" in out
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
