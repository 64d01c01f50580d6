"""SGEMM GPU kernel performance (UCI): 14 kernel parameters -> log2 run time, a regression set.

`data.root` holds `sgemm_product.csv` (241,600 rows). The ten non-binary inputs and the response
are log2-transformed, as the DAC paper does; the inputs are then standardised with statistics of
the training part only. The target (`data.options.target`) is `mean` (log2 of the mean of the
four runs; our choice, the default) or `run1`..`run4` (one run). Splits: a fixed 15% test part
(seed 0, never moves), then validation from the rest: `data.options.split` fractions (default
70/15/15) with `data.split_seed`, or fold k of K when `data.val_folds` is set. The MSE the
trainer reports is in log2 scale.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.data import DataBundle, DatasetInfo, Download, Sizes, Split, register_dataset
from biasbench.data.common import HOLDOUT_SEED, check_options, data_root, require_files
from biasbench.data.splits import fraction_split, validation_split
from biasbench.errors import UserError

SGEMM_CSV = "sgemm_product.csv"
LOG2_INPUTS = ["MWG", "NWG", "KWG", "MDIMC", "NDIMC", "MDIMA", "NDIMB", "KWI", "VWM", "VWN"]
BINARY_INPUTS = ["STRM", "STRN", "SA", "SB"]
RUNS = ["Run1 (ms)", "Run2 (ms)", "Run3 (ms)", "Run4 (ms)"]
TARGETS = ("mean", "run1", "run2", "run3", "run4")


def read_sgemm_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, 14) in LOG2_INPUTS + BINARY_INPUTS order, runs (N, 4)) as float64."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read `{path}` ({type(e).__name__}: {e})") from None
    wanted = LOG2_INPUTS + BINARY_INPUTS + RUNS
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"`{path}` lacks the column(s) {', '.join(missing)}; expected the UCI SGEMM columns "
                        f"{', '.join(wanted)}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[header.index(c) for c in wanted],
                           dtype=np.float64, ndmin=2, encoding="utf-8-sig")
    except ValueError as e:
        raise UserError(f"cannot read `{path}`: {str(e).splitlines()[0]}") from None
    if len(table) == 0:
        raise UserError(f"`{path}` has no rows")
    return table[:, :14], table[:, 14:]


def transform(inputs: np.ndarray, runs: np.ndarray, target: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """log2 of the non-binary inputs and of the target run time; the binary inputs unchanged."""
    n_log = len(LOG2_INPUTS)
    finite = np.isfinite(np.concatenate([inputs, runs], axis=1))
    if not finite.all():  # NaN passes `<= 0`: it would train, and count as a diverged run
        row, col = (int(i[0]) for i in np.nonzero(~finite))
        column = (LOG2_INPUTS + BINARY_INPUTS + RUNS)[col]
        raise UserError(f"`{path}` data row {row + 1} (after the header): column `{column}` is not a finite number "
                        f"({(~finite).any(axis=1).sum()} such row(s)); fix or remove them")
    if (inputs[:, :n_log] <= 0).any() or (runs <= 0).any():
        raise UserError(f"`{path}`: the kernel parameters {', '.join(LOG2_INPUTS)} and the run times must be "
                        "positive numbers (they are log2-transformed)")
    x = inputs.copy()
    x[:, :n_log] = np.log2(x[:, :n_log])
    y = runs.mean(axis=1) if target == "mean" else runs[:, int(target[-1]) - 1]
    return x, np.log2(y)


def _split_fractions(opts: dict[str, Any]) -> tuple[float, float, float]:
    split = opts["split"]
    ok = (isinstance(split, (list, tuple)) and len(split) == 3
          and all(isinstance(v, (int, float)) and v >= 0 for v in split)
          and split[0] > 0 and split[2] > 0 and abs(sum(split) - 1) <= 1e-6)
    if not ok:
        raise UserError(f"data.options.split for `sgemm` must be three fractions [train, val, test] summing "
                        f"to 1 with train and test > 0, got {split!r}")
    return float(split[0]), float(split[1]), float(split[2])


SGEMM_ROWS = 241_600  # kernel configurations in the UCI release


def _sgemm_sizes(cfg: Any) -> Sizes:
    """The rows `data.options.split` gives training and test (validation: its own fraction)."""
    f_train, _, f_test = _split_fractions({"split": [0.70, 0.15, 0.15], **cfg.options})
    return Sizes(round(SGEMM_ROWS * f_train), round(SGEMM_ROWS * f_test), carves_validation=False)


@register_dataset("sgemm", DatasetInfo("SGEMM GPU kernel performance (UCI), log2 run time", bundled=False,
                                         kind="features", task="regression", shape=lambda o: ((14,), 1),
                                         sizes=_sgemm_sizes,
                                         download=Download("archive.ics.uci.edu/dataset/440 (sgemm_product.csv)")))
def sgemm(cfg: Any, replicate: int = 0) -> DataBundle:
    opts = check_options("sgemm", cfg.options, {"target": "mean", "split": [0.70, 0.15, 0.15]})
    if opts["target"] not in TARGETS:
        raise UserError(f"data.options.target for `sgemm` must be one of {', '.join(TARGETS)}, "
                        f"got {opts['target']!r}")
    f_train, f_val, f_test = _split_fractions(opts)
    root = data_root(cfg, "sgemm", f"`{SGEMM_CSV}` (UCI SGEMM GPU kernel performance)")
    require_files(cfg, "sgemm", root, [SGEMM_CSV])
    x_np, y_np = transform(*read_sgemm_csv(root / SGEMM_CSV), opts["target"], root / SGEMM_CSV)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    rest, test = fraction_split(y, f_test, HOLDOUT_SEED)
    # The validation part of the rest, as every data set splits it (fraction from options.split).
    tr, va, split_info = validation_split(y[rest], replace(cfg, val_fraction=f_val / (f_train + f_val)), replicate)
    split_info["split"] = [f_train, f_val, f_test]
    train, val = rest[tr], rest[va]

    mean = x[train].mean(dim=0)
    std = x[train].std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant input stays constant (0)

    def part(idx: torch.Tensor) -> Split:
        return Split(((x[idx] - mean) / std).float(), y[idx].float())

    info = {"source": str(root / SGEMM_CSV), "target": opts["target"], "target_scale": "log2(ms)",
            "log2_inputs": LOG2_INPUTS, "inputs": LOG2_INPUTS + BINARY_INPUTS,
            "input_normalisation": "fitted on the training part",
            "test_split": f"{f_test}, seed {HOLDOUT_SEED}",
            "split_seed": cfg.split_seed, **split_info}
    return DataBundle(part(train), part(val) if len(val) else None, part(test), "regression", 1, (14,),
                      info=info)
