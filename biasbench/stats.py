"""Pure statistics for `compare`, `report`, the gate and study reports: no files, no printing.

Everything takes plain sequences of floats (one value per replicate), per-example score matrices
(one row per seed, one column per test example) or per-epoch histories, and returns small frozen
dataclasses. Distributions and solvers come from scipy and statsmodels (t quantiles and tests,
Fisher's exact test, the power of t-tests, Holm's adjustment); nothing here re-implements one.
The rules and the reasons for them are written up in docs/compare.md.

The plain functions other modules call: `summarize`, `difference`, `one_sample_p`,
`replicates_needed`, `example_bootstrap`, `stricter_p`, `holm`, `fisher_failures`, `verdict`,
and the estimators `estimate`, `robust_best_accuracy`, `min_mean_error`.
"""

from __future__ import annotations

import functools
import gc
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # two-sided significance level of every test and the 95% of every interval
POWER = 0.8  # the power the "needs about N replicates" advice aims for
MAX_REPLICATES = 1000  # beyond this the advice says "more than 1000": the effect is lost in noise
RESAMPLES = 10_000  # bootstrap resamples of the example-level test (p-values to about +-0.004 at 0.05)
ESTIMATORS = ("final", "robust", "min_mean")


@dataclass(frozen=True)
class Summary:
    """Mean of replicate values; `sd`/`se`/`ci` are None for n < 2 (one value has no spread)."""

    n: int
    mean: float | None
    sd: float | None
    se: float | None
    ci: tuple[float, float] | None


@functools.lru_cache(maxsize=4096)
def _t_quantile(q: float, df: float) -> float:
    return float(sps.t.ppf(q, df))  # about a millisecond each; a study report asks thousands of times


def t_interval(mean: float, se: float, df: float, level: float = 1 - ALPHA) -> tuple[float, float]:
    """The two-sided Student-t interval mean +- t_{df}(1-(1-level)/2) * se."""
    if se == 0:
        return (mean, mean)
    half = _t_quantile(0.5 + level / 2, df) * se
    return (mean - half, mean + half)


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, None, None, None)
    sd = _sd(x) or 0.0
    se = sd / math.sqrt(n)
    return Summary(n, mean, sd, se, t_interval(mean, se, n - 1))


# ---------------------------------------------------------------------------------------------
# Two configurations over replicates: difference, confidence interval, p-value.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """`variant - baseline` of the replicate means, with the test that fits the data.

    test: "welch" (independent replicates), "paired" (replicates matched by seed),
    or "none" (a side has fewer than 2 replicates: no interval, no p-value; `note` says so).
    """

    n_baseline: int
    n_variant: int
    diff: float
    test: str
    se: float | None
    df: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    sd_baseline: float | None
    sd_variant: float | None
    sd_diff: float | None  # sd of the per-seed differences (paired only)
    note: str = ""


def _sd(x: np.ndarray) -> float | None:
    """Sample sd; exactly 0 for values equal up to rounding (np.std would give ~1e-17 there,
    and scipy's tests a meaningless huge t with a precision-loss warning)."""
    if len(x) < 2:
        return None
    return 0.0 if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())) else float(x.std(ddof=1))


def difference(baseline: Sequence[float], variant: Sequence[float], *, paired: bool = False) -> Difference:
    """Mean difference variant - baseline with a 95% CI and a two-sided p-value.

    paired=True: values are aligned (same seed at the same index) and the paired t-test on the
    per-seed differences is used, which removes the variation the shared seed explains.
    Otherwise Welch's t-test (unequal variances) with the Welch-Satterthwaite degrees of freedom.
    Zero variance (identical replicates, e.g. deterministic CPU runs) has no t statistic; we
    report the exact difference with a zero-width interval and p = 0 (a difference that every
    replicate shows) or p = 1 (no difference at all). scipy would return nan there. `verdict`
    never trusts such a p-value alone: zero spread says nothing about the test set's noise.
    """
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(variant, dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("difference needs at least one value on each side")
    diff = float(b.mean() - a.mean())
    sd_a, sd_b = _sd(a), _sd(b)
    if paired and len(a) != len(b):
        raise ValueError("paired values must have the same length")
    if len(a) < 2 or len(b) < 2:
        few = [f"{side} n={n}" for side, n in (("baseline", len(a)), ("variant", len(b))) if n < 2]
        note = f"{', '.join(few)}: one replicate has no spread, so no confidence interval or p-value"
        return Difference(len(a), len(b), diff, "none", None, None, None, None, sd_a, sd_b, None, note)
    if paired:
        d = b - a
        sd_d = _sd(d) or 0.0
        se = sd_d / math.sqrt(len(d))
        df: float = len(d) - 1
        p = _p_zero_se(diff) if se == 0 else _t_p(diff, se, df)
        return Difference(len(a), len(b), diff, "paired", se, df, t_interval(diff, se, df), p, sd_a, sd_b, sd_d,
                          _zero_note(se, paired=True))
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)  # type: ignore[operator]
    se = math.sqrt(va + vb)
    if se == 0:
        df = len(a) + len(b) - 2
        p = _p_zero_se(diff)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        p = _t_p(diff, se, df)
    return Difference(len(a), len(b), diff, "welch", se, df, t_interval(diff, se, df), p, sd_a, sd_b, None,
                      _zero_note(se))


def _t_p(diff: float, se: float, df: float) -> float:
    """Two-sided p of t = diff / se on df degrees of freedom: what scipy's ttest_rel and Welch's
    ttest_ind compute, from the same se and df as the interval (and without their precision
    warning when one side's replicates are identical)."""
    return float(2 * sps.t.sf(abs(diff) / se, df))


def _p_zero_se(diff: float) -> float:
    return 0.0 if diff != 0 else 1.0


def _zero_note(se: float, paired: bool = False) -> str:
    what = "every seed shows the same difference" if paired else "replicates are identical"
    return f"{what} (zero variance): the interval has zero width" if se == 0 else ""


def one_sample_p(values: Sequence[float], reference: float) -> float | None:
    """Two-sided p-value that the mean of `values` differs from a fixed number (None for n < 2)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    if _sd(x) == 0:
        return _p_zero_se(float(x.mean()) - reference)
    return float(sps.ttest_1samp(x, reference).pvalue)


# ---------------------------------------------------------------------------------------------
# How many replicates an effect of this size needs (statsmodels' power of the t-tests).
# ---------------------------------------------------------------------------------------------


def _power_of(paired: bool) -> Any:
    """statsmodels' solver: the one-sample t-test on per-seed differences (paired), or the
    two-sample t-test with n per side (df = 2n - 2)."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    return TTestPower() if paired else TTestIndPower()


def t_power(effect: float, sd: float, n: int, *, paired: bool, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test with n replicates per side (paired: n seeds, `sd` of the
    per-seed differences) for a true difference `effect`: statsmodels' `TTestPower` /
    `TTestIndPower`. Far from zero, scipy's non-central t gives nan for the lower tail, which is
    below 1e-12 there; the upper tail alone (statsmodels' one-sided power at alpha/2) is then
    the power."""
    solver = _power_of(paired)
    d = abs(effect) / sd
    # positional: statsmodels names n `nobs` (one sample) or `nobs1` (two samples)
    p = float(solver.power(d, n, alpha, alternative="two-sided"))
    return p if math.isfinite(p) else float(solver.power(d, n, alpha / 2, alternative="larger"))


def replicates_needed(effect: float, sd: float, *, paired: bool, alpha: float = ALPHA, power: float = POWER,
                      max_n: int = MAX_REPLICATES) -> int | None:
    """Smallest n per side at which the two-sided t-test at `alpha` reaches `power` for a true
    difference `effect` with replicate standard deviation `sd` (paired: the sd of the per-seed
    differences). None when the effect is zero or needs more than `max_n`; 2 without noise.

    statsmodels' `solve_power` gives a fractional n; we round up and confirm with `t_power`, so
    the answer is the first whole n with enough power. Where its root finder gives up (nan, with
    a warning, when the answer is near 2), the confirmation steps from the bracket instead."""
    if effect == 0 or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2  # no noise: the smallest sample with a t statistic already shows it

    def enough(n: int) -> bool:
        return t_power(effect, sd, n, paired=paired, alpha=alpha) >= power

    if enough(2):
        return 2
    if not enough(max_n):
        return None
    # Imported before the filter: importing it adds statsmodels' own "always" filter in front.
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # bracketed above, confirmed below
        guess = _power_of(paired).solve_power(abs(effect) / sd, None, alpha, power, alternative="two-sided")
    n = min(max_n, max(3, math.ceil(float(guess)))) if np.isfinite(guess) else 3
    while not enough(n):
        n += 1
    while n > 2 and enough(n - 1):
        n -= 1
    return n


# ---------------------------------------------------------------------------------------------
# Both sources of variance: a paired bootstrap over test examples and seeds.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleTest:
    """The difference of mean per-example scores with a bootstrap CI and p-value.

    Each resample draws the seeds of each side with replacement (the same draw for both sides
    when they share seeds) and the test examples with replacement (the same draw for every seed
    and both sides: they all saw one test set), so the interval sees seed noise and the test
    set's own sampling noise together."""

    diff: float
    ci: tuple[float, float]
    p_value: float
    examples: int  # N, the test set's size
    informative: int  # examples that move the difference (paired: differ in some seed): the only ones resampled
    seeds_baseline: int
    seeds_variant: int
    paired: bool
    resamples: int


def example_bootstrap(baseline: np.ndarray, variant: np.ndarray, *, paired: bool, resamples: int = RESAMPLES,
                      seed: int = 0, level: float = 1 - ALPHA) -> ExampleTest:
    """Two-level paired bootstrap of mean(variant) - mean(baseline) over seeds and test examples.

    `baseline` and `variant` are (seeds, N) score matrices over the same N test examples: 1/0
    for correct/wrong (fractions when an estimator averages epochs), or per-example losses.
    `paired`: row i of both is the same seed. The two-sided p-value is the percentile
    bootstrap's, 2 * min(P(D <= 0), P(D >= 0)) with the +1 correction that keeps it above 0;
    `seed` fixes the resampling, so a report is reproducible.
    """
    a, b = np.atleast_2d(np.asarray(baseline, dtype=float)), np.atleast_2d(np.asarray(variant, dtype=float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"both sides must score the same test examples, got {a.shape[1]} and {b.shape[1]}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError("paired score matrices must have the same number of seeds")
    (sa, n), sb = a.shape, b.shape[0]
    diff = float(b.mean() - a.mean())
    # An example that adds the same to both sides in every seed adds exactly 0 to every resample
    # (paired: its per-seed differences are 0; unpaired: one score everywhere), and examples with
    # the same column add the same amount: a resample only needs how many of its N draws land in
    # each group of identical informative columns.
    rows = b - a if paired else np.vstack([a, b])
    keep = np.any(rows != 0, axis=0) if paired else np.ptp(rows, axis=0) > 0
    k_inf = int(keep.sum())
    if k_inf == 0:
        return ExampleTest(diff, (diff, diff), 1.0, n, 0, sa, sb, paired, 0)
    columns, group = np.unique(rows[:, keep], axis=1, return_inverse=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 4_000_000 // k_inf))
    draws = []
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        wa = rng.multinomial(sa, np.full(sa, 1 / sa), size=m) / sa
        sums = _landings(rng, m, n, group.ravel(), columns.shape[1]) @ columns.T  # (m, rows): score sums
        if paired:  # one seed draw for both sides
            draws.append((sums * wa).sum(axis=1) / n)
        else:
            wb = rng.multinomial(sb, np.full(sb, 1 / sb), size=m) / sb
            draws.append(((sums[:, sa:] * wb).sum(axis=1) - (sums[:, :sa] * wa).sum(axis=1)) / n)
    d = np.concatenate(draws)
    d[np.abs(d) < 1e-12] = 0.0  # a resample with no difference is 0 on both sides, not +-1e-17
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    tail = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    p = min(1.0, 2 * (tail + 1) / (resamples + 1))
    return ExampleTest(diff, (float(lo), float(hi)), p, n, k_inf, sa, sb, paired, resamples)


def _landings(rng: np.random.Generator, m: int, n: int, group: np.ndarray, groups: int) -> np.ndarray:
    """(m, groups): in each of m resamples of n examples drawn with replacement, how many land in
    each group of informative examples (`group[i]` is example i's group; the other n - K
    examples are not listed). Exactly the multinomial of the draws, by the cheaper of two routes:
    a multinomial over the groups (cost per resample ~ groups), or k ~ Binomial(n, K/n) draws
    spread uniformly over the K examples (cost ~ K, cheaper when most groups are single)."""
    k = len(group)
    sizes = np.bincount(group, minlength=groups)
    if groups * 5 <= k:
        return rng.multinomial(n, np.append(sizes / n, 1 - k / n), size=m)[:, :groups].astype(float)
    landed = rng.binomial(n, k / n, size=m)
    cells = np.repeat(np.arange(m) * groups, landed) + group[rng.integers(0, k, size=int(landed.sum()))]
    return np.bincount(cells, minlength=m * groups).reshape(m, groups).astype(float)


def stricter_p(d: Difference, examples: ExampleTest | None) -> float | None:
    """The p-value of "both tests reject": the larger of the replicate test's and the example
    test's (an intersection-union test, valid at the same level). None without a replicate test."""
    if d.p_value is None:
        return None
    return d.p_value if examples is None else max(d.p_value, examples.p_value)


# ---------------------------------------------------------------------------------------------
# Families of comparisons and counts of failed trainings.
# ---------------------------------------------------------------------------------------------


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels `multipletests(method="holm")`); None stays None and
    is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if present:
        gc.freeze()  # multipletests' Holm branch calls gc.collect(): seconds with 10,000 results in memory
        try:
            adjusted = multipletests([p_values[i] for i in present], alpha=alpha, method="holm")[1]
        finally:
            gc.unfreeze()
        for i, q in zip(present, adjusted, strict=True):
            out[i] = float(q)
    return out


@dataclass(frozen=True)
class FailureTest:
    """Failed trainings (diverged, or failed by a study's rule) of a group against the baseline."""

    failed_baseline: int
    runs_baseline: int
    failed_variant: int
    runs_variant: int
    odds_ratio: float | None
    p_value: float


def fisher_failures(failed_baseline: int, runs_baseline: int, failed_variant: int, runs_variant: int
                    ) -> FailureTest:
    """Two-sided Fisher exact test on the 2x2 table (failed, not failed) x (baseline, variant),
    scipy's `fisher_exact`: the DAC paper's "15/576 against 2/449, bilateral p-value 0.0063"."""
    table = [[failed_baseline, runs_baseline - failed_baseline], [failed_variant, runs_variant - failed_variant]]
    res = sps.fisher_exact(table, alternative="two-sided")
    odds = float(res.statistic)
    return FailureTest(failed_baseline, runs_baseline, failed_variant, runs_variant,
                       odds if math.isfinite(odds) else None, float(res.pvalue))


# ---------------------------------------------------------------------------------------------
# The plain-words verdict.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str  # better | worse | inconclusive
    text: str  # short enough for a table cell
    detail: str = ""  # one sentence: why, and what would settle it
    replicates_needed: int | None = None


def _pooled_sd(d: Difference) -> float | None:
    """The noise estimate for planning: the per-seed differences' sd when paired, else the pooled
    sd of the sides that have one (with n = 1 on a side, the other side's spread)."""
    if d.test == "paired":
        return d.sd_diff
    sds = [s for s in (d.sd_baseline, d.sd_variant) if s is not None]
    return math.sqrt(sum(s * s for s in sds) / len(sds)) if sds else None


def verdict(d: Difference, higher_is_better: bool, *, examples: ExampleTest | None = None,
            p_value: float | None = None, resolution: float | None = None, alpha: float = ALPHA) -> Verdict:
    """better / worse when the difference is clear at `alpha`, else inconclusive with the reason.

    `p_value` is what the decision uses (the Holm-adjusted one in a family); by default the
    stricter of the replicate test and the example-level test (`stricter_p`). `resolution` is
    the smallest difference the test set can show (1/N for an accuracy on N examples). Rules:
    a difference below the resolution is never called; zero or near-zero replicate spread (an SE
    below the resolution) is never trusted without the example-level test; one replicate on a
    side has no test at all.
    """
    improved = d.diff > 0 if higher_is_better else d.diff < 0
    sd = _pooled_sd(d)
    paired = d.test == "paired"
    if d.test == "none":
        return _plan(d, sd, paired, alpha, one_replicate=True)
    if d.diff == 0 and d.se == 0 and (examples is None or examples.diff == 0):
        return Verdict("inconclusive", "inconclusive: identical", "identical results: no difference to detect")
    if resolution is not None and abs(d.diff) < resolution * (1 - 1e-9):  # one example is resolved
        return Verdict("inconclusive", "too small for this test set",
                       f"effect too small to resolve with this test set: the difference {abs(d.diff):.3g} is "
                       f"below one test example ({resolution:.3g}); more replicates cannot change that")
    flat = d.se == 0 or (resolution is not None and d.se is not None and d.se < resolution)
    if examples is None and flat:
        spread = ("every seed shows the same difference (zero variance)" if d.se == 0 else
                  f"the replicates' spread is below one test example (SE {d.se:.3g} < {resolution:.3g})")
        return Verdict("inconclusive", f"inconclusive: {'zero' if d.se == 0 else 'near-zero'} variance",
                       f"{spread}, so the t-test cannot see the test set's own sampling noise; per-example "
                       "predictions (predictions.npz) would add the test over examples and seeds")
    p = p_value if p_value is not None else stricter_p(d, examples)
    if p is not None and p < alpha and d.diff != 0:
        return Verdict("better" if improved else "worse", "better" if improved else "worse")
    raw = stricter_p(d, examples)
    if raw is not None and raw < alpha:
        return Verdict("inconclusive", "inconclusive after Holm",
                       f"clear alone (p={raw:.3g}) but not after Holm's adjustment for the comparisons made "
                       f"together (p={p:.3g})")
    if examples is not None and d.p_value is not None and d.p_value < alpha <= examples.p_value:
        return Verdict("inconclusive", "inconclusive: test-set noise",
                       f"the replicates agree (t-test p={d.p_value:.3g}) but the difference is within the test "
                       f"set's sampling noise (p={examples.p_value:.3g} over examples and seeds); a larger test "
                       "set, not more replicates, would settle it")
    if d.diff == 0:
        return Verdict("inconclusive", "inconclusive: no difference", "no observed difference")
    return _plan(d, sd, paired, alpha, one_replicate=False)


def _plan(d: Difference, sd: float | None, paired: bool, alpha: float, *, one_replicate: bool) -> Verdict:
    """Inconclusive, with the replicates a t-test would need for the observed effect and noise."""
    why = "one replicate on a side has no spread, so no confidence interval or test; " if one_replicate else ""
    short = "inconclusive: n=1" if one_replicate else "inconclusive"
    if sd is None:
        return Verdict("inconclusive", short, f"{why}run at least 2 replicates of each, better 5")
    n = replicates_needed(d.diff, sd, paired=paired, alpha=alpha)
    if n is None:
        if d.diff == 0:
            return Verdict("inconclusive", short, f"{why}no observed difference")
        return Verdict("inconclusive", short if one_replicate else f"inconclusive: >{MAX_REPLICATES} replicates",
                       f"{why}the difference is small next to the noise: more than {MAX_REPLICATES} replicates "
                       "would be needed")
    n = max(n, min(d.n_baseline, d.n_variant) + 1)  # always more than we have: with these we could not tell
    return Verdict("inconclusive", short if one_replicate else f"inconclusive: needs ~{n} replicates",
                   f"{why}needs about {n} replicates per side for {POWER:.0%} power at alpha {alpha} with the "
                   "observed difference and noise", n)


# ---------------------------------------------------------------------------------------------
# Estimators over epochs: one value per replicate (DAC paper, section B; spec/methods.md §6).
# ---------------------------------------------------------------------------------------------

History = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Estimate:
    """One estimator applied to the replicates of one configuration.

    `window` is the first and last epoch averaged (1-based, inclusive) as actually used, clipped
    to the run; the same for every replicate. `epoch` is the chosen epoch (e* for `robust`, the
    last for `final`, the best replicate-mean test epoch for `min_mean`)."""

    estimator: str
    value: float  # the mean over replicates of `per_replicate`
    epoch: int
    window: tuple[int, int]
    selected_by: str | None  # the metric that chose the epoch (val_acc; test_acc when there is no validation)
    per_replicate: tuple[float, ...]  # the sample every CI and test uses
    summary: Summary


def _common_length(histories: Sequence[History], key: str) -> int:
    """Epochs that every replicate has a value of `key` for (a shorter run limits the others)."""
    lengths = []
    for h in histories:
        n = 0
        for row in h:
            v = row.get(key)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                break
            n += 1
        lengths.append(n)
    return min(lengths) if lengths else 0


def _matrix(histories: Sequence[History], key: str, length: int) -> np.ndarray:
    return np.array([[h[e][key] for e in range(length)] for h in histories], dtype=float)


def estimate(histories: Sequence[History], estimator: str = "final", *, metric: str = "test_acc",
             higher_is_better: bool = True, window: int = 5) -> Estimate | None:
    """The per-replicate values of one estimator (None when no epoch has the metric).

    final: each replicate's last epoch (the last one they all have).
    robust: the DAC paper's robust best estimate: average the validation metric over replicates
      per epoch, take the best epoch e*, then average the test metric over the `window` epochs
      centred on e* (e*-2 .. e*+2 for 5), clipped to the run. Choosing e* on the replicate *mean*
      of validation, not per replicate and not on test, keeps it from rewarding lucky noise.
      Without a validation split e* is chosen on the test metric itself (optimistic; see
      `selected_by`).
    min_mean: the epoch with the best replicate-mean test metric (the paper's "minimum over
      epochs of the mean test error"; chosen on test, so optimistic), each replicate's value there.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if not histories:
        return None
    pick = np.argmax if higher_is_better else np.argmin
    length = _common_length(histories, metric)
    select: str | None = None
    if estimator == "robust":
        select = f"val_{metric.split('_', 1)[1]}"
        if _common_length(histories, select) == 0:
            select = metric
        length = min(length, _common_length(histories, select))
    if length == 0:
        return None
    test = _matrix(histories, metric, length)
    if estimator == "final":
        best, lo, hi = length - 1, length - 1, length - 1
    elif estimator == "min_mean":
        select = metric
        best = int(pick(test.mean(axis=0)))  # first of ties: the earliest epoch
        lo = hi = best
    else:
        assert select is not None
        best = int(pick(_matrix(histories, select, length).mean(axis=0)))
        lo, hi = max(0, best - window // 2), min(length - 1, best + window // 2)
    per_rep = test[:, lo: hi + 1].mean(axis=1)
    s = summarize(per_rep)
    return Estimate(estimator, float(per_rep.mean()), best + 1, (lo + 1, hi + 1), select,
                    tuple(float(v) for v in per_rep), s)


def robust_best_accuracy(histories: Sequence[History], *, metric: str = "test_acc", window: int = 5,
                         higher_is_better: bool = True) -> Estimate | None:
    """The paper's robust best-test estimator: `estimate(..., "robust")`. Works for losses too
    (`metric="test_loss"`, `higher_is_better=False`)."""
    return estimate(histories, "robust", metric=metric, higher_is_better=higher_is_better, window=window)


@dataclass(frozen=True)
class MinOverEpochs:
    """The paper's simple figure: min over epochs of the replicate-mean error, with its SE there."""

    error: float  # 1 - accuracy for accuracies; the loss itself for losses
    epoch: int  # 1-based
    se: float | None  # SE over replicates at that epoch; None for n = 1


def min_mean_error(histories: Sequence[History], *, metric: str = "test_acc",
                   higher_is_better: bool = True) -> MinOverEpochs | None:
    """Minimum over epochs of the replicate-mean test error, +- one standard error at that epoch
    (the DAC paper's Table 1 figure, in error units; `estimate(..., "min_mean")` in the metric's)."""
    e = estimate(histories, "min_mean", metric=metric, higher_is_better=higher_is_better)
    if e is None:
        return None
    return MinOverEpochs(1.0 - e.value if higher_is_better else e.value, e.epoch, e.summary.se)
