"""predictions.npz: what the trainer records per epoch reads back exactly, and bad files are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasbench.errors import UserError
from biasbench.predictions import FILE, PredictionLog, describe, load_predictions, save_predictions


def _classification_log() -> tuple[PredictionLog, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (37,), generator=g)
    outs = [torch.randn(37, 10, generator=g) for _ in range(3)]
    log = PredictionLog("classification", num_classes=10)
    for e, out in enumerate(outs, start=1):
        log.add(e, out, y)
    return log, y, outs


def test_classification_round_trip_and_correctness(tmp_path):
    log, y, outs = _classification_log()
    save_predictions(tmp_path / FILE, log.freeze())
    back = load_predictions(tmp_path)  # a run folder is enough
    assert back.task == "classification" and back.examples == 37
    assert back.epochs.tolist() == [1, 2, 3] and back.pred.dtype == np.int16
    for e, out in enumerate(outs, start=1):
        assert np.array_equal(back.correct(e), (out.argmax(1) == y).numpy())
    assert describe(back)["epochs"] == 3
    with pytest.raises(KeyError, match="epoch 4"):
        back.correct(4)


def test_regression_stores_per_example_loss(tmp_path):
    log = PredictionLog("regression")
    losses = torch.rand(2, 5)
    for e in range(2):
        log.add(e + 1, torch.zeros(5, 1), torch.zeros(5), example_loss=losses[e])
    save_predictions(tmp_path / FILE, log.freeze())
    back = load_predictions(tmp_path / "results.json")  # the file beside a results file
    assert np.allclose(back.example_loss(2), losses[1].numpy())
    with pytest.raises(ValueError):
        back.correct(1)


def test_checkpoint_state_and_truncate_for_resume():
    log, _, _ = _classification_log()
    again = PredictionLog.from_state_dict(log.state_dict())
    again.truncate(2)
    assert again.epochs == [1, 2]
    assert np.array_equal(again.freeze().pred, log.freeze().pred[:2])


def test_missing_and_corrupt_files_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no per-example predictions"):
        load_predictions(tmp_path)
    (tmp_path / FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_predictions(tmp_path)
    np.savez(tmp_path / FILE, epochs=np.array([1, 2]), pred=np.zeros((1, 3)))
    with pytest.raises(UserError, match="layout"):
        load_predictions(tmp_path)
