"""The arguments `compare` and `report` share: which runs, against which group, which metric and
which estimator. Declared once, so both commands take and explain them alike."""

from __future__ import annotations

import typer

RESULTS = typer.Argument(..., metavar="RESULTS...", help="results.json files or folders (recursive).")
BASELINE = typer.Option(None, "--baseline", help="Group label, run name or variant to compare against (default: "
                        "the `baseline` variant).")
METRIC = typer.Option(None, "--metric", help="Per-epoch metric: test_acc (default for classification), test_loss "
                      "(regression), val_acc...")
ESTIMATOR = typer.Option(None, "--estimator", help="Per-replicate value, for every table and figure: final (last "
                         "epoch, the default), robust (the DAC paper's window around the best validation epoch) or "
                         "min_mean (the best replicate-mean epoch); docs/compare.md.")
