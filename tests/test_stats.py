"""biasbench.stats against scipy and against cases worked out by hand."""

from __future__ import annotations

import math

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
    assert v.kind == "inconclusive"
    assert "n=1: no confidence interval" in v.text
    assert (
        v.replicates_needed is not None and v.replicates_needed >= 2
    )  # planned from the other side's spread
    both = stats.verdict(stats.difference([0.9], [0.95]), True)
    assert both.replicates_needed is None and "at least 2" in both.text


def test_zero_variance() -> None:
    d = stats.difference([0.9] * 3, [0.95] * 3)
    assert d.ci == pytest.approx((0.05, 0.05)) and d.p_value == 0.0
    assert "zero variance" in d.note
    assert stats.verdict(d, True).kind == "better"
    assert stats.verdict(d, False).kind == "worse"  # for a loss, +0.05 is worse
    same = stats.difference([0.9] * 3, [0.9] * 3, paired=True)
    assert same.p_value == 1.0
    v = stats.verdict(same, True)
    assert v.kind == "inconclusive" and "identical" in v.text


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
    assert f"needs about {v.replicates_needed} replicates" in v.text
    assert v.replicates_needed > 3


def test_power_matches_textbook_sample_sizes() -> None:
    # Cohen's tables, alpha 0.05 two-sided, power 0.8: d = 1 needs 17 per group; paired d = 0.5 needs 34.
    assert stats.replicates_needed(1.0, 1.0, paired=False) == 17
    assert stats.replicates_needed(0.5, 1.0, paired=True) == 34
    n = stats.replicates_needed(0.3, 1.0, paired=False)
    assert (
        stats.t_test_power(0.3, 1.0, n, paired=False)
        >= 0.8
        > stats.t_test_power(0.3, 1.0, n - 1, paired=False)
    )
    assert stats.replicates_needed(0.0, 1.0, paired=False) is None
    assert stats.replicates_needed(1e-6, 1.0, paired=False) is None  # beyond MAX_REPLICATES


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
