"""Top-K, rank_offers, AUCs and ranking metrics against brute force."""

import itertools
import math

import numpy as np

from twotower_pipeline.model import metrics
from twotower_pipeline.model.scoring import rank_offers, top_k


def test_top_k_matches_a_full_sort_in_chunks():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(7, 4)), rng.normal(size=(11, 4))
    scores, index = top_k(users, items, 3, chunk_size=2)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cos = unit(users) @ unit(items).T
    assert np.array_equal(index, np.argsort(-cos, axis=1)[:, :3])
    np.testing.assert_allclose(scores, np.sort(cos, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    _, dot_index = top_k(users, items, 20, metric="dot")
    assert dot_index.shape == (7, 11) and np.array_equal(dot_index, np.argsort(-(users @ items.T), axis=1))


def test_rank_offers_sorted_descending_with_stable_ties():
    ranked = rank_offers([1.0, 0.0], [[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [3.0, 0.0]], ["a", "b", "c", "d"])
    assert [o for o, _ in ranked] == ["b", "d", "c", "a"]
    assert math.isclose(ranked[0][1], 1.0) and math.isclose(ranked[2][1], math.sqrt(0.5))
    assert rank_offers([1.0, 0.0], np.zeros((0, 2)), []) == []


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_group_auc_matches_pairwise_counting_and_skips_one_class_groups():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=40).astype(float)  # many ties
    labels = rng.integers(0, 2, size=40)
    groups = rng.integers(0, 5, size=40)
    groups[:3], labels[:3] = 9, 1                        # group 9: positives only -> skipped
    expected = [_brute_auc(scores[groups == g], labels[groups == g]) for g in range(5)
                if 0 < labels[groups == g].sum() < (groups == g).sum()]
    got, n = metrics.group_auc(scores, labels, groups)
    assert n == len(expected) and math.isclose(got, np.mean(expected))
    assert math.isclose(metrics.roc_auc(scores, labels), _brute_auc(scores, labels))


def test_ranking_metrics_on_a_hand_case():
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    # user 0: item 1 relevant, item 0 accepted in training (excluded) -> item 1 ranks first
    # user 1: item 3 relevant; order 2, 3, ... -> rank 2
    m = metrics.ranking_metrics(users, items, [0, 1], [1, 3], k=1, exclude_users=[0], exclude_items=[0])
    assert m["recall@1"] == 0.5 and m["ndcg@1"] == 0.5 and m["ranked_users"] == 2
    m2 = metrics.ranking_metrics(users, items, [0, 1], [1, 3], k=2, exclude_users=[0], exclude_items=[0])
    assert m2["recall@2"] == 1.0
    assert math.isclose(m2["ndcg@2"], (1.0 + (1 / math.log2(3))) / 2)
    # random: user 0 has 3 candidates, user 1 has 4: E[hits] = 2/3 and 2/4
    assert math.isclose(m2["random_recall@2"], (2 / 3 + 2 / 4) / 2)


def test_validation_pair_also_accepted_in_training_stays_rankable():
    users, items = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    m = metrics.ranking_metrics(users, items, [0], [0], k=1, exclude_users=[0], exclude_items=[0])
    assert m["recall@1"] == 1.0
