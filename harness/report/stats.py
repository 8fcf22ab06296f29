"""The statistics behind the claims' verdicts: an interval for a per-seed effect, a verdict read
off it, and a sign test across datasets (docs/design.md §3.5). numpy only, and deterministic: the
resamples come from a fixed seed, so the same runs always give the same report."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
CHUNK = 1_000
"""Resamples drawn at once: bounds memory at CHUNK x n indices however many seeds there are."""
METHOD = (f"Intervals: {LEVEL:.0%} percentile bootstrap of the mean over paired seeds (ratios "
          f"on the log scale; {RESAMPLES:,} resamples, seed {SEED}); across datasets: one-sided "
          "exact sign test. With few seeds a percentile interval is narrower than its level (it "
          "never leaves the range of the seeds' values): at n = 3 a verdict says the seeds agree "
          "in direction, not that 95% confidence was reached.")
"""The sentence the report prints beside the claims."""


class Interval(NamedTuple):
    """A mean over ``n`` values and its interval; ``low``/``high`` are None when ``n`` < 2."""

    mean: float
    low: float | None
    high: float | None
    n: int


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty list of numbers, got {len(np.atleast_1d(x))} values")
    if not np.isfinite(x).all():
        raise ValueError(f"values must be finite, got {x[~np.isfinite(x)][0]}")
    return x


def bootstrap_mean(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, An Introduction to the
    Bootstrap, ch. 13): ``resamples`` means of n values drawn with replacement; the bounds are
    the B*a-th and B*(1-a)-th ordered means, a = (1 - level)/2 (numpy's ``inverted_cdf``
    quantile is exactly that order statistic). One value gives no interval. With few values the
    interval is narrow by construction (with two it lies between them), so a verdict on few seeds
    is weak evidence, and the report prints n beside every interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    x = _values(values)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, 1)
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, x.size, (min(CHUNK, resamples - i), x.size))]
                            .mean(axis=1) for i in range(0, resamples, CHUNK)])
    a = round((1 - level) / 2, 12)  # 1 - 0.95 is 0.05000000000000004 in floating point
    low, high = np.quantile(means, [a, 1 - a], method="inverted_cdf")
    return Interval(mean, float(low), float(high), int(x.size))


def sign_test(values: Sequence[float], null: float, lower: bool = True) -> float:
    """One-sided exact sign test (Conover 1999, Practical Nonparametric Statistics, §3.4): the
    probability, under "no effect", of at least as many values on the claimed side of ``null``
    (below it when ``lower``) as observed, k of the m values off ``null``: sum_{i>=k} C(m, i)/2^m.
    Assumes the values (one per dataset) are independent and that, with no effect, each lies
    on either side with probability 1/2; values equal to ``null`` (ties) are dropped. With no
    value off ``null`` the p-value is 1. The smallest attainable p is 0.5^m."""
    x = _values(values) if len(values) else np.zeros(0)  # no datasets: p = 1
    m = int((x != null).sum())
    k = int((x < null).sum() if lower else (x > null).sum())
    return math.fsum(math.comb(m, i) for i in range(k, m + 1)) / 2 ** m


def verdict(interval: Interval, null: float, lower: bool = True) -> str:
    """"holds" when the interval lies wholly on the claimed side of ``null`` (below it when
    ``lower``), "does not hold" when wholly on the other side, else "inconclusive (n = k)" —
    always so with fewer than two values, which have no interval. An interval touching ``null``
    does not exclude it."""
    if interval.n < 2 or interval.low is None or interval.high is None:
        return inconclusive(interval.n)
    below, above = interval.high < null, interval.low > null
    if below or above:
        return "holds" if below == lower else "does not hold"
    return inconclusive(interval.n)


def inconclusive(n: int, unit: str = "") -> str:
    return f"inconclusive (n = {n}{' ' + unit if unit else ''})"
