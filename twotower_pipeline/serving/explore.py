"""Epsilon exploration, as the ecosystem.Ai runtime applies it per campaign: with probability
`epsilon` a request's ranking is replaced by a uniformly drawn order of its eligible offers.

Every presented offer carries its propensity: the probability that this policy (the mixture of
the greedy ranking and the uniform draw) puts that offer at that rank for this request,
(1 - epsilon) * [the greedy ranking has it there] + epsilon / n for n candidate offers (a uniform
permutation puts any offer at any rank with probability 1 / n). Off-policy estimates (inverse
propensity scoring and its kin) need exactly this, logged with the decision.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from twotower_pipeline.serving.scorer import Ranked, SimilarityScorer


@dataclasses.dataclass(frozen=True)
class Presented:
    ranked: Ranked
    explore: bool
    propensities: list[float]


class Explorer:
    """Draws for every campaign of one process from one seeded generator (under a lock: numpy's
    generators are not thread-safe)."""

    def __init__(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def present(self, scorer: SimilarityScorer, vector, number_offers: int, *, epsilon: float = 0.0,
                eligible=None, excluded=None) -> Presented:
        greedy = scorer.rank(vector, number_offers, eligible, excluded)
        explore = False
        if epsilon > 0.0 and greedy.candidates:
            with self._lock:
                explore = bool(self._rng.random() < epsilon)
                shown = scorer.draw(vector, number_offers, self._rng, eligible, excluded) if explore else greedy
        else:
            shown = greedy
        uniform = epsilon / shown.candidates if shown.candidates else 0.0
        propensities = [(1.0 - epsilon) * (rank < len(greedy.offers) and greedy.offers[rank] == offer) + uniform
                        for rank, offer in enumerate(shown.offers)]
        return Presented(shown, explore, propensities)
