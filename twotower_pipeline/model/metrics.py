"""Offline metrics, separate from the losses and from any model: they read top-K lists and labels.

Ranking (`ranking_metrics`): for each evaluated customer, the held-out accepted offers are the
relevant set and the top-K list is ranked over the whole catalogue with the offers the customer
accepted in training left out (the list comes from `scoring.select_top_k`, whatever the scorer).
Per customer, averaged over customers with at least one relevant offer:
- precision@K = hits in the top K / K;
- recall@K = hits in the top K / relevant offers;
- hit_rate@K = 1 when the top K holds any relevant offer;
- ndcg@K = DCG of the top K (gain 1, discount 1/log2(rank + 1)) / the best DCG possible with
  min(relevant, K) hits;
- map@K = sum over hits at rank r <= K of precision@r, / relevant offers (as ranx, trec_eval and
  the published MovieLens protocol compute it; some libraries divide by min(relevant, K) instead);
- mrr = 1 / rank of the first relevant offer within the longest list (MRR@max K), else 0;
- coverage@K (catalogue-wide, not per customer) = distinct offers in the top-K lists / catalogue.
Accept/decline (`auc_metrics`): ROC AUC of a score on held-out exposures, over all of them
(`auc`), per customer (`user_auc`, the documented training metric) and per offer (`item_auc`);
ties count one half; groups without both classes are skipped; NaN when no exposure is declined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KS = (5, 10, 20)


def group_auc(scores, labels, groups) -> tuple[float, int]:
    """(mean per-group ROC AUC over groups holding both classes, number of such groups); ties
    count one half. NaN when no group has both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels).astype(bool)
    groups = pd.Series(np.asarray(groups))
    ranks = pd.Series(scores).groupby(groups, sort=False).rank(method="average").to_numpy()
    table = pd.DataFrame({"g": groups, "pos": positive, "rank_pos": np.where(positive, ranks, 0.0)})
    agg = table.groupby("g", sort=False).agg(n=("pos", "size"), n_pos=("pos", "sum"), rank_sum=("rank_pos", "sum"))
    n_pos = agg["n_pos"].to_numpy(dtype=np.float64)
    n_neg = agg["n"].to_numpy(dtype=np.float64) - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan"), 0
    auc = (agg["rank_sum"].to_numpy()[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(auc.mean()), int(valid.sum())


def roc_auc(scores, labels) -> float:
    return group_auc(scores, labels, np.zeros(len(scores), dtype=np.int64))[0]


def user_auc(scores, labels, customers) -> float:
    return group_auc(scores, labels, customers)[0]


def item_auc(scores, labels, offers) -> float:
    return group_auc(scores, labels, offers)[0]


def auc_metrics(scores, labels, customers, offers) -> dict[str, float]:
    """Accept/decline AUCs of `scores` on exposures (labels 1 accepted, 0 declined)."""
    return {"auc": roc_auc(scores, labels), "user_auc": user_auc(scores, labels, customers),
            "item_auc": item_auc(scores, labels, offers)}


def hit_matrix(top_columns, relevant_rows, relevant_columns, n_items: int) -> np.ndarray:
    """hits [n, K]: whether top_columns[u, r] is one of row u's relevant columns (the pairs
    (relevant_rows[p], relevant_columns[p])); column -1 (an empty slot) is never a hit."""
    top = np.asarray(top_columns, dtype=np.int64)
    relevant = np.unique(np.asarray(relevant_rows, dtype=np.int64) * n_items
                         + np.asarray(relevant_columns, dtype=np.int64))
    if len(relevant) == 0:
        return np.zeros(top.shape, dtype=bool)
    keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * n_items + top                # [n, K]
    at = np.searchsorted(relevant, keys).clip(max=len(relevant) - 1)
    return (top >= 0) & (relevant[at] == keys)  # -1 would alias the previous row's last column


def ranking_metrics(top_columns, relevant_rows, relevant_columns, n_items: int, ks=KS) -> dict[str, float]:
    """Metrics of the module docstring from top lists [n, max(ks)] (row u = customer u) and the
    relevant pairs; rows without a relevant offer are not counted. Keys `precision@K`, `recall@K`,
    `hit_rate@K`, `ndcg@K`, `map@K`, `coverage@K` for each K in ks, `mrr`, `ranked_users`."""
    top = np.asarray(top_columns, dtype=np.int64)
    ks = sorted({int(k) for k in ks})
    n_relevant = np.bincount(np.unique(np.asarray(relevant_rows, dtype=np.int64) * n_items
                                       + np.asarray(relevant_columns, dtype=np.int64)) // max(1, n_items),
                             minlength=top.shape[0])[: top.shape[0]]
    ranked = n_relevant > 0
    out: dict[str, float] = {"ranked_users": int(ranked.sum())}
    if not ranked.any() or top.shape[1] == 0:
        for k in ks:
            for name in ("precision", "recall", "hit_rate", "ndcg", "map", "coverage"):
                out[f"{name}@{k}"] = float("nan")
        out["mrr"] = float("nan")
        return out
    hits = hit_matrix(top, relevant_rows, relevant_columns, n_items)[ranked]                 # [u, L]
    top, n_relevant = top[ranked], n_relevant[ranked].astype(np.float64)
    length = hits.shape[1]
    positions = np.arange(1, length + 1, dtype=np.float64)                                    # [L]
    discount = 1.0 / np.log2(positions + 1.0)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])                                      # IDCG of 0..L hits
    cumulative = np.cumsum(hits, axis=1)                                                      # [u, L]
    precision_at_hits = np.where(hits, cumulative / positions, 0.0)
    for k in ks:
        h = hits[:, :k]
        found = h.sum(axis=1)
        capped = np.minimum(n_relevant, min(k, length))
        out[f"precision@{k}"] = float((found / k).mean())
        out[f"recall@{k}"] = float((found / n_relevant).mean())
        out[f"hit_rate@{k}"] = float((found > 0).mean())
        out[f"ndcg@{k}"] = float(((h * discount[:k]).sum(axis=1) / ideal[capped.astype(np.int64)]).mean())
        out[f"map@{k}"] = float((precision_at_hits[:, :k].sum(axis=1) / n_relevant).mean())
        shown = top[:, :k]
        out[f"coverage@{k}"] = float(len(np.unique(shown[shown >= 0])) / n_items) if n_items else float("nan")
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    out["mrr"] = float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())
    return out
