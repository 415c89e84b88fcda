"""Top-K, rank_offers, AUCs and ranking metrics: against brute force, hand-computed cases and ranx."""

import itertools
import math

import numpy as np
import pytest
import torch

from twotower_pipeline.model import metrics
from twotower_pipeline.model.scoring import exclusions, rank_offers, select_top_k, select_top_k_of, top_k


def _stable_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference: a stable sort of -score per row; excluded (-inf) slots become -1."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, order, axis=1) == -np.inf, -1, order)


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


@pytest.mark.parametrize("n_items", [1, 9, 64, 300, 1000, 2001])
def test_top_k_with_ties_and_exclusions_equals_a_stable_sort(n_items):
    """Small integer vectors give many exact ties; exclusions may leave rows short of k."""
    rng = np.random.default_rng(n_items)
    for k in (1, 5, 10, 20, 64):
        users = rng.integers(-2, 3, size=(37, 3)).astype(np.float32)
        items = rng.integers(-2, 3, size=(n_items, 3)).astype(np.float32)
        rows, columns = rng.integers(0, 37, size=3 * n_items), rng.integers(0, n_items, size=3 * n_items)
        scores = users @ items.T
        scores[rows, columns] = -np.inf
        got_scores, got = top_k(users, items, k, metric="dot", exclude=exclusions(rows, columns, 37), chunk_size=5)
        expected = _stable_top(scores, min(k, n_items))
        assert np.array_equal(got, expected)
        expected_scores = np.where(expected < 0, -np.inf, np.take_along_axis(scores, np.maximum(expected, 0), axis=1))
        np.testing.assert_array_equal(got_scores, expected_scores)


def test_large_inputs_are_shared_out_to_workers_with_the_same_result():
    rng = np.random.default_rng(3)  # integer vectors: every product is exact, ties included
    users = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
    items = rng.integers(-3, 4, size=(1000, 16)).astype(np.float32)
    one_scores, one = top_k(users, items, 10, metric="dot", threads=1)
    two_scores, two = top_k(users, items, 10, metric="dot", threads=2)
    assert np.array_equal(one, two) and np.array_equal(one_scores, two_scores)
    assert np.array_equal(one, _stable_top(users @ items.T, 10))


def test_any_scorer_can_feed_the_selection():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.7]], dtype=np.float32)

    def block(start, end, out):
        out.copy_(torch.from_numpy(scores[start:end]))

    values, columns = select_top_k(2, 3, 2, block)
    assert columns.tolist() == [[1, 2], [2, 0]] and values[0].tolist() == pytest.approx([0.9, 0.5])


@pytest.mark.parametrize("n_items", [0, 1, 9, 1000])
def test_the_unblocked_selection_of_finished_scores_equals_a_stable_sort(n_items):
    """Serving's path (`select_top_k_of`): the same kernel on one request's scores, ties included."""
    rng = np.random.default_rng(n_items)
    scores = rng.integers(-3, 4, size=(3, n_items)).astype(np.float32)
    for k in (1, 5, 2000):
        values, columns = select_top_k_of(scores.copy(), k)
        expected = _stable_top(scores, min(k, n_items))
        assert np.array_equal(columns, expected)
        np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))


def test_bad_vectors_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="1 vectors are not finite"):
        top_k(np.array([[np.nan, 1.0]]), np.ones((2, 2)), 1)
    with pytest.raises(ValueError, match="length 2 but offer vectors have 3"):
        top_k(np.ones((1, 2)), np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="excluded columns must lie in 0..1"):
        top_k(np.ones((1, 2)), np.ones((2, 2)), 1, exclude=exclusions([0], [5], 1))


def test_rank_offers_sorted_descending_with_stable_ties():
    ranked = rank_offers([1.0, 0.0], [[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [3.0, 0.0]], ["a", "b", "c", "d"])
    assert [o for o, _ in ranked] == ["b", "d", "c", "a"]  # b and d tie at 1.0: input order
    assert math.isclose(ranked[0][1], 1.0, rel_tol=1e-6) and math.isclose(ranked[2][1], math.sqrt(0.5), rel_tol=1e-6)
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
    # customer 0: list [3, 1, 4, 0, 2], relevant {1, 2}: hits at ranks 2 and 5
    # customer 1: list [0, 2, 3, 1, 4], relevant {0}: hit at rank 1
    # customer 2: no relevant offer: not counted
    top = np.array([[3, 1, 4, 0, 2], [0, 2, 3, 1, 4], [1, 2, 3, 4, 0]])
    m = metrics.ranking_metrics(top, [0, 0, 1], [1, 2, 0], n_items=6, ks=(1, 2, 5))
    assert m["ranked_users"] == 2
    assert m["precision@1"] == 0.5 and m["precision@2"] == (1 / 2 + 1 / 2) / 2
    assert m["precision@5"] == (2 / 5 + 1 / 5) / 2
    assert m["recall@1"] == 0.5 and m["recall@2"] == (1 / 2 + 1) / 2 and m["recall@5"] == 1.0
    assert m["hit_rate@1"] == 0.5 and m["hit_rate@2"] == 1.0
    assert math.isclose(m["ndcg@2"], ((1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 1.0) / 2)
    assert math.isclose(m["ndcg@5"], ((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)) + 1.0) / 2)
    assert math.isclose(m["map@5"], ((1 / 2 + 2 / 5) / 2 + 1.0) / 2)   # AP divides by the relevant count
    assert math.isclose(m["map@2"], ((1 / 2) / 2 + 1.0) / 2)
    assert math.isclose(m["mrr"], (1 / 2 + 1) / 2)
    assert m["coverage@1"] == 2 / 6 and m["coverage@2"] == 4 / 6 and m["coverage@5"] == 5 / 6


def test_empty_slots_are_never_hits():
    # column -1 must not alias the previous customer's last offer (key u * n - 1)
    top = np.array([[0, 1], [-1, -1]])
    hits = metrics.hit_matrix(top, [0], [2], n_items=3)
    assert not hits.any()
    assert metrics.ranking_metrics(np.array([[2, -1]]), [0], [2], n_items=3, ks=(2,))["precision@2"] == 0.5


def test_ranking_metrics_agree_with_ranx():
    import ranx  # a test extra: installed by `make install`
    rng = np.random.default_rng(5)
    n_users, n_items, length = 60, 40, 20
    scores = rng.random((n_users, n_items))
    top = np.argsort(-scores, axis=1)[:, :length]
    relevant_rows = np.repeat(np.arange(n_users), rng.integers(1, 8, size=n_users))
    relevant_columns = rng.integers(0, n_items, size=len(relevant_rows))
    ours = metrics.ranking_metrics(top, relevant_rows, relevant_columns, n_items, ks=(5, 10, 20))
    qrels = ranx.Qrels({f"u{u}": {f"i{i}": 1 for i in relevant_columns[relevant_rows == u]} for u in range(n_users)})
    run = ranx.Run({f"u{u}": {f"i{i}": float(length - r) for r, i in enumerate(top[u])} for u in range(n_users)})
    names = [f"{m}@{k}" for m in ("precision", "recall", "ndcg", "map", "hit_rate") for k in (5, 10, 20)]
    theirs = ranx.evaluate(qrels, run, names + ["mrr@20"])
    for name in names:
        assert math.isclose(ours[name], theirs[name], rel_tol=1e-9), name
    assert math.isclose(ours["mrr"], theirs["mrr@20"], rel_tol=1e-9)
