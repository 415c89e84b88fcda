"""Off-policy estimators (IPS, SNIPS, DR as the Open Bandit Pipeline defines them) against
hand-computed cases and a simulated logging policy whose true value is known."""

import numpy as np
import pytest

from twotower_pipeline.model import offpolicy

REWARD = np.array([1, 0, 1, 1])
PROPENSITY = np.array([0.5, 0.25, 1.0, 0.5])
MATCHES = np.array([True, True, False, True])  # the candidate shows the logged offer at that rank


def test_the_estimators_by_hand():
    # w = [2, 4, 0, 2]
    found = offpolicy.estimate(REWARD, PROPENSITY, MATCHES, q_logged=np.full(4, 0.5), q_candidate=np.full(4, 0.6),
                               n_bootstrap=200)
    assert found["ips"].value == pytest.approx((2 + 0 + 0 + 2) / 4)              # mean(w r) = 1.0
    assert found["snips"].value == pytest.approx((2 + 0 + 0 + 2) / 4 / 2)        # / mean(w) = 0.5
    assert found["dr"].value == pytest.approx((1.6 - 1.4 + 0.6 + 1.6) / 4)       # q_e + w (r - q) = 0.6
    assert {e.rounds for e in found.values()} == {4} and {e.matching for e in found.values()} == {3}
    assert all(e.low <= e.value <= e.high for e in found.values())


def test_dr_is_left_out_without_a_reward_model_and_a_constant_has_no_spread():
    found = offpolicy.estimate(np.ones(5), np.ones(5), np.ones(5, dtype=bool), n_bootstrap=100)
    assert sorted(found) == ["ips", "snips"]
    assert (found["ips"].low, found["ips"].value, found["ips"].high) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("propensity, where", [([0.5, np.nan, 1.0, 0.5], "round 1 has propensity nan"),
                                               ([0.5, 0.25, 0.0, 0.5], "round 2 has propensity 0.0"),
                                               ([1.5, 0.25, 1.0, 0.5], "round 0 has propensity 1.5")])
def test_a_missing_propensity_is_refused_never_filled_in(propensity, where):
    with pytest.raises(ValueError, match=where):
        offpolicy.estimate(REWARD, np.array(propensity), MATCHES)


def test_ips_and_snips_recover_a_known_value_from_epsilon_greedy_logs():
    """One slot, five offers with known accept rates; the log shows offer 0 greedily with
    epsilon 0.4 (each offer uniformly otherwise); the candidate would always show offer 3."""
    rng = np.random.default_rng(7)
    accept = np.array([0.30, 0.10, 0.20, 0.05, 0.15])
    n, epsilon = 40_000, 0.4
    explore = rng.random(n) < epsilon
    shown = np.where(explore, rng.integers(0, 5, n), 0)
    propensity = np.where(shown == 0, 1 - epsilon + epsilon / 5, epsilon / 5)
    reward = rng.random(n) < accept[shown]
    found = offpolicy.estimate(reward, propensity, shown == 3, n_bootstrap=2_000)
    for name in ("ips", "snips"):
        assert found[name].low <= accept[3] <= found[name].high, found[name]
    assert abs(found["ips"].value - accept[3]) < 0.02
    # the logged rate (what the logging policy earned) is far from the candidate's
    assert reward.mean() > 0.2
