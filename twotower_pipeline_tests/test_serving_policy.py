"""The serving side's in-memory parts on their own (numpy only, no server): the customer vectors
as the service holds them (sorted arrays, memory-mapped past a budget, refreshed customers over a
run's own), epsilon exploration and its propensities, and the accepted-offers table."""

import re

import numpy as np
import pytest

from twotower_pipeline.serving.accepted import AcceptedOffers
from twotower_pipeline.serving.explore import Explorer
from twotower_pipeline.serving.scorer import SimilarityScorer
from twotower_pipeline.serving.vectors import CustomerVectors, clear_cache


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# --- customer vectors ----------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 1])
def test_customer_vectors_are_found_by_key_in_memory_or_memory_mapped(tmp_path, budget):
    rng = np.random.default_rng(0)
    keys = [f"c{i}" for i in rng.permutation(5000)] + ["ünïcode", "a"]
    vectors = _unit(rng.normal(size=(len(keys), 8)))
    held = CustomerVectors.build(keys, vectors, budget_bytes=budget, cache_dir=tmp_path)
    assert len(held) == len(keys) and held.dim == 8
    assert held.bytes_per_customer == held.keys.itemsize + 4 * 8
    for i in rng.choice(len(keys), 300):
        assert np.array_equal(held.get(keys[i]), vectors[i])
    assert held.get("c999999") is None and held.get("") is None and held.get("zzz") is None
    if budget is None:
        assert held.mapped is None and isinstance(held.vectors, np.ndarray) and not isinstance(held.vectors, np.memmap)
    else:  # over the budget: served from the mapped files, the process keeps no copy
        assert isinstance(held.vectors, np.memmap) and isinstance(held.keys, np.memmap)
        assert sorted(p.name for p in held.mapped.iterdir()) == ["keys.npy", "vectors.npy"]
        left = CustomerVectors.build(keys[:10], vectors[:10], budget_bytes=1, cache_dir=tmp_path)  # a killed process's
        (tmp_path / "not_ours").mkdir()
        assert clear_cache(tmp_path) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["not_ours"]
        assert np.array_equal(left.get(keys[3]), vectors[3])  # what a process still maps stays readable to it
        held.release()
        assert not held.mapped.exists()
        assert np.array_equal(held.get(keys[0]), vectors[0])  # still mapped, still readable


def test_a_refresh_replaces_and_adds_customers_over_the_runs_own_without_copying_them():
    rng = np.random.default_rng(1)
    keys = [f"c{i}" for i in range(100)]
    vectors = _unit(rng.normal(size=(100, 4)))
    own = CustomerVectors.build(keys, vectors)
    changed = _unit(rng.normal(size=(3, 4)))
    refreshed = own.with_refreshed(["c5", "new_1", "new_2"], changed)
    assert refreshed.vectors is own.vectors and refreshed.keys is own.keys  # shared, not copied
    assert np.array_equal(refreshed.get("c5"), changed[0]) and np.array_equal(refreshed.get("new_2"), changed[2])
    assert np.array_equal(refreshed.get("c6"), vectors[6]) and own.get("new_1") is None
    assert len(refreshed) == 102 and len(own) == 100
    assert len(own.with_refreshed([], np.zeros((0, 0)))) == 100


def test_duplicate_or_misshaped_vectors_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        CustomerVectors.build(["a", "b", "a"], np.eye(3))
    with pytest.raises(ValueError, match="keys for vectors"):
        CustomerVectors.build(["a", "b"], np.eye(3))
    with pytest.raises(ValueError, match="no cache folder"):
        CustomerVectors.build(["a", "b"], np.eye(2), budget_bytes=1)


# --- exploration -----------------------------------------------------------------------------------
def _scorer(n_offers=6, dim=4, seed=2):
    rng = np.random.default_rng(seed)
    offers = [f"o{i}" for i in range(n_offers)]
    return SimilarityScorer("r", offers, _unit(rng.normal(size=(n_offers, dim)))), rng.normal(size=dim)


def test_without_epsilon_the_ranking_is_greedy_and_each_offer_is_certain():
    scorer, user = _scorer()
    shown = Explorer(seed=1).present(scorer, user, 3)
    assert not shown.explore and shown.ranked.offers == scorer.rank(user, 3).offers
    assert shown.propensities == [1.0, 1.0, 1.0]


def test_the_logged_propensities_are_how_often_the_policy_shows_each_offer_at_each_rank():
    """Drawn 20,000 times at epsilon 0.3: the share of draws that put an offer at a rank matches
    the propensity logged with it, for greedy and explored places alike."""
    scorer, user = _scorer()
    explorer, epsilon, draws, k = Explorer(seed=7), 0.3, 20_000, 3
    seen, logged, explored = {}, {}, 0
    for _ in range(draws):
        shown = explorer.present(scorer, user, k, epsilon=epsilon)
        explored += shown.explore
        for rank, (offer, propensity) in enumerate(zip(shown.ranked.offers, shown.propensities)):
            seen[(offer, rank)] = seen.get((offer, rank), 0) + 1
            logged.setdefault((offer, rank), set()).add(round(propensity, 12))
    greedy = scorer.rank(user, k).offers
    assert abs(explored / draws - epsilon) < 0.015
    for (offer, rank), count in seen.items():
        [propensity] = logged[(offer, rank)]  # one propensity per (offer, rank): it is the policy's
        expected = (1 - epsilon) * (greedy[rank] == offer) + epsilon / 6
        assert propensity == pytest.approx(expected)
        assert abs(count / draws - expected) < 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-3
    # every candidate was shown at every rank by the uniform draws
    assert len(seen) == 6 * k


def test_exploration_draws_from_the_eligible_offers_left_after_exclusions_and_is_seeded():
    scorer, user = _scorer(n_offers=10)
    eligible, excluded = ["o1", "o2", "o3", "o4", "o9"], ["o2"]
    first = Explorer(seed=3).present(scorer, user, 2, epsilon=1.0, eligible=eligible, excluded=excluded)
    again = Explorer(seed=3).present(scorer, user, 2, epsilon=1.0, eligible=eligible, excluded=excluded)
    assert first.ranked.offers == again.ranked.offers and again.explore
    explorer = Explorer(seed=4)
    for _ in range(200):
        shown = explorer.present(scorer, user, 2, epsilon=1.0, eligible=eligible, excluded=excluded)
        assert set(shown.ranked.offers) <= {"o1", "o3", "o4", "o9"} and len(shown.ranked.offers) == 2
        assert shown.ranked.candidates == 4 and shown.propensities == [0.25, 0.25]
        expected = {o: float(v @ (user / np.linalg.norm(user))) for o, v in zip(scorer.offers, scorer._items)}
        assert np.allclose(shown.ranked.scores, [expected[o] for o in shown.ranked.offers], atol=1e-6)


def test_excluded_offers_are_never_ranked():
    scorer, user = _scorer(n_offers=8)
    best = scorer.rank(user, 8).offers
    ranked = scorer.rank(user, 8, excluded=best[:3] + ["not_an_offer"])
    assert ranked.offers == best[3:] and ranked.candidates == 5 and ranked.ineligible == 3


# --- accepted offers -------------------------------------------------------------------------------
def test_the_accepted_offers_table_answers_per_customer_and_takes_this_processes_accepts():
    table = AcceptedOffers.of_pairs("c", ["b", "a", "b", "b", "zz"], ["o2", "o1", "o1", "o2", "o9"])
    assert table.of("a") == ["o1"] and table.of("b") == ["o1", "o2"] and table.of("zz") == ["o9"]
    assert table.of("nobody") == [] and table.of("") == [] and len(table) == 4
    table.add("nobody", ["o5"])
    table.add("a", ["o3"])
    assert table.of("nobody") == ["o5"] and table.of("a") == ["o1", "o3"]
    # a reload that already read "a"'s o3 keeps only what it lacks from this process
    reloaded = AcceptedOffers.of_pairs("c", ["a", "a"], ["o1", "o3"]).carry_recent(table)
    assert reloaded.of("a") == ["o1", "o3"] and reloaded.of("nobody") == ["o5"] and len(reloaded) == 3


# --- the campaigns file of `twotower serve` --------------------------------------------------------
def test_serve_takes_each_campaigns_policy_from_its_file_and_names_what_is_wrong(monkeypatch, tmp_path, mongo_uri,
                                                                                 database_prefix):
    from twotower_pipeline import cli
    from twotower_pipeline.serving.settings import CampaignSettings, campaign_policies

    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.append(app))
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    monkeypatch.setenv("TWOTOWER_RUNTIME_KEY", "r-key")
    monkeypatch.setenv("TWOTOWER_WORKBENCH_KEY", "w-key")
    policies = tmp_path / "campaigns.toml"
    policies.write_text("[ml100k_movies]\nepsilon = 0.1\nexclude_accepted = true\n\n[coupons]\nepsilon = 0\n")
    assert cli.main(["serve", "--campaigns-file", str(policies), "--campaign", "extra", "--explore-seed", "3",
                     "--journal-dir", str(tmp_path / "j"), "--memory-budget-bytes", "1000"]) == 0
    settings = started[0].state.runtime.settings
    assert settings.campaigns == {"ml100k_movies": CampaignSettings(0.1, True), "coupons": CampaignSettings(),
                                  "extra": CampaignSettings()}
    assert settings.explore_seed == 3 and settings.journal_dir == str(tmp_path / "j")
    assert settings.memory_budget_bytes == 1000
    for text, reason in (("[a]\nepsilon = 1.5\n", "within 0..1"), ("[a]\nepsilon = true\n", "within 0..1"),
                         ("[a]\nexplore = 0.1\n", "unknown settings ['explore']"),
                         ("[a]\nexclude_accepted = 1\n", "true or false"), ("a = 1\n", "must be a table"),
                         ("[a\n", "not valid TOML")):
        policies.write_text(text)
        with pytest.raises(ValueError, match=re.escape(reason)) as refused:
            campaign_policies(str(policies))
        assert str(policies) in str(refused.value)
    assert cli.main(["serve", "--campaigns-file", str(policies)]) == 2 and len(started) == 1  # refused at start
