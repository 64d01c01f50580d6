"""`periodic_signal`: a regression set for a recurrent network that generates a periodic signal.

Sample i: a phase phi_i ~ U[0, 2 pi); the input sequence (length L, 2 channels) is the cue
(cos phi, sin phi) at step 0 and zeros afterwards; the target is the signal
`sum_h a_h sin(2 pi h t / period + h phi)` for t = 0..L-1 (a_1 = 1, a_2 = 0.5, ...: `harmonics`).
After the cue the network runs on its own, so it must generate the oscillation itself.
Targets are (N, L); a model outputs one value per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from biasbench.data import DataBundle, DatasetInfo, Split, register_dataset
from biasbench.data.bundled import check_options
from biasbench.data.splits import fraction_split, validation_split
from biasbench.errors import UserError

_DEFAULTS = {"num_samples": 512, "length": 60, "period": 20.0, "harmonics": 2, "seed": 0, "mode": "generate"}


def periodic_targets(phase: torch.Tensor, length: int, period: float, harmonics: int) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float32)
    out = torch.zeros(len(phase), length)
    for h in range(1, harmonics + 1):
        out += (0.5 ** (h - 1)) * torch.sin(2 * math.pi * h * t[None, :] / period + h * phase[:, None])
    return out


def _signal_shape(o: dict) -> tuple[tuple[int, ...], int]:
    o = {**_DEFAULTS, **o}
    return (int(o["length"]), 2 if o["mode"] == "generate" else 1), 1


@register_dataset("periodic_signal", DatasetInfo("periodic signal to generate or forecast (bias-only RNN)",
                                                 bundled=True, kind="sequences",
                                                 task="regression", shape=_signal_shape))
def periodic_signal(cfg: Any, replicate: int = 0) -> DataBundle:
    o = check_options("periodic_signal", cfg.options, _DEFAULTS)
    n, length, harmonics = int(o["num_samples"]), int(o["length"]), int(o["harmonics"])
    if n < 20 or length < 2 or harmonics < 1 or float(o["period"]) <= 1:
        raise UserError("periodic_signal needs num_samples >= 20, length >= 2, harmonics >= 1, period > 1")
    g = torch.Generator().manual_seed(int(o["seed"]))
    phase = torch.rand(n, generator=g) * 2 * math.pi
    if o["mode"] not in ("generate", "forecast"):
        raise UserError(
            f"data.options.mode for periodic_signal must be generate or forecast, got {o['mode']!r}"
        )
    if o["mode"] == "generate":
        x = torch.zeros(n, length, 2)
        x[:, 0, 0], x[:, 0, 1] = torch.cos(phase), torch.sin(phase)
        y = periodic_targets(phase, length, float(o["period"]), harmonics)
    else:  # one step ahead: read the signal at t, predict it at t + 1
        s = periodic_targets(phase, length + 1, float(o["period"]), harmonics)
        x, y = s[:, :-1, None], s[:, 1:]
    rest, test = fraction_split(phase, 0.2, 0)  # float labels: a seeded random 20% test split
    tr, va, info = validation_split(phase[rest], cfg, replicate)
    xr, yr = x[rest], y[rest]
    val = Split(xr[va], yr[va]) if len(va) else None
    return DataBundle(
        Split(xr[tr], yr[tr]),
        val,
        Split(x[test], y[test]),
        "regression",
        1,
        tuple(x.shape[1:]),
        info={"source": "synthetic periodic signal", **o, **info},
    )
