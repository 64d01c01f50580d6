"""Pure statistics for `compare`, `report` and the gate: no files, no printing.

Everything takes plain sequences of floats (one value per replicate) or per-epoch histories and
returns small frozen dataclasses. Distributions come from scipy (t quantiles, t-tests, the
non-central t of the power calculation); nothing here re-implements one. The rules and the
reasons for them are written up in docs/compare.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # two-sided significance level of every test and the 95% of every interval
POWER = 0.8  # the power the "needs about N replicates" advice aims for
MAX_REPLICATES = 1000  # beyond this the advice says "more than 1000": the effect is lost in noise


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
# Two configurations: difference, confidence interval, p-value.
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
    replicate shows) or p = 1 (no difference at all). scipy would return nan there.
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
        return Difference(
            len(a),
            len(b),
            diff,
            "none",
            None,
            None,
            None,
            None,
            sd_a,
            sd_b,
            None,
            f"{', '.join(few)}: one replicate has no spread, so no confidence interval or p-value",
        )
    if paired:
        d = b - a
        sd_d = _sd(d) or 0.0
        se = sd_d / math.sqrt(len(d))
        df: float = len(d) - 1
        p = _p_zero_se(diff) if se == 0 else float(sps.ttest_rel(b, a).pvalue)
        return Difference(
            len(a),
            len(b),
            diff,
            "paired",
            se,
            df,
            t_interval(diff, se, df),
            p,
            sd_a,
            sd_b,
            sd_d,
            _zero_note(se, paired=True),
        )
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)  # type: ignore[operator]
    se = math.sqrt(va + vb)
    if se == 0:
        df = len(a) + len(b) - 2
        p = _p_zero_se(diff)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        p = float(sps.ttest_ind(b, a, equal_var=False).pvalue)
    return Difference(
        len(a), len(b), diff, "welch", se, df, t_interval(diff, se, df), p, sd_a, sd_b, None, _zero_note(se)
    )


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
# How many replicates an effect of this size needs: the power of the two-sided t-test.
# ---------------------------------------------------------------------------------------------


def t_test_power(effect: float, sd: float, n: int, *, paired: bool, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test with n replicates per side for a true difference `effect`.

    Welch with equal n and (for the calculation) a common sd: se = sd*sqrt(2/n), df = 2n-2.
    Paired: `sd` is the sd of the per-seed differences, se = sd/sqrt(n), df = n-1.
    """
    if n < 2:
        return 0.0
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    df = n - 1 if paired else 2 * n - 2
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) / se
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def replicates_needed(
    effect: float,
    sd: float,
    *,
    paired: bool,
    alpha: float = ALPHA,
    power: float = POWER,
    max_n: int = MAX_REPLICATES,
) -> int | None:
    """Smallest n per side giving `power`; None when above `max_n` or the effect is zero."""
    if effect == 0 or not math.isfinite(effect):
        return None
    if sd == 0:
        return 2  # no noise: the smallest sample with a t statistic already shows it
    if t_test_power(effect, sd, max_n, paired=paired, alpha=alpha) < power:
        return None
    lo, hi = 2, max_n  # power grows with n: bisect for the first n that reaches it
    while lo < hi:
        mid = (lo + hi) // 2
        if t_test_power(effect, sd, mid, paired=paired, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------------------------------
# The plain-words verdict.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str  # better | worse | inconclusive
    text: str
    replicates_needed: int | None = None


def verdict(d: Difference, higher_is_better: bool, alpha: float = ALPHA) -> Verdict:
    """better / worse when the difference is significant at `alpha`, else inconclusive with advice."""
    improved = d.diff > 0 if higher_is_better else d.diff < 0
    if d.test != "none" and d.p_value is not None and d.p_value < alpha and d.diff != 0:
        return Verdict("better" if improved else "worse", "better" if improved else "worse")
    if d.diff == 0 and d.test != "none" and d.se == 0:
        return Verdict("inconclusive", "inconclusive: identical results, no difference to detect")
    # The noise estimate for the advice: the paired differences' sd, else the pooled sd of the
    # sides that have one (with n=1 on one side we borrow the other side's spread).
    paired = d.test == "paired"
    if paired:
        sd = d.sd_diff
    else:
        sds = [s for s in (d.sd_baseline, d.sd_variant) if s is not None]
        sd = math.sqrt(sum(s * s for s in sds) / len(sds)) if sds else None
    prefix = "inconclusive"
    if d.test == "none":
        prefix += f" (n={min(d.n_baseline, d.n_variant)}: no confidence interval)"
    if sd is None:
        return Verdict(
            "inconclusive",
            f"{prefix}: no replicate spread to plan from; run at least 2 replicates of each, better 5",
        )
    n = replicates_needed(d.diff, sd, paired=paired, alpha=alpha)
    if n is None:
        if d.diff == 0:
            return Verdict("inconclusive", f"{prefix}: no observed difference")
        return Verdict(
            "inconclusive",
            f"{prefix}: the difference is small next to the noise; more than "
            f"{MAX_REPLICATES} replicates would be needed",
        )
    have = min(d.n_baseline, d.n_variant)
    n = max(n, have + 1)  # the advice always asks for more than we have: with these we could not tell
    return Verdict("inconclusive", f"{prefix}: needs about {n} replicates", n)


# ---------------------------------------------------------------------------------------------
# The paper's estimators over epochs (DAC paper, section B; spec/methods.md section 6).
# ---------------------------------------------------------------------------------------------

History = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class RobustBest:
    value: float  # mean test metric over replicates and the epoch window
    epoch: int  # e*, 1-based, the best epoch of the replicate-mean selection metric
    window: tuple[int, int]  # first and last epoch (1-based, inclusive) averaged
    selected_by: str  # the metric that chose e* (val_acc; test_acc only when there is no validation)
    per_replicate: tuple[float, ...]  # each replicate's mean over the window: the sample for CIs
    summary: Summary


def _common_length(histories: Sequence[History], key: str) -> int:
    """Epochs that every replicate has a value of `key` for (a shorter run limits the others)."""
    lengths = []
    for h in histories:
        n = 0
        for row in h:
            if row.get(key) is None or not math.isfinite(row[key]):
                break
            n += 1
        lengths.append(n)
    return min(lengths) if lengths else 0


def robust_best_accuracy(
    histories: Sequence[History], *, metric: str = "test_acc", window: int = 5, higher_is_better: bool = True
) -> RobustBest | None:
    """The paper's robust best-test estimator.

    Average the validation metric over replicates per epoch, take the best epoch e*, then
    average the test metric over the replicates and the `window` epochs centred on e*
    (e*-2 .. e*+2 for 5), clipped to the run. Choosing e* on the replicate *mean* of validation,
    not per replicate and not on test, keeps the estimate from rewarding lucky noise. Without a
    validation split e* is chosen on the test metric itself (optimistic; `selected_by` says so).
    Works for losses too (`metric="test_loss"`, `higher_is_better=False`).
    """
    if not histories:
        return None
    suffix = metric.split("_", 1)[1]
    select = f"val_{suffix}"
    if _common_length(histories, select) == 0:
        select = metric
    length = min(_common_length(histories, select), _common_length(histories, metric))
    if length == 0:
        return None
    val = np.array([[h[e][select] for e in range(length)] for h in histories], dtype=float)
    test = np.array([[h[e][metric] for e in range(length)] for h in histories], dtype=float)
    curve = val.mean(axis=0)
    best = int(np.argmax(curve) if higher_is_better else np.argmin(curve))  # first of ties: earliest epoch
    half = window // 2
    lo, hi = max(0, best - half), min(length - 1, best + half)
    per_rep = test[:, lo : hi + 1].mean(axis=1)
    return RobustBest(
        float(per_rep.mean()),
        best + 1,
        (lo + 1, hi + 1),
        select,
        tuple(float(v) for v in per_rep),
        summarize(per_rep),
    )


@dataclass(frozen=True)
class MinOverEpochs:
    """The paper's simple figure: min over epochs of the replicate-mean error, with its SE there."""

    error: float  # 1 - accuracy for accuracies; the loss itself for losses
    epoch: int  # 1-based
    se: float | None  # SE over replicates at that epoch; None for n = 1


def min_mean_error(
    histories: Sequence[History], *, metric: str = "test_acc", higher_is_better: bool = True
) -> MinOverEpochs | None:
    """Minimum over epochs of the replicate-mean test error, +- one standard error at that epoch."""
    length = _common_length(histories, metric)
    if not histories or length == 0:
        return None
    vals = np.array([[h[e][metric] for e in range(length)] for h in histories], dtype=float)
    err = 1.0 - vals if higher_is_better else vals
    curve = err.mean(axis=0)
    best = int(np.argmin(curve))
    s = summarize(err[:, best])
    return MinOverEpochs(float(curve[best]), best + 1, s.se)
