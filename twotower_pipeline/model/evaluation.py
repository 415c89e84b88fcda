"""Held-out split and offline scoring of a run against baselines, in plain numpy/torch.

The split (`holdout_mask`) is a function of the frame's content, not of its row order, so the
offline-scoring step rebuilds exactly the exposures the run was validated on from the same
training frame:
- `holdout="customer"` (default): per customer, `validation_split` of its exposures, chosen by a
  seeded hash of each exposure (uuid and offer where the frame has them); a customer with one
  exposure keeps it for training;
- `holdout="time"`: every exposure in the last `holdout_days` days of the frame (`datetime`).

`evaluate(scorer, held_out)` ranks the whole catalogue for every customer with a held-out accept
(offers accepted in training left out) with `scoring.select_top_k` and reports
`metrics.ranking_metrics` and `metrics.auc_metrics`. Scorers: the run's own vectors
(`VectorScorer`), and the baselines `PopularityScorer` (training accepts per offer), `RandomScorer`
(a seeded hash of customer and offer) and `EaseScorer` (Steck 2019: the item-item ridge
regression B = I - P / diag(P), P = (X'X + lambda I)^-1, in closed form, for catalogues of up to
`EASE_MAX_OFFERS` offers).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.model import metrics, scoring

EASE_MAX_OFFERS = 20_000
EASE_L2 = 500.0
BASELINES = ("popularity", "random", "ease")


# --- the split -------------------------------------------------------------------------------------
def _row_hash(frame: pd.DataFrame, user_column: str, item_column: str, seed: int) -> np.ndarray:
    """A seeded 64-bit hash per exposure, from its content: (uuid, offer) when the frame has uuids,
    else (customer, offer, occurrence of that pair)."""
    if "uuid" in frame.columns and frame["uuid"].notna().all():
        identity = frame[["uuid", item_column]].astype(str)
    else:
        identity = frame[[user_column, item_column]].astype(str)
        identity = identity.assign(occurrence=identity.groupby([user_column, item_column]).cumcount())
    return pd.util.hash_pandas_object(identity, index=False, hash_key=f"tt{seed % 10**14:014d}").to_numpy()


def holdout_mask(frame: pd.DataFrame, *, method: str = "customer", share: float = 0.2, days: int = 7,
                 seed: int = 42, user_column: str = "customer_id", item_column: str = "offer") -> np.ndarray:
    """Boolean [len(frame)]: True for the held-out exposures (see the module docstring)."""
    if method == "time":
        if "datetime" not in frame.columns:
            raise ValueError("holdout='time' needs a `datetime` column in the training frame")
        when = pd.to_datetime(frame["datetime"], utc=True)
        return (when >= when.max() - pd.Timedelta(days=days)).to_numpy()
    if method != "customer":
        raise ValueError(f"holdout {method!r} is not one of ['customer', 'time']")
    hashes = _row_hash(frame, user_column, item_column, seed)
    customers = pd.factorize(frame[user_column].astype(str))[0]
    order = np.lexsort((hashes, customers))                                     # by customer, then hash
    sorted_customers = customers[order]
    starts = np.flatnonzero(np.r_[True, sorted_customers[1:] != sorted_customers[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, counts)                # rank within the customer
    held = np.zeros(len(frame), dtype=bool)
    held[order] = position < np.floor(np.repeat(counts, counts) * share + 0.5)
    return held


# --- held-out interactions as codes -----------------------------------------------------------------
@dataclasses.dataclass
class HeldOut:
    """A split's interactions as codes into a customer list [n_users] and an offer catalogue [n_items]."""

    n_users: int
    n_items: int
    train_rows: np.ndarray        # accepted in training: (customer, offer) pairs, excluded from rankings
    train_columns: np.ndarray
    test_rows: np.ndarray         # accepted in the held-out exposures: the relevant pairs
    test_columns: np.ndarray
    exposure_rows: np.ndarray     # every held-out exposure, for the accept/decline AUCs
    exposure_columns: np.ndarray
    exposure_labels: np.ndarray
    dropped: int = 0              # held-out exposures whose customer or offer has no code

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, held: np.ndarray, customers, offers, *,
                   user_column: str = "customer_id", item_column: str = "offer",
                   target_column: str = "accepted") -> "HeldOut":
        rows = pd.Index([str(c) for c in customers]).get_indexer(frame[user_column].astype(str))
        columns = pd.Index([str(o) for o in offers]).get_indexer(frame[item_column].astype(str))
        labels = pd.to_numeric(frame[target_column]).to_numpy(dtype=np.int64)
        return cls.from_codes(rows, columns, labels, held, len(customers), len(offers))

    @classmethod
    def from_codes(cls, rows, columns, labels, held, n_users: int, n_items: int) -> "HeldOut":
        """From per-exposure codes (-1: no code, the exposure is dropped), labels and the split."""
        rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        labels, held = np.asarray(labels, dtype=np.int64), np.asarray(held, dtype=bool)
        known = (rows >= 0) & (columns >= 0)
        accepted = known & (labels == 1)
        train, test, exposures = accepted & ~held, accepted & held, known & held
        return cls(n_users, n_items, rows[train], columns[train], rows[test], columns[test],
                   rows[exposures], columns[exposures], labels[exposures], dropped=int((held & ~known).sum()))

    @property
    def evaluated_users(self) -> np.ndarray:
        """Customers with at least one held-out accept (the ones ranking metrics average over)."""
        return np.unique(self.test_rows)

    @property
    def has_declines(self) -> bool:
        return bool(len(self.exposure_labels)) and bool((self.exposure_labels == 0).any())


# --- scorers ---------------------------------------------------------------------------------------
class VectorScorer:
    """The run's own vectors: score = cosine of the customer's and the offer's unit vectors."""

    def __init__(self, user_vectors, item_vectors):
        self.users = scoring.as_vectors(user_vectors)                   # [U, d]
        self.items_t = scoring.as_vectors(item_vectors).T.contiguous()  # [d, N]

    def block(self, users: np.ndarray, out: torch.Tensor) -> None:
        torch.mm(self.users[torch.from_numpy(users)], self.items_t, out=out)

    def pairs(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        items = self.items_t.T
        return (self.users[torch.from_numpy(rows)] * items[torch.from_numpy(columns)]).sum(dim=1).numpy()


class PopularityScorer:
    """Offers by their number of training accepts (the same list for every customer)."""

    def __init__(self, held_out: HeldOut):
        self.counts = torch.from_numpy(np.bincount(held_out.train_columns, minlength=held_out.n_items)
                                       .astype(np.float32))

    def block(self, users: np.ndarray, out: torch.Tensor) -> None:
        out.copy_(self.counts.expand_as(out))

    def pairs(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return self.counts.numpy()[columns]


class RandomScorer:
    """A seeded pseudo-random score per (customer, offer): a uniform random ranking."""

    def __init__(self, held_out: HeldOut, seed: int = 42):
        self.n_items = held_out.n_items
        self.seed = np.uint64(seed)

    def _scores(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        x = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + columns.astype(np.uint64) + self.seed
        x ^= x >> np.uint64(30)                                                  # splitmix64 finaliser
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return (x >> np.uint64(40)).astype(np.float32) / np.float32(2**24)

    def block(self, users: np.ndarray, out: torch.Tensor) -> None:
        columns = np.arange(self.n_items, dtype=np.int64)
        out.copy_(torch.from_numpy(self._scores(users[:, None], columns[None, :])))

    def pairs(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return self._scores(np.asarray(rows), np.asarray(columns))


class EaseScorer:
    """EASE: scores = X B, X the binary customer x offer matrix of training accepts."""

    def __init__(self, held_out: HeldOut, l2: float = EASE_L2):
        n = held_out.n_items
        if n > EASE_MAX_OFFERS:
            raise ValueError(f"EASE needs an {n} x {n} inverse; it is computed for up to {EASE_MAX_OFFERS} offers")
        pairs = np.unique(held_out.train_rows.astype(np.int64) * n + held_out.train_columns)
        rows, columns = pairs // n, pairs % n
        indptr = np.zeros(held_out.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=held_out.n_users), out=indptr[1:])
        self.indptr, self.columns = indptr, columns
        xt = torch.sparse_coo_tensor(torch.from_numpy(np.stack([columns, rows])),
                                     torch.ones(len(columns), dtype=torch.float64), (n, held_out.n_users),
                                     check_invariants=False)
        with warnings.catch_warnings():  # sparse x sparse goes through torch's beta CSR kernels
            warnings.simplefilter("ignore", UserWarning)
            gram = torch.sparse.mm(xt, xt.t()).to_dense()                       # X'X [N, N]
        gram += l2 * torch.eye(n, dtype=torch.float64)
        p = torch.linalg.inv(gram)
        b = -p / torch.diagonal(p)
        b.fill_diagonal_(0.0)
        self.weights = b.float()                                                # [N, N]

    def _rows(self, users: np.ndarray) -> torch.Tensor:
        """The training accepts of `users` as a sparse [len(users), N] matrix."""
        starts, lengths = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        positions = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
        indices = np.stack([np.repeat(np.arange(len(users)), lengths), self.columns[positions]])
        return torch.sparse_coo_tensor(torch.from_numpy(indices), torch.ones(indices.shape[1]),
                                       (len(users), self.weights.shape[0]), check_invariants=False)

    def block(self, users: np.ndarray, out: torch.Tensor) -> None:
        out.copy_(torch.sparse.mm(self._rows(users), self.weights))

    def pairs(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        scores = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), 4096):
            r, c = rows[start:start + 4096], columns[start:start + 4096]
            unique, inverse = np.unique(r, return_inverse=True)
            block = torch.sparse.mm(self._rows(unique), self.weights).numpy()   # [u, N]
            scores[start:start + 4096] = block[inverse, c]
        return scores


def baseline_scorer(name: str, held_out: HeldOut, seed: int = 42):
    if name == "popularity":
        return PopularityScorer(held_out)
    if name == "random":
        return RandomScorer(held_out, seed)
    if name == "ease":
        return EaseScorer(held_out)
    raise ValueError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")


# --- evaluation ------------------------------------------------------------------------------------
def evaluate(scorer, held_out: HeldOut, ks=metrics.KS, users: np.ndarray | None = None) -> dict[str, float]:
    """Ranking metrics over the whole catalogue for `users` (default: every customer with a
    held-out accept), then the accept/decline AUCs on the held-out exposures."""
    users = held_out.evaluated_users if users is None else np.asarray(users, dtype=np.int64)
    local = np.full(held_out.n_users, -1, dtype=np.int64)
    local[users] = np.arange(len(users))
    relevant = local[held_out.test_rows] >= 0
    test = (local[held_out.test_rows[relevant]], held_out.test_columns[relevant])
    # offers accepted in training are left out, unless they are held-out accepts too
    train = local[held_out.train_rows] >= 0
    train_keys = local[held_out.train_rows[train]] * held_out.n_items + held_out.train_columns[train]
    keep = ~np.isin(train_keys, test[0] * held_out.n_items + test[1])
    exclude = scoring.exclusions(train_keys[keep] // held_out.n_items, train_keys[keep] % held_out.n_items,
                                 len(users))

    def score_block(start: int, end: int, out: torch.Tensor) -> None:
        scorer.block(users[start:end], out)

    _, top = scoring.select_top_k(len(users), held_out.n_items, max(ks), score_block, exclude=exclude)
    result = metrics.ranking_metrics(top, test[0], test[1], held_out.n_items, ks)
    if len(held_out.exposure_rows):
        scores = scorer.pairs(held_out.exposure_rows, held_out.exposure_columns)
        result.update(metrics.auc_metrics(scores, held_out.exposure_labels, held_out.exposure_rows,
                                          held_out.exposure_columns))
    else:
        result.update(auc=float("nan"), user_auc=float("nan"), item_auc=float("nan"))
    return result


def compare_with_baselines(model_scorer, held_out: HeldOut, baselines=BASELINES, ks=metrics.KS,
                           seed: int = 42, log=None) -> dict[str, dict]:
    """{"two_tower": metrics, <baseline>: metrics, ...} on the same split; a baseline that cannot be
    computed (EASE over a too large catalogue) is reported with its reason under "skipped"."""
    results = {"two_tower": evaluate(model_scorer, held_out, ks)}
    for name in baselines:
        try:
            scorer = baseline_scorer(name, held_out, seed)
        except ValueError as error:
            results.setdefault("skipped", {})[name] = str(error)
            continue
        results[name] = evaluate(scorer, held_out, ks)
        if log:
            log(f"{name}: ndcg@10 {results[name].get('ndcg@10', float('nan')):.4f}")
    return results


def publish_gate(results: dict[str, dict], *, min_ndcg_gain: float = 0.01, min_auc: float = 0.5,
                 k: int = 10) -> dict:
    """May the run be published? It must beat popularity's NDCG@k by `min_ndcg_gain` and, where
    the held-out exposures hold declines, have an accept/decline AUC above `min_auc`. Returns
    {passed, reasons (why not), notes (facts worth saying, e.g. losing to EASE), and the figures}."""
    key = f"ndcg@{k}"
    model, popularity, ease = results["two_tower"], results.get("popularity"), results.get("ease")
    reasons, notes = [], []
    value = model.get(key, float("nan"))
    if np.isnan(value):
        reasons.append(f"no held-out accepts to measure {key} on")
    elif popularity is None:
        reasons.append("the popularity baseline was not computed, so the gate cannot compare against it")
    elif not value > popularity[key] + min_ndcg_gain:
        reasons.append(f"{key} {value:.4f} does not beat popularity ({popularity[key]:.4f}) by {min_ndcg_gain:g}")
    auc = model.get("auc", float("nan"))
    if not np.isnan(auc) and not auc > min_auc:
        reasons.append(f"accept/decline AUC {auc:.4f} is not above {min_auc:g}")
    if np.isnan(auc):
        notes.append("no declined exposure is held out (implicit feedback): the AUC condition does not apply")
    if ease is not None and not np.isnan(value) and value < ease[key]:
        notes.append(f"the run loses to EASE on {key}: {value:.4f} against {ease[key]:.4f}")
    return {"passed": not reasons, "reasons": reasons, "notes": notes, key: value,
            f"popularity_{key}": popularity[key] if popularity else float("nan"), "min_ndcg_gain": min_ndcg_gain,
            "auc": auc, "min_auc": min_auc}
