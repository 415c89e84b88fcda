"""The held-out split, the baselines and offline scoring of a run, on small frames."""

import math

import numpy as np
import pandas as pd
import pytest

from twotower_pipeline.model import TrainingParams, evaluation, train_two_tower
from twotower_pipeline.model.train import prepare
from twotower_pipeline_tests.test_model_training import FAST, planted_frame


def test_the_split_holds_out_each_customers_share_whatever_the_row_order():
    frame = planted_frame(n_customers=50, shown=10)
    held = evaluation.holdout_mask(frame, share=0.2, seed=42)
    per_customer = pd.Series(held).groupby(frame["customer_id"]).sum()
    assert (per_customer == 2).all()  # 20% of 10 exposures each
    shuffled = frame.sample(frac=1.0, random_state=3)
    again = evaluation.holdout_mask(shuffled, share=0.2, seed=42)
    assert set(shuffled.loc[again, "uuid"]) == set(frame.loc[held, "uuid"])
    other_seed = evaluation.holdout_mask(frame, share=0.2, seed=7)
    assert set(frame.loc[other_seed, "uuid"]) != set(frame.loc[held, "uuid"])


def test_a_customer_with_one_exposure_keeps_it_for_training_and_time_holds_out_the_last_days():
    frame = pd.DataFrame({"customer_id": ["a", "b", "b", "b", "b", "b"], "offer": list("xxyzvw"),
                          "accepted": 1, "datetime": pd.to_datetime(
                              ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-09", "2024-01-10", "2024-01-10"],
                              utc=True)})
    held = evaluation.holdout_mask(frame, share=0.2)
    assert not held[0] and held[1:].sum() == 1  # a: 1 exposure, none held out; b: 1 of 5
    assert evaluation.holdout_mask(frame, method="time", days=1).tolist() == [False, False, False, True, True, True]
    with pytest.raises(ValueError, match="needs a `datetime` column"):
        evaluation.holdout_mask(frame.drop(columns="datetime"), method="time")


def _held_out() -> evaluation.HeldOut:
    # customers 0..2, offers 0..3; training accepts: 0:{0,1} 1:{0} 2:{0,2}; held out: 0:{2} 1:{1} (+ a decline)
    return evaluation.HeldOut.from_codes(
        rows=[0, 0, 1, 2, 2, 0, 1, 1], columns=[0, 1, 0, 0, 2, 2, 1, 3], labels=[1, 1, 1, 1, 1, 1, 1, 0],
        held=[0, 0, 0, 0, 0, 1, 1, 1], n_users=3, n_items=4)


def test_popularity_ranks_by_training_accepts_and_leaves_out_what_was_accepted():
    held_out = _held_out()
    result = evaluation.evaluate(evaluation.PopularityScorer(held_out), held_out, ks=(1, 2))
    # counts: offer 0: 3, offer 1: 1, offer 2: 1, offer 3: 0
    # customer 0 (accepted 0, 1 in training): list [2, 3] -> hit at 1; customer 1 (accepted 0): [1, 2] -> hit at 1
    assert result["ranked_users"] == 2 and result["precision@1"] == 1.0 and result["mrr"] == 1.0
    # AUC on customer 1's held-out exposures: offer 1 (count 1, accepted) vs offer 3 (count 0, declined)
    assert result["auc"] == 1.0 and result["user_auc"] == 1.0


def test_ease_matches_its_closed_form():
    held_out = _held_out()
    scorer = evaluation.EaseScorer(held_out, l2=2.0)
    x = np.zeros((3, 4))
    x[held_out.train_rows, held_out.train_columns] = 1
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    b = np.eye(4) - p / np.diag(p)
    np.testing.assert_allclose(scorer.weights.numpy(), b, atol=1e-6)
    np.testing.assert_allclose(scorer.pairs(np.array([0, 1, 2]), np.array([3, 2, 1])),
                               (x @ b)[[0, 1, 2], [3, 2, 1]], atol=1e-5)


def test_a_catalogue_too_large_for_ease_is_reported_not_computed(monkeypatch):
    monkeypatch.setattr(evaluation, "EASE_MAX_OFFERS", 3)
    held_out = _held_out()
    results = evaluation.compare_with_baselines(evaluation.RandomScorer(held_out), held_out, ks=(1,))
    assert set(results) == {"two_tower", "popularity", "random", "skipped"}
    assert "up to 3 offers" in results["skipped"]["ease"]


def test_random_ranking_recall_is_what_chance_gives():
    rng = np.random.default_rng(0)
    n_users, n_items = 2000, 50
    rows = np.repeat(np.arange(n_users), 2)
    columns = np.concatenate([rng.choice(n_items, 2, replace=False) for _ in range(n_users)])
    held_out = evaluation.HeldOut.from_codes(rows, columns, np.ones(len(rows)), np.tile([0, 1], n_users),
                                             n_users, n_items)
    result = evaluation.evaluate(evaluation.RandomScorer(held_out), held_out, ks=(10,))
    assert math.isclose(result["recall@10"], 10 / 49, abs_tol=0.02)  # one relevant among 49 candidates


def test_implicit_feedback_trains_on_sampled_declines():
    frame = planted_frame()
    implicit = frame[frame["accepted"] == 1].reset_index(drop=True)
    messages = []
    result = train_two_tower(implicit, TrainingParams(**FAST), log=messages.append)
    assert any("with sampled declines" in m for m in messages)
    assert result.metrics["recall@10"] > 0.8 and math.isnan(result.metrics["user_auc"])
    held_out = prepare(implicit, TrainingParams(**FAST)).held_out
    assert not held_out.has_declines
    popularity = evaluation.evaluate(evaluation.PopularityScorer(held_out), held_out, ks=(10,))
    assert result.metrics["ndcg@10"] > popularity["ndcg@10"] + 0.2
