"""The always-valid interval for a difference of accept rates: right on a clear case, and valid
under daily peeking where a fixed-sample interval is not."""

import math

import numpy as np
import pytest

from twotower_pipeline.model.sequential import accept_rate_difference, clustered_rate, rate_difference


def test_a_clear_difference_is_found_and_the_interval_is_wider_than_a_fixed_sample_one():
    found = accept_rate_difference(1_000, 20_000, 1_400, 20_000)  # 5% against 7%
    assert found.difference == pytest.approx(0.02)
    assert found.significant and found.low > 0 and found.low < 0.02 < found.high
    assert found.p_value < 0.05
    fixed = 1.96 * math.sqrt(0.05 * 0.95 / 20_000 + 0.07 * 0.93 / 20_000)
    assert found.high - found.low > 2 * fixed  # the price of looking as often as one likes


def test_no_difference_and_tiny_arms_are_not_significant():
    assert not accept_rate_difference(50, 1_000, 52, 1_000).significant
    quiet = accept_rate_difference(0, 3, 1, 3)
    assert not quiet.significant and quiet.low < 0 < quiet.high
    with pytest.raises(ValueError, match="both arms need exposures"):
        accept_rate_difference(0, 0, 1, 10)


def test_peeking_every_day_keeps_the_error_rate_where_a_fixed_interval_loses_it():
    """200 experiments with no true difference (5% both arms), 500 exposures per arm per day, looked
    at on each of 40 days: the share ever called significant stays under alpha for the always-valid
    interval, while the fixed-sample 95% interval, looked at daily, calls far more."""
    rng = np.random.default_rng(3)
    experiments, days, daily, rate = 200, 40, 500, 0.05
    a = rng.binomial(daily, rate, size=(experiments, days)).cumsum(axis=1)
    b = rng.binomial(daily, rate, size=(experiments, days)).cumsum(axis=1)
    exposures = daily * np.arange(1, days + 1)
    ever_valid = ever_fixed = 0
    for e in range(experiments):
        valid = fixed = False
        for d in range(days):
            found = accept_rate_difference(int(a[e, d]), int(exposures[d]), int(b[e, d]), int(exposures[d]))
            valid |= found.significant
            pa, pb, n = a[e, d] / exposures[d], b[e, d] / exposures[d], exposures[d]
            fixed |= abs(pb - pa) > 1.96 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
        ever_valid += valid
        ever_fixed += fixed
    print(f"\nnull experiments ever called significant under daily peeking: {ever_fixed} of {experiments} by a "
          f"fixed 95% interval, {ever_valid} by mSPRT")
    assert ever_valid / experiments <= 0.05
    assert ever_fixed / experiments > 0.15


def test_customers_who_differ_and_come_back_need_the_variance_over_customers():
    """200 A/A experiments (one policy in both arms): 1,000 customers each, whose accept
    probabilities differ (Beta(0.6, 2.4)), a customer split into an arm for good, 30% of them back
    each day for 20 days with 3 offers a visit, looked at daily (intervals intersected look by
    look). Counting exposures as independent trials calls about a quarter of them significant; the
    variance over customers keeps it under alpha."""
    rng = np.random.default_rng(0)
    experiments, naive_hits, clustered_hits = 200, 0, 0
    for _ in range(experiments):
        chance, challenger = rng.beta(0.6, 2.4, size=1000), rng.random(1000) < 0.5
        shown, accepted = np.zeros(1000), np.zeros(1000)
        naive, clustered = [-math.inf, math.inf], [-math.inf, math.inf]
        for _day in range(20):
            offers = 3 * (rng.random(1000) < 0.3)
            shown, accepted = shown + offers, accepted + rng.binomial(offers, chance)
            arms = [(accepted[m & (shown > 0)], shown[m & (shown > 0)]) for m in (~challenger, challenger)]
            look = accept_rate_difference(int(arms[0][0].sum()), int(arms[0][1].sum()), int(arms[1][0].sum()),
                                          int(arms[1][1].sum()))
            a, b = (clustered_rate(*arm) for arm in arms)
            over_customers = rate_difference(a.rate, a.variance, b.rate, b.variance)
            for bounds, found in ((naive, look), (clustered, over_customers)):
                bounds[0], bounds[1] = max(bounds[0], found.low), min(bounds[1], found.high)
        naive_hits += naive[0] > 0 or naive[1] < 0
        clustered_hits += clustered[0] > 0 or clustered[1] < 0
    print(f"\nA/A experiments called significant: {naive_hits} of {experiments} counting exposures, "
          f"{clustered_hits} over customers")
    assert naive_hits / experiments > 0.15
    assert clustered_hits / experiments <= 0.05


def test_the_variance_over_customers_is_the_ratio_estimators():
    found = clustered_rate([1, 0, 2], [3, 3, 3])
    # p = 3/9; residuals a - p n = 0, -1, 1; 2 / 81 * 3 / 2
    assert found.rate == pytest.approx(1 / 3) and found.variance == pytest.approx(2 / 81 * 1.5)
    assert (found.customers, found.exposures, found.accepts) == (3, 9, 3)
    # one exposure per customer: the binomial variance (times C / (C - 1))
    single = clustered_rate([1] * 30 + [0] * 70, [1] * 100)
    assert single.variance == pytest.approx(0.3 * 0.7 / 100 * 100 / 99)
    with pytest.raises(ValueError, match="an arm needs exposures"):
        clustered_rate([], [])
