"""Replicates until decided: a group-sequential test whose error rate survives looking after
every round (docs/compare.md, "Replicates until decided").

Testing after every new seed at p < 0.05 and stopping at the first significant result inflates
the false-positive rate far above 5% (each look is another chance). A group-sequential design
fixes the looks in advance (replicate counts n_1 < ... < n_K = max) and spends alpha over them
with the Lan-DeMets spending function of O'Brien-Fleming type,

    alpha(t) = 2 (2 - 2 Phi(z_{alpha/4} / sqrt(t))),   t = n_k / n_K (the information fraction),

so that early looks need overwhelming evidence and the last one is close to the fixed-n test.
The boundary c_k of look k solves P(|T_1| < c_1, ..., |T_{k-1}| < c_{k-1}, |T_k| >= c_k) =
alpha(t_k) - alpha(t_{k-1}) under no difference, T_j the paired t statistic after n_j seeds.

The looks are paired t-tests (seeds are shared by both sides of a comparison); their boundaries
are read from simulated null sequences (see `boundaries`). tests/test_sequential.py checks by
Monte Carlo, on sequences simulated apart from those, that the whole procedure keeps its
false-positive rate at alpha and that testing after every seed does not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

METHOD = "group-sequential paired t-test, Lan-DeMets O'Brien-Fleming alpha spending"
SIMULATED = 100_000  # null sequences the t boundaries are read from (alpha to about +-0.0007)
MAX_LOOK = 200  # the most replicates a schedule may reach (memory: SIMULATED x MAX_LOOK floats)


def obf_spent(t: float | np.ndarray, alpha: float) -> float | np.ndarray:
    """Two-sided alpha spent by information fraction t: alpha/2 on each side with the one-sided
    O'Brien-Fleming-type function 2 - 2 Phi(z_{alpha/4} / sqrt(t)) (Lan & DeMets 1983; the
    symmetric two-sided design of DeMets & Lan 1994, R's ldbounds and gsDesign)."""
    return 2 * (2 * sps.norm.sf(sps.norm.isf(alpha / 4) / np.sqrt(t)))


def schedule(minimum: int, maximum: int, step: int) -> tuple[int, ...]:
    """The replicate counts at which the comparison is tested: min, min + step, ..., max."""
    if not 2 <= minimum <= maximum <= MAX_LOOK or step < 1:
        raise ValueError(f"need 2 <= minimum <= maximum <= {MAX_LOOK} and step >= 1")
    return tuple(range(minimum, maximum, step)) + (maximum,)


def paired_t(d: np.ndarray) -> np.ndarray:
    """The paired t statistic after each count of seeds: row-wise over the last axis (n >= 2)."""
    n = np.arange(1, d.shape[-1] + 1)
    s1, s2 = np.cumsum(d, axis=-1), np.cumsum(d * d, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        var = np.maximum(s2 - n * mean**2, 0) / (n - 1)
        return mean / np.sqrt(var / n)


@functools.lru_cache(maxsize=32)
def boundaries(looks: tuple[int, ...], alpha: float) -> tuple[float, ...]:
    """Two-sided critical |t| at each look: the alpha spent there is the share of null sequences
    that first cross at that look.

    With a handful of seeds the variance is estimated, so the looks are t-tests, and the joint
    law of the t statistics has no closed form. It does not depend on the unknown variance (t is
    scale-free), so it is simulated once, exactly up to Monte Carlo error: SIMULATED sequences of
    normal per-seed differences with a fixed seed. (The usual shortcut, mapping each t to the
    normal scale by its p-value and using the Brownian-motion boundaries, let 5.5-5.8% through
    at alpha = 0.05 with 3 seeds at the first look.)"""
    n = np.asarray(looks)
    spent = obf_spent(n / n[-1], alpha)
    t = np.abs(paired_t(np.random.default_rng(20_261_205).standard_normal((SIMULATED, int(n[-1])))))
    alive = np.ones(SIMULATED, dtype=bool)
    bounds = []
    for k, count in enumerate(looks):
        quota = int(round((spent[k] - (spent[k - 1] if k else 0.0)) * SIMULATED))
        left = t[alive, count - 1]
        bound = math.inf if quota <= 0 else float(np.partition(left, len(left) - quota)[len(left) - quota])
        alive &= t[:, count - 1] < bound
        bounds.append(bound)
    return tuple(bounds)


@dataclass(frozen=True)
class Look:
    """The test of one comparison at one look."""

    n: int  # paired seeds used
    look: int  # 1-based index into the schedule
    looks: int  # how many the schedule has
    t: float | None  # the paired t statistic of variant - baseline (None: all differences equal)
    bound: float  # critical |t| of this look
    decided: bool  # |t| >= bound: the difference is significant, stop
    final: bool  # the last look: stop whatever t is

    @property
    def why(self) -> str:
        shown = "no spread: every seed's difference is equal" if self.t is None else f"|t| {abs(self.t):.2f}"
        if self.decided:
            return f"decided at look {self.look} of {self.looks}, n = {self.n} ({shown} >= {self.bound:.2f})"
        if self.final:
            return f"undecided at the maximum, n = {self.n} ({shown} < {self.bound:.2f})"
        return f"undecided at look {self.look} of {self.looks}, n = {self.n} ({shown} < {self.bound:.2f})"


def look(baseline: Sequence[float], variant: Sequence[float], looks: tuple[int, ...], alpha: float) -> Look:
    """Test paired values (same seed at the same index) at the look their count is on."""
    n = len(baseline)
    if n != len(variant) or n not in looks:
        raise ValueError(f"{n} paired values is not a look of {looks}")
    k = looks.index(n)
    bound = boundaries(looks, alpha)[k]
    d = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    spread = float(d.std(ddof=1))
    # Equal differences have no t statistic. They are not taken as proof either: with a few
    # seeds and a coarse metric (accuracy on a small test set) they happen by chance.
    t = None if spread <= 1e-12 * max(1.0, float(np.abs(d).max())) else float(paired_t(d)[-1])
    return Look(n, k + 1, len(looks), t, bound, t is not None and abs(t) >= bound, k == len(looks) - 1)
