"""Validation metrics, separate from the losses.

- `user_auc`: mean over customers of the ROC AUC of the cosine on that customer's validation
  exposures (accepted vs declined); customers with both classes only. `item_auc`: the same per offer.
  These are the two documented training metrics.
- `ranking_metrics`: recall@K and NDCG@K of validation accepted pairs against the whole catalogue
  (offers the customer accepted in training, other than the validation ones, are excluded),
  recall@K = hits / min(K, relevant). Also the expected recall@K of a random ranking, for scale.
All vectorised: pandas group ranks for the AUCs, chunked matrix products and torch.topk for ranking.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

_CHUNK_ELEMENTS = 4_000_000


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


def ranking_metrics(user_vectors, item_vectors, positive_users, positive_items, *, k: int = 10,
                    exclude_users=None, exclude_items=None) -> dict[str, float]:
    """Recall@K / NDCG@K of the pairs (positive_users[p], positive_items[p]) (row indices into
    user_vectors [n_users, d] and item_vectors [n_items, d]), averaged over the customers that have
    at least one; (exclude_users, exclude_items) pairs are removed from the ranking (e.g. offers
    accepted in training). Keys: recall@K, ndcg@K, random_recall@K, ranked_users."""
    users = torch.as_tensor(np.asarray(user_vectors, dtype=np.float32))
    items = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
    pu, pi = np.asarray(positive_users, dtype=np.int64), np.asarray(positive_items, dtype=np.int64)
    eu = np.asarray(exclude_users if exclude_users is not None else [], dtype=np.int64)
    ei = np.asarray(exclude_items if exclude_items is not None else [], dtype=np.int64)
    n_items = items.shape[0]
    k_eff = max(1, min(k, n_items))
    ranked = np.unique(pu)
    names = (f"recall@{k}", f"ndcg@{k}", f"random_recall@{k}")
    if len(ranked) == 0 or n_items == 0:
        return {**{name: float("nan") for name in names}, "ranked_users": 0}
    discount = 1.0 / np.log2(np.arange(2, k_eff + 2))                          # [k]
    ideal = np.cumsum(discount)                                                 # IDCG for 1..k relevant
    local = np.full(users.shape[0], -1, dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_items))
    recall, ndcg, random_recall = [], [], []
    with torch.no_grad():
        for start in range(0, len(ranked), chunk):
            rows = ranked[start:start + chunk]
            local[rows] = np.arange(len(rows))
            relevant = np.zeros((len(rows), n_items), dtype=bool)               # [c, N]
            sel = local[pu] >= 0
            relevant[local[pu[sel]], pi[sel]] = True
            excluded = np.zeros_like(relevant)
            sel = local[eu] >= 0 if len(eu) else np.zeros(0, dtype=bool)
            excluded[local[eu[sel]], ei[sel]] = True
            excluded &= ~relevant
            scores = users[torch.as_tensor(rows)] @ items.T                    # [c, N]
            scores[torch.as_tensor(excluded)] = -math.inf
            top = torch.topk(scores, k_eff, dim=1).indices.numpy()              # [c, k]
            hits = np.take_along_axis(relevant, top, axis=1)                    # [c, k]
            n_rel = relevant.sum(axis=1)
            capped = np.minimum(n_rel, k_eff)
            recall.append(hits.sum(axis=1) / capped)
            ndcg.append((hits * discount).sum(axis=1) / ideal[capped - 1])
            candidates = n_items - excluded.sum(axis=1)
            random_recall.append(np.minimum(n_rel, k_eff * n_rel / candidates) / capped)  # E[hits] / min(K, rel)
            local[rows] = -1
    return {names[0]: float(np.concatenate(recall).mean()), names[1]: float(np.concatenate(ndcg).mean()),
            names[2]: float(np.concatenate(random_recall).mean()), "ranked_users": int(len(ranked))}
