"""Statistics over seeds: mean +- std, the bootstrap interval of a difference between two variants, and the
"facts" sentences that state an ordering only when that interval excludes 0.

Difference of variants A and B on a metric, paired by seed (seed s of A and seed s of B train on the same data
order and start from the same weights except for the block, so their difference is the natural unit):

    d_s = m_A(s) - m_B(s)                     one value per seed present in both
    CI  = the 2.5 and 97.5 percentiles of mean(d*) over ``resamples`` bootstrap resamples d* of the seeds
          (drawn with replacement, scipy.stats.bootstrap, method "percentile")

With n seeds the resampled means take at most C(2n - 1, n) values (10 with 3 seeds): the interval is crude, and
narrower than a t-interval would be. With one seed there is no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """mean(A - B) over the seeds both have, and its bootstrap interval (NaN when fewer than 2 seeds)."""

    mean: float
    low: float
    high: float
    seeds: int

    @property
    def excludes_zero(self) -> bool:
        return self.seeds >= 2 and (self.low > 0 or self.high < 0)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value) of the finite values; NaNs when there are none."""
    a = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def paired_difference(
    a: dict[int, float], b: dict[int, float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> Difference:
    """A - B paired by seed (module docstring); ``a``, ``b``: seed -> value. Seeds with a NaN in either are left out."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    if d.size == 0:
        return Difference(math.nan, math.nan, math.nan, 0)
    if d.size == 1 or np.all(d == d[0]):  # no spread to resample (scipy would warn of a degenerate sample)
        low = high = float(d[0]) if d.size > 1 else math.nan
        return Difference(float(d.mean()), low, high, int(d.size))
    result = stats.bootstrap(
        (d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile", rng=seed, vectorized=True
    )
    ci = result.confidence_interval
    return Difference(float(d.mean()), float(ci.low), float(ci.high), int(d.size))


def ordering(label_a: str, label_b: str, diff: Difference, metric: str) -> str:
    """One facts line: A - B with its interval; ``A > B`` or ``A < B`` only when the interval excludes 0."""
    if diff.seeds == 0:
        return f"- {metric}: {label_a} - {label_b}: no seed has both."
    if diff.seeds < 2:
        return f"- {metric}: {label_a} - {label_b} = {diff.mean:+.4g} (1 seed: no interval, no ordering stated)."
    interval = f"{diff.mean:+.4g}, 95% CI [{diff.low:+.4g}, {diff.high:+.4g}] ({diff.seeds} seeds, paired)"
    if not diff.excludes_zero:
        return f"- {metric}: {label_a} - {label_b} = {interval}: the interval includes 0, no ordering."
    return f"- {metric}: {label_a} - {label_b} = {interval}: **{label_a} {'>' if diff.mean > 0 else '<'} {label_b}**."


def mean_interval(values: dict[int, float], resamples: int = RESAMPLES, level: float = LEVEL) -> Difference:
    """The mean over seeds of one variant's metric and its percentile-bootstrap interval (the paired difference
    against 0: the same resampling of the seeds); ``values``: seed -> value, NaNs left out."""
    return paired_difference(values, dict.fromkeys(values, 0.0), resamples, level)


def interval_cell(diff: Difference, digits: int) -> str:
    """``mean [low, high]`` for a table (``mean (1 seed)`` without an interval, ``-`` with no value)."""
    if diff.seeds == 0:
        return "-"
    if diff.seeds == 1:
        return f"{diff.mean:.{digits}f} (1 seed)"
    return f"{diff.mean:.{digits}f} [{diff.low:.{digits}f}, {diff.high:.{digits}f}]"
