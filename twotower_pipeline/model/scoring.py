"""Top-K: the one ranking path of metrics, batch scoring, the concept test and serving.

`select_top_k(n_rows, n_items, k, score_block)` computes score blocks of `chunk_size` rows (a
matrix product, or any scorer: the baselines use it too), removes excluded columns and keeps each
row's k best (`selection.select_top_k`, a fused numba kernel) while the block is still in cache.
Blocks are shared out to `threads` workers, each running its products single-threaded: two
workers on two cores keep their blocks in their own caches, where one multi-threaded product and
a second thread pool would contend for the same cores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from twotower_pipeline.model.selection import select_top_k as _select_block

METRICS = ("cosine", "dot")
#: Rows per score block: 256 x 1,000 float32 scores (1 MB) stay in a core's L2 cache.
CHUNK_ROWS = 256
#: Work below this many scores runs in the caller's thread (a pool costs more than it saves).
_POOL_MINIMUM = 2_000_000

#: score_block(start, end, out): write the scores of rows [start, end) into out [end - start, n_items].
ScoreBlock = Callable[[int, int, torch.Tensor], None]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().contiguous()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def as_vectors(vectors, metric: str = "cosine") -> torch.Tensor:
    """float32 [n, d] vectors, finite, unit length for "cosine"."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
    vectors = _as_tensor(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array, got shape {tuple(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        raise ValueError(f"{int((~torch.isfinite(vectors)).any(dim=1).sum())} vectors are not finite")
    return torch.nn.functional.normalize(vectors, dim=-1) if metric == "cosine" else vectors


def exclusions(rows, columns, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (rows[p], columns[p]) to leave out of the ranking, as CSR (indptr [n_rows + 1], columns)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    columns = np.asarray(columns, dtype=np.int64).reshape(-1)
    if rows.shape != columns.shape:
        raise ValueError(f"{len(rows)} excluded rows but {len(columns)} excluded columns")
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows)[:n_rows], out=indptr[1:])
    return indptr, columns[order]


def _no_exclusions(n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)


def _empty_top(n_rows: int, n_items: int, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(k' = min(k, n_items), scores [n_rows, k'] of -inf, columns [n_rows, k'] of -1): what the
    selection fills."""
    k = max(0, min(int(k), n_items))
    return k, np.full((n_rows, k), -np.inf, dtype=np.float32), np.full((n_rows, k), -1, dtype=np.int64)


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def select_top_k(n_rows: int, n_items: int, k: int, score_block: ScoreBlock, *,
                 exclude: tuple[np.ndarray, np.ndarray] | None = None, chunk_size: int | None = None,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n_rows, k'], columns [n_rows, k']) of each row's k' = min(k, n_items) best columns,
    sorted by score descending (ties: lower column first); excluded columns never appear, and a
    row with fewer than k' columns left has column -1 (score -inf) in its last slots."""
    k, scores, columns = _empty_top(n_rows, n_items, k)
    if k == 0 or n_rows == 0:
        return scores, columns
    indptr, excluded = exclude if exclude is not None else _no_exclusions(n_rows)
    if len(indptr) != n_rows + 1:
        raise ValueError(f"exclusions cover {len(indptr) - 1} rows, expected {n_rows}")
    if len(excluded) and (excluded.min() < 0 or excluded.max() >= n_items):
        raise ValueError(f"excluded columns must lie in 0..{n_items - 1}")
    chunk = max(1, int(chunk_size or CHUNK_ROWS))
    starts = list(range(0, n_rows, chunk))
    workers = max(1, min(int(threads or os.cpu_count() or 1), len(starts)))
    if n_rows * n_items < _POOL_MINIMUM:
        workers = 1

    def work(worker: int) -> None:
        block = torch.empty((min(chunk, n_rows), n_items), dtype=torch.float32)
        for start in starts[worker::workers]:
            end = min(n_rows, start + chunk)
            view = block[: end - start]
            score_block(start, end, view)
            _select_block(view.numpy(), k, indptr[start:end + 1], excluded, scores[start:end], columns[start:end])

    with torch.no_grad():
        if workers == 1:
            work(0)
        else:
            with _torch_threads(1), threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))
    return scores, columns


def select_top_k_of(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`select_top_k` of a few rows already scored, scores [n_rows, n_items] float32 (overwritten):
    the same kernel and result without the blocking, for one request's ranking (serving), where
    building blocks would cost several times the product and the selection."""
    n_rows, n_items = scores.shape
    k, values, columns = _empty_top(n_rows, n_items, k)
    if k and n_rows:
        indptr, excluded = _no_exclusions(n_rows)
        _select_block(scores, k, indptr, excluded, values, columns)
    return values, columns


def top_k(user_vectors, item_vectors, k: int, *, metric: str = "cosine", exclude=None,
          chunk_size: int | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """user_vectors [n, d], item_vectors [N, d] -> (scores [n, k'], item indices [n, k']), each row
    sorted by score descending; k' = min(k, N). `exclude` (from `exclusions`) removes pairs."""
    users = as_vectors(user_vectors, metric)
    items = as_vectors(item_vectors, metric)
    if users.shape[1] != items.shape[1]:
        raise ValueError(f"customer vectors have length {users.shape[1]} but offer vectors have {items.shape[1]}")
    items_t = items.T.contiguous()                                              # [d, N]

    users_np, items_np = users.numpy(), items_t.numpy()

    def product(start: int, end: int, out: torch.Tensor) -> None:
        np.matmul(users_np[start:end], items_np, out=out.numpy())                # [c, N]

    return select_top_k(users.shape[0], items.shape[0], k, product, exclude=exclude, chunk_size=chunk_size,
                        threads=threads)


def rank_offers(user_vector, item_vectors, offers, *, metric: str = "cosine") -> list[tuple[str, float]]:
    """[(offer, score)] for one customer, every offer, score descending (ties keep the order of
    `offers`). user_vector [d]; item_vectors [N, d] aligned with `offers` [N]."""
    offers = list(offers)
    if len(offers) == 0:
        return []
    items = np.asarray(item_vectors, dtype=np.float32).reshape(len(offers), -1)
    user = np.asarray(user_vector, dtype=np.float32).reshape(1, -1)
    scores, index = top_k(user, items, len(offers), metric=metric)
    return [(offers[i], float(s)) for s, i in zip(scores[0], index[0])]
