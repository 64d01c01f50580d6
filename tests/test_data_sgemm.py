"""SGEMM: the UCI CSV layout, log2 transforms, train-only normalisation, 70/15/15 split, targets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biasbench.data import build_data
from biasbench.data.sgemm import BINARY_INPUTS, LOG2_INPUTS
from biasbench.data.splits import fraction_split
from biasbench.errors import UserError
from biasbench.recipe import DataConfig
from tests.conftest import run_cli, tiny_recipe, write_recipe

HEADER = ["MWG", "NWG", "KWG", "MDIMC", "NDIMC", "MDIMA", "NDIMB", "KWI", "VWM", "VWN", "STRM", "STRN", "SA",
          "SB", "Run1 (ms)", "Run2 (ms)", "Run3 (ms)", "Run4 (ms)"]


def write_sgemm(root: Path, n: int = 200, header: list[str] = HEADER) -> list[dict[str, float]]:
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(n):
        row = {c: float(2 ** rng.integers(0, 7)) for c in LOG2_INPUTS}
        row.update({c: float(rng.integers(0, 2)) for c in BINARY_INPUTS})
        row.update({f"Run{k} (ms)": round(float(rng.uniform(10, 3000)), 2) for k in range(1, 5)})
        rows.append(row)
    root.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(f"{r[c]:g}" for c in header) for r in rows]
    (root / "sgemm_product.csv").write_text("\n".join(lines) + "\n")
    return rows


def _by_hand(rows, target: str):
    """The documented transform, written out with math.log2 row by row."""
    x = [[math.log2(r[c]) for c in LOG2_INPUTS] + [r[c] for c in BINARY_INPUTS] for r in rows]
    runs = [[r[f"Run{k} (ms)"] for k in range(1, 5)] for r in rows]
    y = [math.log2(sum(v) / 4) if target == "mean" else math.log2(v[int(target[-1]) - 1]) for v in runs]
    return torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


@pytest.mark.parametrize("target", ["mean", "run3"])
def test_sgemm_matches_a_hand_computation(tmp_path, target):
    rows = write_sgemm(tmp_path)
    config = DataConfig(name="sgemm", root=str(tmp_path), split_seed=4, options={"target": target})
    bundle = build_data(config)
    x, y = _by_hand(rows, target)
    rest, test = fraction_split(y, 0.15, 0)
    tr, va = fraction_split(y[rest], 0.15 / 0.85, 4)
    train, val = rest[tr], rest[va]
    assert (len(train), len(val), len(test)) == (140, 30, 30)  # 70/15/15 of 200
    mean, std = x[train].mean(0), x[train].std(0)
    for split, idx in ((bundle.train, train), (bundle.val, val), (bundle.test, test)):
        assert torch.allclose(split.x.double(), (x[idx] - mean) / std, atol=1e-5)
        assert torch.allclose(split.y.double(), y[idx], atol=1e-5)
    assert bundle.train.x.mean(0).abs().max() < 1e-5  # normalisation fitted on the training part only
    assert bundle.test.x.mean(0).abs().max() > 1e-3
    assert bundle.task == "regression" and bundle.num_outputs == 1 and bundle.input_shape == (14,)
    assert bundle.info["target"] == target and bundle.mean is None


def test_sgemm_kfold_and_custom_split(tmp_path):
    write_sgemm(tmp_path)
    config = DataConfig(name="sgemm", root=str(tmp_path), val_folds=5)
    folds = [build_data(config, replicate=r) for r in range(5)]
    assert all(len(b.test) == 30 and len(b.val) == 34 for b in folds)
    bundle = build_data(DataConfig(name="sgemm", root=str(tmp_path), options={"split": [0.8, 0.1, 0.1]}))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (160, 20, 20)


def test_sgemm_bad_input_is_one_line(tmp_path):
    write_sgemm(tmp_path, header=[h for h in HEADER if h not in ("KWI", "Run2 (ms)")])
    with pytest.raises(UserError, match=r"lacks the column\(s\) KWI, Run2 \(ms\)"):
        build_data(DataConfig(name="sgemm", root=str(tmp_path)))
    write_sgemm(tmp_path)
    for options, pattern in (({"target": "median"}, "must be one of mean, run1"),
                             ({"split": [0.5, 0.5]}, "three fractions"),
                             ({"trget": "mean"}, "no option")):
        with pytest.raises(UserError, match=pattern):
            build_data(DataConfig(name="sgemm", root=str(tmp_path), options=options))
    with pytest.raises(UserError, match="sgemm_product.csv"):
        build_data(DataConfig(name="sgemm", root=str(tmp_path / "missing")))


def test_sgemm_trains_as_regression_through_the_cli(tmp_path):
    write_sgemm(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"epochs": 1}))
    code, out, err = run_cli(["train", str(recipe), "--set", "data.name=sgemm", "--set",
                              f"data.root={tmp_path / 'data'}", "-q"])
    assert code == 0, err
    assert "sgemm" in out
