"""The always-valid interval for a difference of accept rates: right on a clear case, and valid
under daily peeking where a fixed-sample interval is not."""

import math

import numpy as np
import pytest

from twotower_pipeline.model.sequential import accept_rate_difference


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
    assert ever_valid / experiments <= 0.05
    assert ever_fixed / experiments > 0.15
