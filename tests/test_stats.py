"""The statistics of the comparison report: known answers and simulations whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from attnexp.report.rows import stats as st
from attnexp.tasks.spec import MAX, MIN

# A deterministic simulation's rate lies within this many binomial standard deviations of the
# nominal one; 3.5 sd fails a correct implementation about once in 2000 seeds.
BAND_SD = 3.5


def _within_binomial_band(hits: int, n: int, rate: float) -> bool:
    return abs(hits - n * rate) <= BAND_SD * math.sqrt(n * rate * (1 - rate))


def test_t_quantiles_are_the_table_values():
    assert st.t_quantile(1) == pytest.approx(12.706204736174705)
    assert st.t_quantile(2) == pytest.approx(4.302652729911275)
    assert st.t_quantile(4) == pytest.approx(2.7764451051977987)
    assert st.t_quantile(1e9) == pytest.approx(1.959963984540054)


def test_t_interval_known_answer_and_undefined_below_two_values():
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # mean 2, sample sd 1, 3 values
    assert st.t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - half, 2 + half))
    assert st.t_interval([1.0, math.nan, 2.0, 3.0]) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(x) for x in st.t_interval([5.0]))
    assert all(math.isnan(x) for x in st.t_interval([]))


def test_t_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    n, true_mean = 2000, 0.8
    covered = 0
    for _ in range(n):
        low, high = st.t_interval(rng.normal(true_mean, 0.02, size=3))
        covered += low <= true_mean <= high
    assert _within_binomial_band(covered, n, st.LEVEL), covered / n


def test_paired_when_the_seeds_match_welch_otherwise_no_test_below_two():
    a = [(0, 0.80), (1, 0.82), (2, 0.81)]
    assert st.compare(a, [(2, 0.70), (0, 0.71), (1, 0.73)]).test == st.PAIRED  # order is free
    assert st.compare(a, [(0, 0.70), (1, 0.71), (5, 0.73)]).test == st.WELCH
    assert st.compare(a, [(0, 0.70), (1, 0.71)]).test == st.WELCH
    assert st.compare(a, [(0, 0.70), (0, 0.71), (1, 0.7)]).test == st.WELCH  # seed 0 twice
    one = st.compare(a, [(0, 0.70)])
    assert one.test == st.NO_TEST and math.isnan(one.p) and math.isnan(one.low)
    assert one.diff == pytest.approx(0.81 - 0.70)
    assert st.compare([(0, 0.8)], [(0, 0.7)]).test == st.NO_TEST  # one pair


def test_paired_and_welch_known_answers():
    x, y = [0.80, 0.82, 0.85, 0.79], [0.78, 0.81, 0.80, 0.77]
    paired = st.compare(list(enumerate(x)), list(enumerate(y)))
    d = np.subtract(x, y)  # 0.02, 0.01, 0.05, 0.02: mean 0.025, sd 0.017320508
    assert paired.diff == pytest.approx(0.025)
    half = 3.182446305284263 * 0.017320508075688773 / 2  # t(3) quantile * sd / sqrt(4)
    assert (paired.low, paired.high) == pytest.approx((0.025 - half, 0.025 + half))
    assert paired.p == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue)
    assert paired.p == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    welch = st.compare(list(zip("abcd", x, strict=True)), list(zip("efg", y[:3], strict=True)))
    assert welch.test == st.WELCH
    assert welch.p == pytest.approx(scipy_stats.ttest_ind(x, y[:3], equal_var=False).pvalue)
    assert welch.diff == pytest.approx(np.mean(x) - np.mean(y[:3]))


def test_pairing_removes_the_noise_the_seeds_share():
    # Each seed shifts both cells alike (its data order and initialisation); the cell is 0.01
    # better on every seed. Paired, that is certain; unpaired, the seed noise hides it.
    seed_effect = [0.00, 0.05, -0.04, 0.03]
    base = [(s, 0.80 + e) for s, e in enumerate(seed_effect)]
    cell = [(s, 0.81 + e + 0.001 * (-1) ** s) for s, e in enumerate(seed_effect)]
    assert st.compare(cell, base).p < 0.001
    unpaired = st.compare([(s + 10, v) for s, v in cell], base)
    assert unpaired.test == st.WELCH and unpaired.p > 0.5


def test_no_spread_at_all_is_an_exact_difference():
    same = [(0, 0.5), (1, 0.5)]
    assert st.compare(same, same).p == 1.0
    assert st.compare([(0, 0.6), (1, 0.6)], same).p == 0.0


@pytest.mark.parametrize("paired", [True, False])
def test_cells_from_one_distribution_are_indistinguishable_at_the_nominal_rate(paired):
    rng = np.random.default_rng(1 + paired)
    n, flagged = 400, 0
    for _ in range(n):
        base = list(enumerate(rng.normal(0.8, 0.02, size=3)))
        seeds = range(3) if paired else range(3, 6)
        cell = list(zip(seeds, rng.normal(0.8, 0.02, size=3), strict=True))
        c = st.compare(cell, base)
        assert c.test == (st.PAIRED if paired else st.WELCH)
        flagged += st.verdict(c, c.p, MAX) != st.INDISTINGUISHABLE
    assert _within_binomial_band(flagged, n, st.ALPHA), flagged / n


@pytest.mark.parametrize(
    ("direction", "shift", "expected"),
    [(MAX, +0.1, st.BETTER), (MAX, -0.1, st.WORSE), (MIN, +0.1, st.WORSE), (MIN, -0.1, st.BETTER)],
)
def test_a_clear_difference_is_flagged_with_the_direction_of_the_metric(direction, shift, expected):
    rng = np.random.default_rng(3)
    base = list(enumerate(rng.normal(1.0, 0.01, size=3)))
    cell = list(zip(range(3, 6), rng.normal(1.0 + shift, 0.01, size=3), strict=True))
    c = st.compare(cell, base)
    assert c.p < st.ALPHA and (c.low > 0) == (shift > 0) and (c.high < 0) == (shift < 0)
    assert st.verdict(c, c.p, direction) == expected
    assert st.verdict(c, 0.2, direction) == st.INDISTINGUISHABLE  # after an adjustment


def test_verdict_without_a_test_says_so():
    c = st.compare([(0, 0.9)], [(0, 0.1)])
    assert st.verdict(c, math.nan, MAX) == st.NO_TEST
    with pytest.raises(ValueError, match="direction must be one of max, min"):
        st.verdict(c, 0.01, "higher")


def test_holm_against_a_hand_computed_case():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06.
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # A row without a test is not in the family: m = 2.
    adjusted = st.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    assert st.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert st.holm([]) == []


def test_holm_keeps_the_family_wise_error_rate():
    # 5 true nulls per family: at least one false "different" in at most about alpha of families.
    rng = np.random.default_rng(4)
    n, any_flagged = 400, 0
    for _ in range(n):
        adjusted = st.holm(list(rng.uniform(size=5)))
        any_flagged += min(adjusted) < st.ALPHA
    assert any_flagged <= n * st.ALPHA + BAND_SD * math.sqrt(n * st.ALPHA * (1 - st.ALPHA))


def test_ranks_follow_the_direction_and_share_ties():
    scores = {"a": 0.9, "b": 0.7, "c": 0.9, "d": math.nan}
    assert st.ranks(scores, MAX) == {"a": 1.5, "b": 3.0, "c": 1.5}
    assert st.ranks(scores, MIN) == {"a": 2.5, "b": 1.0, "c": 2.5}


def test_mean_ranks_over_datasets():
    tables = [
        ({"mha": 0.9, "se": 0.8, "none": 0.7}, MAX),
        ({"mha": 1.2, "se": 1.1, "none": 1.5}, MIN),  # a loss: se best
        ({"mha": 0.6, "none": 0.5}, MAX),  # se did not run here
    ]
    summary = st.mean_ranks(tables)
    assert summary["mha"].mean == pytest.approx((1 + 2 + 1) / 3)
    assert summary["mha"].std == pytest.approx(np.std([1, 2, 1], ddof=1))
    assert (summary["se"].mean, summary["se"].n) == (1.5, 2)
    assert (summary["none"].best, summary["none"].worst) == (2.0, 3.0)
    assert math.isnan(st.mean_ranks([({"x": 1.0}, MAX)])["x"].std)
