"""The similarity scorer of a `predictor.model.type=similarity` deployment (SPEC §7): one run's
offer vectors held in memory, ranked against a customer vector by cosine (default) or dot.

Pure numpy/torch, no web framework: the service, the benchmarks and the tests call it the same
way. Ranking goes through the project's one top-K kernel (`model.scoring.select_top_k_of`); the
offer matrix is normalised and transposed once, when the scorer is built, so a request costs one
[1, d] x [d, N] product and the selection.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from twotower_pipeline.model import scoring


@dataclasses.dataclass(frozen=True)
class Ranked:
    """A ranking: the top offers (score descending, ties in catalogue order), and what was left out."""

    offers: list[str]
    scores: list[float]
    ineligible: int = 0          # catalogue offers the request's eligibility or exclusions left out
    unknown_eligible: tuple = ()  # eligible offers the scorer does not hold (no vector, or not in the catalogue)
    candidates: int = 0          # offers the ranking chose from


class SimilarityScorer:
    """Ranks the offers of one run for one customer vector.

    `catalogue` (the offer matrix's names, in its order) decides what may be shown; its offers
    without a vector in the run are skipped (`skipped`, for the caller to log), never an error.
    Without a catalogue every offer with a vector is a candidate."""

    def __init__(self, run_id: str, offers: list[str], vectors, *, metric: str = "cosine",
                 catalogue: list[str] | None = None, details: dict[str, dict] | None = None):
        vectors = scoring.as_vectors(vectors, metric).numpy()
        if len(offers) != vectors.shape[0]:
            raise ValueError(f"{len(offers)} offers but {vectors.shape[0]} vectors")
        position = {str(offer): i for i, offer in enumerate(offers)}
        if len(position) != len(offers):
            raise ValueError(f"{len(offers) - len(position)} duplicate offers among the vectors")
        names = list(dict.fromkeys(map(str, catalogue))) if catalogue is not None else list(position)
        held = [name for name in names if name in position]
        self.run_id = run_id
        self.metric = metric
        self.offers = held
        self.skipped = [name for name in names if name not in position]
        self.details = details or {}
        self._index = {name: i for i, name in enumerate(held)}
        rows = np.asarray([position[name] for name in held], dtype=np.int64)
        matrix = vectors[rows] if len(rows) else np.zeros((0, vectors.shape[1]), dtype=np.float32)
        self.dim = int(vectors.shape[1])
        self._items = np.ascontiguousarray(matrix, dtype=np.float32)          # [N, d]
        self._items_t = np.ascontiguousarray(matrix.T, dtype=np.float32)      # [d, N]

    def __len__(self) -> int:
        return len(self.offers)

    def vector_of(self, offer: str) -> np.ndarray | None:
        i = self._index.get(offer)
        return None if i is None else self._items[i]

    def rank(self, customer_vector, number_offers: int, eligible=None, excluded=None) -> Ranked:
        """The top `number_offers` offers for the customer; `eligible` (offer names) restricts the
        candidates and `excluded` (offer names) leaves some out; an eligible offer the scorer does
        not hold is reported, not an error."""
        user = self._query(customer_vector)
        columns, unknown = self._candidates(eligible, excluded)
        items_t = self._items_t if columns is None else self._items_t[:, columns]
        scores, found = scoring.select_top_k_of(user @ items_t, number_offers)          # [1, N] -> [1, k]
        kept = found[0] >= 0
        chosen = found[0][kept] if columns is None else columns[found[0][kept]]
        return self._ranked(chosen, scores[0][kept], columns, unknown)

    def draw(self, customer_vector, number_offers: int, rng: np.random.Generator, eligible=None,
             excluded=None) -> Ranked:
        """`number_offers` of the same candidates as `rank`, in a uniformly drawn order (the first
        places of a uniform permutation), each with its score."""
        user = self._query(customer_vector)
        columns, unknown = self._candidates(eligible, excluded)
        n = len(self.offers) if columns is None else len(columns)
        picked = rng.choice(n, size=min(int(number_offers), n), replace=False)
        chosen = picked if columns is None else columns[picked]
        return self._ranked(chosen, (user @ self._items_t[:, chosen])[0], columns, unknown)

    def _query(self, customer_vector) -> np.ndarray:
        user = np.asarray(customer_vector, dtype=np.float32).reshape(1, -1)
        if user.shape[1] != self.dim:
            raise ValueError(f"the customer vector has length {user.shape[1]}, the run's offer vectors {self.dim}")
        if not np.isfinite(user).all():
            raise ValueError("the customer vector is not finite")
        if self.metric == "cosine":
            norm = float(np.linalg.norm(user))
            if norm == 0.0:
                raise ValueError("the customer vector is zero: it has no direction to rank by")
            user = user / norm
        return user

    def _candidates(self, eligible, excluded) -> tuple[np.ndarray | None, tuple]:
        """(the columns a request may be shown, None for all; eligible offers the scorer does not hold)."""
        if eligible is None and not excluded:
            return None, ()
        unknown = ()
        if eligible is None:
            allowed = np.ones(len(self.offers), dtype=bool)
        else:
            wanted = list(dict.fromkeys(map(str, eligible)))
            allowed = np.zeros(len(self.offers), dtype=bool)
            allowed[[self._index[o] for o in wanted if o in self._index]] = True
            unknown = tuple(o for o in wanted if o not in self._index)
        if excluded:
            allowed[[self._index[o] for o in excluded if o in self._index]] = False
        return np.flatnonzero(allowed), unknown

    def _ranked(self, chosen: np.ndarray, scores: np.ndarray, columns, unknown) -> Ranked:
        candidates = len(self.offers) if columns is None else len(columns)
        return Ranked(offers=[self.offers[i] for i in chosen], scores=scores.astype(float).tolist(),
                      ineligible=len(self.offers) - candidates, unknown_eligible=unknown, candidates=candidates)
