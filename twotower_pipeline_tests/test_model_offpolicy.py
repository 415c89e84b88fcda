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


def _candidate():
    """Customers u0 (likes o0 then o1) and u1 (likes o3 then o2) in a 2-d space."""
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[1.0, 0.05], [0.9, 0.3], [0.3, 0.9], [0.05, 1.0]])
    return ["u0", "u1"], users, ["o0", "o1", "o2", "o3"], items


def test_the_replay_matches_the_candidates_offer_at_each_logged_rank():
    user_keys, users, item_keys, items = _candidate()
    rounds = offpolicy.LoggedRounds(
        customers=np.array(["u0", "u0", "u1", "u1", "u9", "u0"]),
        offers=np.array(["o0", "o2", "o3", "o2", "o0", "o1"]),
        ranks=np.array([1, 2, 1, 2, 1, 2]),
        accepted=np.array([1, 0, 1, 0, 1, 1]),
        propensity=np.array([0.8, 0.1, 0.8, 0.5, 0.9, np.nan]))
    shown = offpolicy.candidate_offers_at(rounds, user_keys, users, item_keys, items)
    assert shown.tolist() == ["o0", "o1", "o3", "o2", "", "o1"]
    found = offpolicy.replay(rounds, user_keys, users, item_keys, items, n_bootstrap=200)
    assert found["available"] and found["rounds"] == 4
    assert (found["without_propensity"], found["without_vector"]) == (1, 1)
    # matches: rounds 0, 2, 3 -> w = 1/0.8, 1/0.8, 1/0.5; rewards 1, 1, 0
    assert found["estimates"]["ips"]["value"] == pytest.approx((1.25 + 1.25 + 0) / 4)
    assert found["estimates"]["snips"]["value"] == pytest.approx((1.25 + 1.25) / (1.25 + 0 + 1.25 + 2))
    assert found["estimates"]["dr"]["matching"] == 3 and found["logged_accept_rate"] == 0.5


def test_logs_without_propensities_get_no_estimate_and_say_why():
    user_keys, users, item_keys, items = _candidate()
    rounds = offpolicy.LoggedRounds(np.array(["u0"]), np.array(["o0"]), np.array([1]), np.array([1]),
                                    np.array([np.nan]))
    found = offpolicy.replay(rounds, user_keys, users, item_keys, items)
    assert not found["available"] and "no logged propensities" in found["reason"] and "estimates" not in found
