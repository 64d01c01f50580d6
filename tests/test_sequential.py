"""Replicates until decided: the group-sequential paired t-test keeps its false-positive rate
under optional stopping; testing after every seed does not (Monte Carlo under the null)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from biasbench.sequential import boundaries, look, obf_spent, paired_t, schedule

ALPHA = 0.05
STUDIES = 4000  # simulated studies per schedule (the acceptance asks for at least 2,000)


def test_spending_function_is_the_published_obrien_fleming_type():
    # Lan-DeMets O'Brien-Fleming spending, two-sided alpha 0.05: the first of five equally spaced
    # looks spends what the published boundary 4.877 leaves in both tails (DeMets & Lan 1994;
    # R's ldbounds / gsDesign sfLDOF), and by the end all of alpha is spent.
    assert sps.norm.isf(obf_spent(0.2, ALPHA) / 2) == pytest.approx(4.877, abs=5e-4)
    assert obf_spent(1.0, ALPHA) == pytest.approx(ALPHA)
    t = np.linspace(0.05, 1, 20)
    assert np.all(np.diff(obf_spent(t, ALPHA)) > 0)


def test_paired_t_matches_scipy():
    d = np.random.default_rng(0).standard_normal((3, 9))
    for n in range(2, 10):
        want = sps.ttest_1samp(d[:, :n], 0, axis=1).statistic
        assert paired_t(d)[:, n - 1] == pytest.approx(want)


def simulate(looks: tuple[int, ...], rng: np.random.Generator, effect: float = 0.0) -> tuple[float, float]:
    """(rate of the sequential procedure, rate of testing at p < alpha after every seed)."""
    t = np.abs(paired_t(effect + rng.standard_normal((STUDIES, looks[-1]))))
    sequential_hits = np.zeros(STUDIES, dtype=bool)
    for n, bound in zip(looks, boundaries(looks, ALPHA)):
        sequential_hits |= t[:, n - 1] >= bound
    naive_hits = np.zeros(STUDIES, dtype=bool)
    for n in range(looks[0], looks[-1] + 1):
        naive_hits |= t[:, n - 1] >= sps.t.isf(ALPHA / 2, n - 1)
    return float(sequential_hits.mean()), float(naive_hits.mean())


@pytest.mark.parametrize("minimum, maximum, step", [(3, 20, 1), (3, 20, 4), (2, 10, 1)])
def test_false_positive_rate_survives_optional_stopping(minimum, maximum, step, capsys):
    # A rng apart from the one the boundaries were read from (the check is not circular).
    looks = schedule(minimum, maximum, step)
    rate, naive = simulate(looks, np.random.default_rng(1000 + minimum * 100 + step))
    se = math.sqrt(ALPHA * (1 - ALPHA) / STUDIES)
    with capsys.disabled():
        print(f"\nlooks {looks[0]}..{looks[-1]} step {step}: sequential {rate:.4f}, naive {naive:.4f} "
              f"(alpha {ALPHA}, +2 SE {ALPHA + 2 * se:.4f}, {STUDIES} studies)")
    assert rate <= ALPHA + 2 * se
    assert naive > ALPHA + 2 * se  # why: every look is another chance at a false positive
    assert naive > 2.5 * ALPHA


def test_a_clear_difference_stops_early():
    looks = schedule(3, 20, 1)
    t = paired_t(1.5 + np.random.default_rng(5).standard_normal((2000, 20)))
    first = np.full(2000, 99)
    for n, bound in reversed(list(zip(looks, boundaries(looks, ALPHA)))):
        first = np.where(np.abs(t[:, n - 1]) >= bound, n, first)
    # an effect of 1.5 SD of the per-seed differences: stopped well before 20 seeds, almost always
    assert (first <= 13).mean() > 0.95 and np.minimum(first, 20).mean() < 11.5


def test_boundaries_are_reproducible_and_fall_to_about_the_fixed_n_test():
    looks = schedule(3, 20, 4)
    first = boundaries(looks, ALPHA)
    boundaries.cache_clear()
    assert boundaries(looks, ALPHA) == first
    assert all(a > b for a, b in zip(first, first[1:-1]))  # early looks need more evidence
    assert first[-1] == pytest.approx(sps.t.isf(ALPHA / 2, 19), rel=0.12)  # the last is near the fixed-n test


def test_look_decides_continues_and_stops_at_the_maximum():
    looks = schedule(3, 6, 1)
    rng = np.random.default_rng(3)
    base = rng.standard_normal(6)
    clear = look(base[:4], base[:4] + 5 + 0.1 * rng.standard_normal(4), looks, ALPHA)
    assert clear.decided and clear.look == 2 and "decided at look 2 of 4" in clear.why
    noise = look(base[:3], rng.standard_normal(3), looks, ALPHA)
    assert not noise.decided and not noise.final and "undecided at look 1 of 4" in noise.why
    last = look(base, base + 1e-3 * rng.standard_normal(6), looks, ALPHA)
    assert last.final and not last.decided and "undecided at the maximum" in last.why
    # a constant difference (a coarse metric, few seeds) has no t statistic and decides nothing
    equal = look(base[:3], base[:3] + 1.0, looks, ALPHA)
    assert equal.t is None and not equal.decided and "no spread" in equal.why
    with pytest.raises(ValueError):
        look(base[:4], base[:4], schedule(3, 6, 2), ALPHA)  # the looks are 3, 5, 6
