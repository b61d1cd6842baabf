"""Statistics of a comparison over seeds: intervals, tests against a baseline, Holm, ranks.

Pure functions of plain numbers (numpy + scipy), so the report and its tests share them and a
simulation can check them without training anything.

- ``mean`` and ``std``: over a cell's seeds, NaN ignored (a run without the value).
- ``t_interval``: the 95% interval of a mean is a Student-t interval over the seeds. Sweeps run
  3 to 5 seeds; a seed's test metric averages thousands of samples, so it is close to normal, and
  the t quantile pays honestly for estimating the spread from so few values. A bootstrap over 3
  values is degenerate: it can only resample those 3 values and its interval is far too narrow.
- ``compare``: the difference of a cell to the baseline cell, with its interval and a two-sided
  p-value. When both cells ran the same seeds, each seed is a pair (same data order, same
  initialisation seed) and the paired t-test removes that shared noise; otherwise Welch's t-test,
  which does not assume equal variances. Fewer than two seeds on either side: no test.
- ``holm``: Holm's step-down adjustment of a family of p-values (family-wise error <= alpha,
  valid under any dependence, uniformly more powerful than Bonferroni).
- ``verdict``: better / worse / indistinguishable, by the metric's declared direction.
- ``mean_ranks``: the mean rank of each variant over several datasets, as benchmark papers show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from attnexp.tasks.spec import MAX, check_direction

LEVEL = 0.95  # the confidence level of every interval
ALPHA = 1 - LEVEL  # the significance level of every verdict

PAIRED = "paired"
WELCH = "welch"
NO_TEST = "no test"
BETTER = "better"
WORSE = "worse"
INDISTINGUISHABLE = "indistinguishable"


def _finite(xs: Sequence[float]) -> np.ndarray:
    a = np.asarray(xs, dtype=float)
    return a[~np.isnan(a)]


def mean(xs: Sequence[float]) -> float:
    """The mean of ``xs``, NaN ignored; NaN when none is left."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def std(xs: Sequence[float]) -> float:
    """The sample standard deviation of ``xs`` (n - 1), NaN ignored; NaN below two values."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value: ``t`` with P(|T_df| <= t) = ``level``."""
    return float(sps.t.ppf(0.5 + level / 2, df))


def t_interval(xs: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` t-interval of the mean of ``xs`` (NaN ignored); (NaN, NaN) below 2 values."""
    a = _finite(xs)
    if len(a) < 2:
        return math.nan, math.nan
    half = t_quantile(len(a) - 1, level) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean() - half), float(a.mean() + half)


def _p_value(t_num: float, se: float, df: float) -> float:
    """Two-sided p of ``t_num / se`` on ``df`` degrees of freedom. With no spread at all (every
    seed gives the same difference) the difference is exact: p = 0 if it is not zero, else 1."""
    if se == 0:
        return 1.0 if t_num == 0 else 0.0
    return float(2 * sps.t.sf(abs(t_num / se), df))


@dataclass(frozen=True)
class Comparison:
    """A cell against the baseline cell: ``diff`` = cell mean - baseline mean."""

    test: str  # PAIRED, WELCH or NO_TEST
    diff: float
    low: float  # the LEVEL interval of diff; NaN with no test
    high: float
    p: float  # two-sided, unadjusted; NaN with no test
    n: int  # pairs (paired) or the smaller group (Welch)


def compare(
    cell: Sequence[tuple[Hashable, float]],
    baseline: Sequence[tuple[Hashable, float]],
    level: float = LEVEL,
) -> Comparison:
    """``cell`` against ``baseline``, each a list of (seed, value); NaN values are dropped.

    Paired by seed when both hold the same seeds, each once; Welch's otherwise; no test when
    either side has fewer than two values (or fewer than two pairs)."""
    cell = [(s, v) for s, v in cell if not math.isnan(v)]
    baseline = [(s, v) for s, v in baseline if not math.isnan(v)]
    x = np.array([v for _, v in cell])
    y = np.array([v for _, v in baseline])
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    by_seed = [dict(cell), dict(baseline)]  # a seed run twice in a cell cannot be paired
    paired = (
        len(by_seed[0]) == len(cell)
        and len(by_seed[1]) == len(baseline)
        and set(by_seed[0]) == set(by_seed[1])
    )
    if paired and len(cell) >= 2:
        d = np.array([by_seed[0][s] - by_seed[1][s] for s in by_seed[0]])
        df = len(d) - 1
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        half = t_quantile(df, level) * se
        return Comparison(PAIRED, diff, diff - half, diff + half, _p_value(diff, se, df), len(d))
    if len(x) < 2 or len(y) < 2:
        return Comparison(NO_TEST, diff, math.nan, math.nan, math.nan, min(len(x), len(y)))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    # Welch-Satterthwaite degrees of freedom; any df works when se is 0 (the p is exact then).
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if se else 1.0
    half = t_quantile(df, level) * se
    return Comparison(
        WELCH, diff, diff - half, diff + half, _p_value(diff, se, df), min(len(x), len(y))
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order; NaN (no test) stays NaN and is not counted in
    the family. The i-th smallest of m is multiplied by m - i + 1, then made monotone and
    capped at 1: reject where the adjusted p < alpha."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(comparison: Comparison, p_adjusted: float, direction: str, alpha: float = ALPHA) -> str:
    """``better``/``worse`` when the adjusted p is below ``alpha`` (the sign of the difference
    read by the metric's ``direction``), else ``indistinguishable``; ``no test`` without one."""
    check_direction("direction", direction)
    if comparison.test == NO_TEST or math.isnan(p_adjusted):
        return NO_TEST
    if p_adjusted >= alpha:
        return INDISTINGUISHABLE
    higher = comparison.diff > 0
    return BETTER if higher == (direction == MAX) else WORSE


@dataclass(frozen=True)
class RankSummary:
    """A variant's ranks over datasets: 1 is best; ties share their mean rank."""

    mean: float
    std: float  # sample std over datasets; NaN over one
    best: float
    worst: float
    n: int  # datasets the variant was ranked on


def ranks(scores: Mapping[Hashable, float], direction: str) -> dict[Hashable, float]:
    """Rank each variant's score, 1 = best in ``direction``; ties get their mean rank; NaN
    scores are left out."""
    check_direction("direction", direction)
    items = [(k, v) for k, v in scores.items() if not math.isnan(v)]
    sign = -1.0 if direction == MAX else 1.0
    r = sps.rankdata([sign * v for _, v in items], method="average")
    return {k: float(x) for (k, _), x in zip(items, r, strict=True)}


def mean_ranks(
    tables: Sequence[tuple[Mapping[Hashable, float], str]],
) -> dict[Hashable, RankSummary]:
    """Each variant's rank summary over ``tables``, each (scores by variant, direction)."""
    seen: dict[Hashable, list[float]] = {}
    for scores, direction in tables:
        for k, r in ranks(scores, direction).items():
            seen.setdefault(k, []).append(r)
    return {
        k: RankSummary(
            mean=float(np.mean(rs)),
            std=float(np.std(rs, ddof=1)) if len(rs) >= 2 else math.nan,
            best=min(rs),
            worst=max(rs),
            n=len(rs),
        )
        for k, rs in seen.items()
    }
