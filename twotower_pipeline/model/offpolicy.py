"""Off-policy estimates of what a ranking policy's accept rate would have been, from logged
exposures and their propensities, with the definitions of the Open Bandit Pipeline (position-based:
one round per presented slot).

A logged round t is an offer a_t shown at rank k_t by the logging policy with probability p_t (its
propensity, logged by the runtime beside each offer of an answer) and r_t = 1 when it was accepted.
The candidate policy pi_e is a run's deterministic top-K: it shows offer a at rank k with
probability 1 when a is its k-th offer for that customer, so the importance weight is
w_t = pi_e(a_t | x_t, k_t) / p_t = [candidate's k_t-th offer is a_t] / p_t. Per round:

- IPS (OBP's IPW): w_t r_t;
- SNIPS (SNIPW): w_t r_t / mean(w);
- DR: q(x_t, pi_e) + w_t (r_t - q(x_t, a_t)), with q a model of the accept probability
  (q(x_t, pi_e): of the candidate's own offer at rank k_t; q(x_t, a_t): of the logged one).

The estimate is the mean of the round rewards; its interval the nonparametric bootstrap's (the
percentiles of resampled means, 10,000 resamples, alpha 0.05, as OBP's
`estimate_confidence_interval_by_bootstrap`). A round without a propensity is refused, never
filled in: a log from before exploration has none, and no estimate is made from it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
BOOTSTRAP_SAMPLES = 10_000
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An estimated accept rate per presented slot, its (1 - alpha) interval and its support."""

    estimator: str
    value: float
    low: float
    high: float
    rounds: int       # logged slots the estimate averages over
    matching: int     # of which the candidate would have shown the same offer at the same rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def importance_weights(propensity: np.ndarray, matches: np.ndarray) -> np.ndarray:
    """w_t = [matches_t] / p_t; ValueError naming the first round whose propensity is missing or
    not a probability."""
    propensity = np.asarray(propensity, dtype=np.float64)
    matches = np.asarray(matches, dtype=bool)
    if propensity.shape != matches.shape:
        raise ValueError(f"{len(propensity)} propensities for {len(matches)} rounds")
    bad = ~((propensity > 0) & (propensity <= 1))  # NaN included
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"round {first} has propensity {float(propensity[first])!r}: off-policy estimates need the "
                         f"logging policy's probability in (0, 1] for every round ({int(bad.sum())} lack it)")
    return matches / propensity


def round_rewards(estimator: str, reward: np.ndarray, weight: np.ndarray, q_logged: np.ndarray | None = None,
                  q_candidate: np.ndarray | None = None) -> np.ndarray:
    """Each round's contribution to the estimate (their mean is the estimate)."""
    reward = np.asarray(reward, dtype=np.float64)
    if estimator == "ips":
        return weight * reward
    if estimator == "snips":
        mean_weight = weight.mean() if len(weight) else 0.0
        return weight * reward / mean_weight if mean_weight > 0 else np.full(len(weight), np.nan)
    if estimator == "dr":
        if q_logged is None or q_candidate is None:
            raise ValueError("dr needs the reward model's accept probability of the logged and the candidate's offer")
        return np.asarray(q_candidate, dtype=np.float64) + weight * (reward - np.asarray(q_logged, dtype=np.float64))
    raise ValueError(f"unknown estimator {estimator!r}; choose from {list(ESTIMATORS)}")


def bootstrap_interval(samples: np.ndarray, alpha: float = ALPHA, n_samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentiles of the means of `n_samples` resamples (with
    replacement) of `samples`; resampled in blocks so that memory stays bounded."""
    samples = np.asarray(samples, dtype=np.float64)
    if not len(samples) or np.isnan(samples).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_samples)
    block = max(1, 2_000_000 // len(samples))
    for start in range(0, n_samples, block):
        count = min(block, n_samples - start)
        means[start:start + count] = samples[rng.integers(0, len(samples), size=(count, len(samples)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def estimate(reward: np.ndarray, propensity: np.ndarray, matches: np.ndarray, *, q_logged: np.ndarray | None = None,
             q_candidate: np.ndarray | None = None, estimators=ESTIMATORS, alpha: float = ALPHA,
             n_bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Estimate]:
    """{estimator: Estimate} of the candidate's accept rate per presented slot (DR only with a
    reward model)."""
    weight = importance_weights(propensity, matches)
    found = {}
    for name in estimators:
        if name == "dr" and (q_logged is None or q_candidate is None):
            continue
        rewards = round_rewards(name, reward, weight, q_logged, q_candidate)
        value = float(rewards.mean()) if len(rewards) else float("nan")
        low, high = bootstrap_interval(rewards, alpha, n_bootstrap, seed)
        found[name] = Estimate(name, value, low, high, len(weight), int(np.count_nonzero(weight)))
    return found


@dataclasses.dataclass(frozen=True)
class LoggedRounds:
    """Logged exposures: the customer, the offer shown, its rank (1-based), accepted or not, and
    the logging policy's propensity of that offer at that rank."""

    customers: np.ndarray
    offers: np.ndarray
    ranks: np.ndarray
    accepted: np.ndarray
    propensity: np.ndarray


def candidate_offers_at(rounds: LoggedRounds, user_keys, user_vectors, item_keys, item_vectors) -> np.ndarray:
    """The offer the candidate (its vectors' top-K by cosine, the project's top-K kernel) shows
    each round's customer at the round's rank; "" for a customer it has no vector for."""
    from twotower_pipeline.model.scoring import top_k

    position = {str(k): i for i, k in enumerate(user_keys)}
    rows = np.array([position.get(str(c), -1) for c in rounds.customers], dtype=np.int64)
    known = np.unique(rows[rows >= 0])
    shown = np.full(len(rows), "", dtype=object)
    if not len(known):
        return shown
    depth = int(np.max(rounds.ranks))
    _, top = top_k(np.asarray(user_vectors)[known], np.asarray(item_vectors), depth)
    at_row = np.full(len(user_keys), -1, dtype=np.int64)
    at_row[known] = np.arange(len(known))
    items = np.asarray([str(k) for k in item_keys], dtype=object)
    for i in np.flatnonzero(rows >= 0):
        rank = int(rounds.ranks[i]) - 1
        if 0 <= rank < top.shape[1]:
            shown[i] = items[top[at_row[rows[i]], rank]]
    return shown


def offer_rank_model(rounds: LoggedRounds, prior: float = 10.0):
    """DR's reward model: the accept rate of an offer at a rank, its logged accepts smoothed toward
    the rank's accept rate by `prior` pseudo-exposures. Returns q(offers, ranks) -> rates."""
    ranks = rounds.ranks.astype(np.int64)
    accepted = rounds.accepted.astype(np.float64)
    by_rank = {int(r): accepted[ranks == r].mean() for r in np.unique(ranks)}
    overall = accepted.mean() if len(accepted) else 0.0
    shows: dict[str, int] = {}
    accepts: dict[str, float] = {}
    for offer, hit in zip(rounds.offers, accepted):
        shows[str(offer)] = shows.get(str(offer), 0) + 1
        accepts[str(offer)] = accepts.get(str(offer), 0.0) + hit

    def q(offers, at_ranks) -> np.ndarray:
        out = np.empty(len(offers))
        for i, (offer, rank) in enumerate(zip(offers, at_ranks)):
            base = by_rank.get(int(rank), overall)
            out[i] = (accepts.get(str(offer), 0.0) + prior * base) / (shows.get(str(offer), 0) + prior)
        return out

    return q


def replay(rounds: LoggedRounds, user_keys, user_vectors, item_keys, item_vectors, *,
           n_bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """The candidate's accept rate per presented slot estimated from the logged rounds that carry a
    propensity, or why there is no estimate. {available, reason?, rounds, without_propensity,
    without_vector, logged_accept_rate, estimates: {ips, snips, dr}}."""
    has = np.isfinite(np.asarray(rounds.propensity, dtype=np.float64))
    summary = {"without_propensity": int((~has).sum())}
    if not has.any():
        return {**summary, "available": False, "rounds": 0, "reason": (
            "no logged propensities: these exposures were logged before exploration or not by this runtime, "
            "so no off-policy estimate is made")}
    logged = LoggedRounds(*(np.asarray(a)[has] for a in dataclasses.astuple(rounds)))
    shown = candidate_offers_at(logged, user_keys, user_vectors, item_keys, item_vectors)
    with_vector = shown != ""
    summary["without_vector"] = int((~with_vector).sum())
    logged = LoggedRounds(*(np.asarray(a)[with_vector] for a in dataclasses.astuple(logged)))
    shown = shown[with_vector]
    if not len(shown):
        return {**summary, "available": False, "rounds": 0,
                "reason": "the candidate has no vector for any customer of the logged rounds"}
    q = offer_rank_model(logged)
    found = estimate(logged.accepted, logged.propensity, shown.astype(str) == logged.offers.astype(str),
                     q_logged=q(logged.offers, logged.ranks), q_candidate=q(shown, logged.ranks),
                     n_bootstrap=n_bootstrap, seed=seed)
    return {**summary, "available": True, "rounds": len(shown),
            "logged_accept_rate": float(np.mean(logged.accepted)),
            "estimates": {name: e.to_dict() for name, e in found.items()}}
