"""Top-K by cosine (or dot) between customer vectors and offer vectors: batch scoring, the
concept test and the serving side all rank with these two functions."""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("cosine", "dot")
_CHUNK_ELEMENTS = 4_000_000  # scores held at once: chunk rows x catalogue size


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()


def _prepare(vectors: torch.Tensor, metric: str) -> torch.Tensor:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
    return torch.nn.functional.normalize(vectors, dim=-1) if metric == "cosine" else vectors


def top_k(user_vectors, item_vectors, k: int, *, metric: str = "cosine",
          chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """user_vectors [n, d], item_vectors [N, d] -> (scores [n, k'], item indices [n, k']), each row
    sorted by score descending; k' = min(k, N). Computed in chunks of customers (torch.topk)."""
    users = _prepare(_as_tensor(user_vectors), metric)
    items = _prepare(_as_tensor(item_vectors), metric)
    n, n_items = users.shape[0], items.shape[0]
    k = max(0, min(int(k), n_items))
    scores = np.empty((n, k), dtype=np.float32)
    indices = np.empty((n, k), dtype=np.int64)
    if k == 0 or n == 0:
        return scores, indices
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, n_items))
    with torch.no_grad():
        for start in range(0, n, chunk):
            block = users[start:start + chunk] @ items.T                       # [c, N]
            values, index = torch.topk(block, k, dim=1)                         # [c, k], sorted
            scores[start:start + chunk] = values.numpy()
            indices[start:start + chunk] = index.numpy()
    return scores, indices


def rank_offers(user_vector, item_vectors, offers, *, metric: str = "cosine") -> list[tuple[str, float]]:
    """[(offer, score)] for one customer, score descending (ties keep the order of `offers`).
    user_vector [d]; item_vectors [N, d] aligned with `offers` [N]."""
    offers = list(offers)
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
    if len(offers) == 0:
        return []
    items = np.asarray(item_vectors, dtype=np.float64).reshape(len(offers), -1)
    user = np.asarray(user_vector, dtype=np.float64).reshape(-1)
    if items.shape[1] != user.shape[0]:
        raise ValueError(f"customer vector has length {user.shape[0]} but offer vectors have {items.shape[1]}")
    scores = items @ user
    if metric == "cosine":
        norms = np.linalg.norm(items, axis=1) * np.linalg.norm(user)
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    order = np.argsort(-scores, kind="stable")
    return [(offers[i], float(scores[i])) for i in order]
