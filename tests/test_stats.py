"""biasbench.stats against scipy and against cases worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from biasbench import stats

# Student-t quantiles t_{0.975, df} from printed tables (hand-computed cases below use them).
T975 = {2: 4.302652729911275, 4: 2.7764451051977987}

rng = np.random.default_rng(0)
A = list(0.90 + 0.01 * rng.standard_normal(5))
B = list(0.92 + 0.02 * rng.standard_normal(7))


def test_summarize_matches_scipy() -> None:
    s = stats.summarize(A)
    assert s.n == 5
    assert s.mean == pytest.approx(np.mean(A))
    assert s.se == pytest.approx(sps.sem(A))
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(A), scale=sps.sem(A))
    assert s.ci == pytest.approx((lo, hi))


def test_summarize_one_and_zero_values() -> None:
    one = stats.summarize([0.5])
    assert (one.n, one.mean, one.sd, one.se, one.ci) == (1, 0.5, None, None, None)
    assert stats.summarize([]).mean is None


def test_welch_matches_scipy() -> None:
    d = stats.difference(A, B)
    ref = sps.ttest_ind(B, A, equal_var=False)
    assert d.test == "welch"
    assert d.diff == pytest.approx(np.mean(B) - np.mean(A))
    assert d.p_value == pytest.approx(ref.pvalue)
    assert d.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_paired_matches_scipy() -> None:
    a, b = A, [x + 0.01 + e for x, e in zip(A, [0.001, -0.001, 0.002, 0.0, -0.002], strict=True)]
    d = stats.difference(a, b, paired=True)
    ref = sps.ttest_rel(b, a)
    assert d.test == "paired" and d.df == 4
    assert d.p_value == pytest.approx(ref.pvalue)
    assert d.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    # pairing removes the between-seed spread: a far narrower interval than Welch on the same data
    welch = stats.difference(a, b)
    assert d.ci[1] - d.ci[0] < (welch.ci[1] - welch.ci[0]) / 3


def test_welch_hand_computed_three_each() -> None:
    # a = 1,2,3 and b = 2,3,4: variances 1, se = sqrt(1/3 + 1/3), df = 4, t = 1/se
    d = stats.difference([1, 2, 3], [2, 3, 4])
    se = math.sqrt(2 / 3)
    assert d.diff == pytest.approx(1.0)
    assert d.se == pytest.approx(se)
    assert d.df == pytest.approx(4.0)
    assert d.ci == pytest.approx((1 - T975[4] * se, 1 + T975[4] * se))
    assert d.p_value == pytest.approx(2 * sps.t.sf(1 / se, 4))


def test_welch_hand_computed_two_each() -> None:
    # n = 2: sd = 0.02/sqrt(2) each, se = sqrt(2 * 0.0002/2) = 0.014142, df = 2
    d = stats.difference([0.90, 0.92], [0.94, 0.96])
    assert d.diff == pytest.approx(0.04)
    assert d.se == pytest.approx(math.sqrt(0.0002))
    assert d.df == pytest.approx(2.0)
    half = T975[2] * math.sqrt(0.0002)
    assert d.ci == pytest.approx((0.04 - half, 0.04 + half))
    assert d.ci[0] < 0 < d.ci[1]  # n=2 is too few to call a 4-point gain here
    assert stats.verdict(d, True).kind == "inconclusive"


def test_one_replicate_has_no_interval_and_says_so() -> None:
    d = stats.difference([0.9], [0.95, 0.96, 0.97])
    assert d.test == "none" and d.ci is None and d.p_value is None
    assert "baseline n=1" in d.note
    v = stats.verdict(d, True)
    assert v.kind == "inconclusive" and v.text == "inconclusive: n=1"
    assert "no confidence interval" in v.detail
    # planned from the other side's spread: sd 0.01 against a difference of 0.06
    assert v.replicates_needed == stats.replicates_needed(0.06, 0.01, paired=False)
    both = stats.verdict(stats.difference([0.9], [0.95]), True)
    assert both.replicates_needed is None and "at least 2" in both.detail


def test_zero_variance_alone_is_never_a_confident_verdict() -> None:
    d = stats.difference([0.9] * 3, [0.95] * 3)
    assert d.ci == pytest.approx((0.05, 0.05)) and d.p_value == 0.0
    assert "zero variance" in d.note
    for higher in (True, False):
        v = stats.verdict(d, higher)
        assert v.kind == "inconclusive" and v.text == "inconclusive: zero variance"
        assert "predictions" in v.detail
    same = stats.difference([0.9] * 3, [0.9] * 3, paired=True)
    assert same.p_value == 1.0
    v = stats.verdict(same, True)
    assert v.kind == "inconclusive" and "identical" in v.text


def test_near_zero_variance_below_one_test_example_is_not_trusted_alone() -> None:
    n = 359  # the digits test set: one example is 0.28 points
    base = [300 / n, 310 / n, 320 / n]
    var = [b + 2 / n + e for b, e in zip(base, (0.0, 0.001, -0.001), strict=True)]
    d = stats.difference(base, var, paired=True)
    assert d.p_value < 0.05 and d.se < 1 / n  # the t-test alone would call it
    v = stats.verdict(d, True, resolution=1 / n)
    assert v.kind == "inconclusive" and v.text == "inconclusive: near-zero variance"
    assert stats.verdict(d, True).kind == "better"  # without a test set to resolve against (a loss, say)


def test_below_the_test_sets_resolution() -> None:
    n = 359
    d = stats.difference([0.90, 0.91, 0.92, 0.93], [0.9014, 0.9114, 0.9212, 0.9313], paired=True)
    assert abs(d.diff) < 1 / n and d.p_value < 0.05
    v = stats.verdict(d, True, resolution=1 / n)
    assert v.text == "too small for this test set"
    assert "effect too small to resolve with this test set" in v.detail
    one = stats.difference([0.90, 0.91, 0.92], [0.90 + 1 / n, 0.91 + 1 / n + 0.001, 0.92 + 1 / n], paired=True)
    assert stats.verdict(one, True, resolution=1 / n).text != "too small for this test set"  # one example is resolved


def test_verdicts_better_worse() -> None:
    low, high = [0.90, 0.91, 0.90, 0.91], [0.95, 0.96, 0.95, 0.96]
    assert stats.verdict(stats.difference(low, high), True).text == "better"
    assert stats.verdict(stats.difference(high, low), True).text == "worse"
    assert stats.verdict(stats.difference(low, high), False).text == "worse"  # a loss that went up


def test_inconclusive_verdict_plans_replicates() -> None:
    a, b = [0.90, 0.92, 0.91], [0.905, 0.925, 0.93]
    d = stats.difference(a, b)
    v = stats.verdict(d, True)
    assert v.kind == "inconclusive"
    assert v.text == f"inconclusive: needs ~{v.replicates_needed} replicates"
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    assert v.replicates_needed == max(4, stats.replicates_needed(d.diff, pooled, paired=False))


def test_holm_adjustment_decides_the_verdict() -> None:
    d = stats.difference([0.90, 0.91, 0.92, 0.90], [0.93, 0.915, 0.95, 0.925], paired=True)  # p = 0.032
    assert d.p_value < 0.05
    assert stats.verdict(d, True).kind == "better"
    adjusted = stats.holm([d.p_value, 0.5, 0.6])[0]
    assert adjusted == pytest.approx(3 * d.p_value) and adjusted > 0.05
    v = stats.verdict(d, True, p_value=adjusted)
    assert v.kind == "inconclusive" and v.text == "inconclusive after Holm"


# ---------------------------------------------------------------------------------------------
# Power and sample size: statsmodels, and the case that was 373 instead of 5.
# ---------------------------------------------------------------------------------------------


def test_replicates_needed_for_the_issue_case_is_five() -> None:
    assert stats.replicates_needed(0.005571, 0.0027855, paired=True) == 5
    # independent of statsmodels: simulate the paired t-test (difference 2 sd) at n = 4 and 5
    rng = np.random.default_rng(0)
    for n, low, high in ((4, 0.70, 0.80), (5, 0.88, 0.94)):
        d = 0.005571 + 0.0027855 * rng.standard_normal((20_000, n))
        power = np.mean(sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
        assert low < power < high, (n, power)


@pytest.mark.parametrize("paired", [True, False])
def test_replicates_needed_matches_statsmodels_over_a_grid(paired: bool) -> None:
    from statsmodels.stats.power import TTestIndPower, TTestPower
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    solver = TTestPower() if paired else TTestIndPower()
    checked = 0
    for effect in (0.001, 0.004, 0.01, 0.03):
        for sd in (0.001, 0.003, 0.01, 0.02):
            n = stats.replicates_needed(effect, sd, paired=paired)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # where the answer is near 2
                reference = solver.solve_power(effect / sd, None, 0.05, 0.8, alternative="two-sided")
            if n is None:  # beyond 1000 replicates
                assert reference > stats.MAX_REPLICATES
                continue
            assert stats.t_power(effect, sd, n, paired=paired) >= 0.8
            if n > 2:
                assert stats.t_power(effect, sd, n - 1, paired=paired) < 0.8
            if reference > 2:  # statsmodels' fractional n, rounded up (it stops at 2 below that)
                assert n == math.ceil(reference)
                checked += 1
    assert checked >= 8


def test_power_is_finite_where_the_noncentral_t_gives_nan() -> None:
    from statsmodels.stats.power import TTestPower

    with np.errstate(all="ignore"):
        assert math.isnan(TTestPower().power(20.0, 2, 0.05))  # the library's own value: nan
    assert stats.t_power(20.0, 1.0, 2, paired=True) == pytest.approx(0.97352, abs=1e-4)
    rng = np.random.default_rng(1)  # simulated: 2 seeds, differences of 20 sd
    sims = 20.0 + rng.standard_normal((40_000, 2))
    assert np.mean(sps.ttest_1samp(sims, 0.0, axis=1).pvalue < 0.05) == pytest.approx(0.9735, abs=0.005)
    for n in range(2, 60):  # the old hand-written search got nan for about half of all n
        assert math.isfinite(stats.t_power(0.005571, 0.0027855, n, paired=True))
        assert math.isfinite(stats.t_power(0.005571, 0.0027855, n, paired=False))


def test_power_matches_textbook_sample_sizes() -> None:
    # Cohen's tables, alpha 0.05 two-sided, power 0.8: d = 1 needs 17 per group; paired d = 0.5 needs 34.
    assert stats.replicates_needed(1.0, 1.0, paired=False) == 17
    assert stats.replicates_needed(0.5, 1.0, paired=True) == 34
    assert stats.replicates_needed(0.0, 1.0, paired=False) is None
    assert stats.replicates_needed(1e-6, 1.0, paired=False) is None  # beyond MAX_REPLICATES
    assert stats.replicates_needed(50.0, 1.0, paired=True) == 2


# ---------------------------------------------------------------------------------------------
# The example-level test: a paired bootstrap over test examples and seeds.
# ---------------------------------------------------------------------------------------------


def _slow_bootstrap(a: np.ndarray, b: np.ndarray, paired: bool, resamples: int, seed: int) -> np.ndarray:
    """The definition, one resample at a time: draw seeds, draw N examples, difference of means."""
    rng = np.random.default_rng(seed)
    (sa, n), sb = a.shape, b.shape[0]
    out = np.empty(resamples)
    for i in range(resamples):
        ia = rng.integers(0, sa, sa)
        ib = ia if paired else rng.integers(0, sb, sb)
        ex = rng.integers(0, n, n)
        out[i] = b[np.ix_(ib, ex)].mean() - a[np.ix_(ia, ex)].mean()
    return np.where(np.abs(out) < 1e-12, 0.0, out)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("n,seeds,route", [(60, 3, "uniform draws"), (1000, 2, "multinomial")])
def test_example_bootstrap_matches_the_definition(paired: bool, n: int, seeds: int, route: str) -> None:
    rng = np.random.default_rng(3)
    a = (rng.random((seeds, n)) < 0.80).astype(float)
    b = (rng.random((seeds, n)) < 0.88).astype(float)
    if route == "multinomial":  # most examples right everywhere: few distinct informative columns
        a[:, 300:], b[:, 300:] = 1.0, 1.0
    rows = b - a if paired else np.vstack([a, b])
    informative = rows[:, np.any(rows != np.where(paired, 0, rows[:1]), axis=0)]
    groups = np.unique(informative, axis=1).shape[1]
    assert (groups * 5 <= informative.shape[1]) == (route == "multinomial")  # which route _landings takes
    fast = stats.example_bootstrap(a, b, paired=paired, resamples=20_000, seed=1)
    slow = _slow_bootstrap(a, b, paired, 20_000, seed=2)
    assert fast.diff == pytest.approx(b.mean() - a.mean())
    assert fast.ci == pytest.approx(tuple(np.quantile(slow, [0.025, 0.975])), abs=1.1 / (seeds * n))
    p_slow = min(1.0, 2 * (min(np.sum(slow <= 0), np.sum(slow >= 0)) + 1) / (len(slow) + 1))
    assert fast.p_value == pytest.approx(p_slow, abs=0.015)


def test_example_bootstrap_one_changed_example() -> None:
    # one seed, one example wrong in the variant only: D = -c/N with c ~ Binomial(N, 1/N), so
    # P(D >= 0) = (1 - 1/N)^N and the two-sided p is twice that
    n = 50
    a = np.ones((1, n))
    b = a.copy()
    b[0, 7] = 0
    t = stats.example_bootstrap(a, b, paired=True)
    assert t.informative == 1 and t.diff == pytest.approx(-1 / n)
    assert t.p_value == pytest.approx(2 * (1 - 1 / n) ** n, abs=0.02)
    nothing = stats.example_bootstrap(a, a, paired=True)
    assert nothing.p_value == 1.0 and nothing.ci == (0.0, 0.0)


def test_example_bootstrap_holds_its_level_and_finds_real_differences() -> None:
    rng = np.random.default_rng(5)
    n, seeds, rejections = 359, 3, 0
    for i in range(150):  # no difference: 5% hard examples, answered at random per seed
        hard = rng.random(n) < 0.05
        a = np.array([np.where(hard, rng.random(n) < 0.5, True) for _ in range(seeds)], float)
        b = np.array([np.where(hard, rng.random(n) < 0.5, True) for _ in range(seeds)], float)
        rejections += stats.example_bootstrap(a, b, paired=True, resamples=2000, seed=i).p_value < 0.05
    assert rejections / 150 <= 0.07
    a = (rng.random((seeds, 2000)) < 0.90).astype(float)  # a real 4-point gain on 2000 examples
    b = (rng.random((seeds, 2000)) < 0.94).astype(float)
    assert stats.example_bootstrap(a, b, paired=True).p_value < 0.001


def test_stricter_p() -> None:
    d = stats.difference([0.9, 0.91, 0.92], [0.95, 0.95, 0.97], paired=True)
    ex = stats.ExampleTest(0.05, (0.0, 0.1), 0.2, 100, 5, 3, 3, True, 1000)
    assert stats.stricter_p(d, None) == d.p_value
    assert stats.stricter_p(d, ex) == 0.2
    v = stats.verdict(d, True, examples=ex)
    assert v.text == "inconclusive: test-set noise" and "larger test set" in v.detail


# ---------------------------------------------------------------------------------------------
# Families and failure counts: statsmodels and scipy.
# ---------------------------------------------------------------------------------------------


def test_holm_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    ps = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert stats.holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))
    with_none = stats.holm([0.01, None, 0.04])
    assert with_none[1] is None
    assert [with_none[0], with_none[2]] == pytest.approx(list(multipletests([0.01, 0.04], method="holm")[1]))
    assert stats.holm([None]) == [None]


def test_fisher_failures_matches_scipy_and_the_dac_paper() -> None:
    t = stats.fisher_failures(15, 576, 2, 449)  # "15/576 baseline, 2/449 DAC, bilateral p-value 0.0063"
    assert round(t.p_value, 4) == 0.0063
    for fb, nb, fv, nv in ((0, 5, 3, 5), (2, 10, 2, 10), (1, 3, 0, 3)):
        res = sps.fisher_exact([[fb, nb - fb], [fv, nv - fv]])
        assert stats.fisher_failures(fb, nb, fv, nv).p_value == pytest.approx(res.pvalue)


def _hist(val: list[float], test: list[float], train: list[float] | None = None) -> list[dict]:
    train = train or test
    return [
        {"epoch": i + 1, "train_acc": tr, "val_acc": v, "test_acc": t}
        for i, (v, t, tr) in enumerate(zip(val, test, train, strict=True))
    ]


def test_robust_best_accuracy_hand_built() -> None:
    # replicate-mean validation: .55 .65 .75 .85 .80 .70 .60 .50 -> e* = 4 (not replicate 2's own best, 5)
    h1 = _hist([0.5, 0.6, 0.7, 0.9, 0.7, 0.6, 0.5, 0.4], [0.50, 0.60, 0.70, 0.80, 0.90, 0.80, 0.70, 0.60])
    h2 = _hist([0.6, 0.7, 0.8, 0.8, 0.9, 0.8, 0.7, 0.6], [0.40, 0.50, 0.60, 0.70, 0.80, 0.70, 0.60, 0.50])
    r = stats.robust_best_accuracy([h1, h2])
    assert r.epoch == 4 and r.window == (2, 6) and r.selected_by == "val_acc"
    # test over epochs 2..6: replicate 1 (.6+.7+.8+.9+.8)/5 = .76, replicate 2 (.5+.6+.7+.8+.7)/5 = .66
    assert r.per_replicate == pytest.approx((0.76, 0.66))
    assert r.value == pytest.approx(0.71)
    assert r.summary.se == pytest.approx(0.05)


def test_robust_best_clips_window_and_falls_back_to_test() -> None:
    h = _hist([0.9, 0.8, 0.7, 0.6], [0.95, 0.85, 0.75, 0.65])
    r = stats.robust_best_accuracy([h])
    assert r.epoch == 1 and r.window == (1, 3)
    assert r.value == pytest.approx((0.95 + 0.85 + 0.75) / 3)
    assert r.summary.se is None  # one replicate
    no_val = [{"epoch": i + 1, "test_acc": t} for i, t in enumerate([0.5, 0.9, 0.7])]
    r2 = stats.robust_best_accuracy([no_val])
    assert r2.selected_by == "test_acc" and r2.epoch == 2


def test_robust_best_for_losses_picks_the_minimum() -> None:
    h = [
        {"epoch": i + 1, "val_loss": v, "test_loss": t}
        for i, (v, t) in enumerate(
            zip([3, 2, 1, 2, 3, 4, 5], [3.5, 2.5, 1.5, 2.5, 3.5, 4.5, 5.5], strict=True)
        )
    ]
    r = stats.robust_best_accuracy([h], metric="test_loss", higher_is_better=False)
    assert r.epoch == 3 and r.window == (1, 5)
    assert r.value == pytest.approx((3.5 + 2.5 + 1.5 + 2.5 + 3.5) / 5)


def test_min_mean_error_hand_built() -> None:
    h1 = _hist([0] * 4, [0.80, 0.90, 0.88, 0.70])
    h2 = _hist([0] * 4, [0.84, 0.86, 0.92, 0.74])
    # mean error per epoch: .18 .12 .10 .28 -> epoch 3, errors .12 and .08: se = .02
    m = stats.min_mean_error([h1, h2])
    assert m.epoch == 3
    assert m.error == pytest.approx(0.10)
    assert m.se == pytest.approx(0.02)


def test_short_replicate_limits_the_epochs() -> None:
    long = _hist([0.5, 0.6, 0.7, 0.9], [0.5, 0.6, 0.7, 0.95])
    short = _hist([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert stats.min_mean_error([long, short]).epoch == 3  # epoch 4 exists for one replicate only


def test_estimate_final_and_min_mean() -> None:
    h1 = _hist([0.5, 0.6, 0.7, 0.8], [0.80, 0.90, 0.88, 0.70])
    h2 = _hist([0.5, 0.6, 0.7, 0.8], [0.84, 0.86, 0.92, 0.74])
    final = stats.estimate([h1, h2], "final")
    assert final.per_replicate == (0.70, 0.74) and final.epoch == 4 and final.window == (4, 4)
    best = stats.estimate([h1, h2], "min_mean")  # replicate-mean test: .82 .88 .90 .72 -> epoch 3
    assert best.epoch == 3 and best.window == (3, 3) and best.selected_by == "test_acc"
    assert best.per_replicate == pytest.approx((0.88, 0.92)) and best.value == pytest.approx(0.90)
    assert stats.min_mean_error([h1, h2]).error == pytest.approx(1 - best.value)
    robust = stats.estimate([h1, h2], "robust")  # e* = 4 on validation, window 2..4 (clipped)
    assert robust.epoch == 4 and robust.window == (2, 4)
    assert robust.per_replicate == pytest.approx(((0.90 + 0.88 + 0.70) / 3, (0.86 + 0.92 + 0.74) / 3))
    with pytest.raises(ValueError, match="estimator"):
        stats.estimate([h1], "best")
