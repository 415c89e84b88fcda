"""Synthetic offer traffic with a known latent preference structure, for tests and scale runs.

Real logs cannot tell whether a trained model found the right structure; simulated ones can.
Customers and offers get latent vectors; a shown offer is accepted with probability
``sigmoid(affinity_scale * <u, v> + bias)``, the bias set so that the accept rate is about
`base_accept_rate`. What a model may see is derived from (but does not reveal) the latent vectors:

- customers: `segment` (the latent cluster the customer was drawn around), `age` (tied to latent
  dimension 0, plus noise) and `region` (pure noise);
- offers: `category` (the segment whose centre the offer's vector is closest to) and `price`
  (tied to latent dimension 1, plus noise).

Requests pick a customer (activity-skewed) and show `offers_per_request` distinct offers, drawn
by popularity without replacement (Gumbel top-k) and shown in that order; the runtime `score` is
the offer's popularity, which says nothing about the individual customer. Request times are
uniform over `days` from `start`. Everything is vectorised numpy and a function of `seed` only:
the world (customers, offers) and the traffic use separate streams of it, so
:func:`simulate_world` gives the ground truth of any :func:`simulate_exposures` run with the same
world arguments. Customer and offer ids are categorical in the exposures table, to keep
millions of rows small.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from twotower_pipeline.ingest.runtime_logs import RuntimeLogs, build_runtime_logs

PREDICTOR = "simulated_offers"
CHANNEL = "simulated"
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
REGIONS = ("north", "south", "east", "west")
#: Requests sampled per chunk, which bounds the memory of the Gumbel top-k draw.
_CHUNK = 200_000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass
class SimulatedWorld:
    """The ground truth: latent vectors, observable features and the accept model."""

    customer_ids: np.ndarray
    offer_names: np.ndarray
    customer_latent: np.ndarray  # (n_customers, latent_dim)
    offer_latent: np.ndarray  # (n_offers, latent_dim)
    customer_segment: np.ndarray  # cluster index of each customer
    segment_centres: np.ndarray  # (n_segments, latent_dim)
    activity: np.ndarray  # probability that a request is by each customer
    popularity: np.ndarray  # probability weights of offers being shown
    affinity_scale: float
    bias: float
    offer_matrix: pd.DataFrame
    customer_features: pd.DataFrame

    def _index(self, ids, names: np.ndarray) -> np.ndarray:
        lookup = pd.Index(names)
        positions = lookup.get_indexer(pd.Index(np.asarray(ids, dtype=object).astype(str)))
        if (positions < 0).any():
            unknown = np.asarray(ids, dtype=object)[positions < 0][:5].tolist()
            raise KeyError(f"unknown id(s) {unknown}")
        return positions

    def true_affinity(self, customer_ids, offers) -> np.ndarray:
        """<u, v> for each (customer, offer) pair; the arguments are equal-length sequences of ids."""
        u = self.customer_latent[self._index(customer_ids, self.customer_ids)]
        v = self.offer_latent[self._index(offers, self.offer_names)]
        return np.einsum("ij,ij->i", u, v)

    def accept_probability(self, customer_ids, offers) -> np.ndarray:
        return _sigmoid(self.affinity_scale * self.true_affinity(customer_ids, offers) + self.bias)

    def affinity_matrix(self) -> np.ndarray:
        """<u, v> for every customer (rows) and offer (columns), in id order."""
        return self.customer_latent @ self.offer_latent.T


@dataclasses.dataclass
class SimulatedTraffic:
    """Runtime logs plus the world that generated them."""

    logs: RuntimeLogs
    exposures: pd.DataFrame
    world: SimulatedWorld

    @property
    def customer_latent(self) -> np.ndarray:
        return self.world.customer_latent

    @property
    def offer_latent(self) -> np.ndarray:
        return self.world.offer_latent

    def true_affinity(self, customer_ids, offers) -> np.ndarray:
        return self.world.true_affinity(customer_ids, offers)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    world, traffic = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(world), np.random.default_rng(traffic)


def _calibrate_bias(affinity: np.ndarray, weights: np.ndarray, scale: float, target: float) -> float:
    """The bias whose weighted mean accept probability is `target` (bisection; it is monotone)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        if float(np.sum(weights * _sigmoid(scale * affinity + mid))) > target:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def simulate_world(
    n_customers: int = 2000,
    n_offers: int = 50,
    latent_dim: int = 8,
    *,
    n_segments: int = 5,
    affinity_scale: float = 2.5,
    base_accept_rate: float = 0.15,
    seed: int = 42,
) -> SimulatedWorld:
    if n_customers < 1 or n_offers < 1 or latent_dim < 2:
        raise ValueError("need n_customers >= 1, n_offers >= 1 and latent_dim >= 2")
    if not 0.0 < base_accept_rate < 1.0:
        raise ValueError("base_accept_rate must be between 0 and 1")
    rng, _ = _streams(seed)
    # Entries of u and v have variance 1/sqrt(d), so <u, v> has variance about 1 for any d.
    norm = latent_dim ** -0.25
    centres = rng.normal(size=(n_segments, latent_dim))
    segment = rng.choice(n_segments, size=n_customers, p=rng.dirichlet(np.full(n_segments, 5.0)))
    customer_latent = (0.8 * centres[segment] + 0.6 * rng.normal(size=(n_customers, latent_dim))) * norm
    offer_latent = rng.normal(size=(n_offers, latent_dim)) * norm

    activity = rng.lognormal(0.0, 0.6, size=n_customers)
    activity /= activity.sum()
    popularity = rng.lognormal(0.0, 1.0, size=n_offers)
    popularity /= popularity.sum()

    # Calibrate on (at most 5000) customers against all offers, weighted as traffic will be.
    sample = np.arange(n_customers) if n_customers <= 5000 else rng.choice(n_customers, 5000, replace=False)
    weights = activity[sample][:, None] * popularity[None, :]
    bias = _calibrate_bias(customer_latent[sample] @ offer_latent.T, weights / weights.sum(), affinity_scale,
                           base_accept_rate)

    width_c = len(str(n_customers - 1))
    width_o = len(str(n_offers - 1))
    customer_ids = np.array([f"sim_c{i:0{width_c}d}" for i in range(n_customers)], dtype=object)
    offer_names = np.array([f"sim_offer_{j:0{width_o}d}" for j in range(n_offers)], dtype=object)
    segment_names = np.array([f"segment_{chr(ord('a') + k)}" for k in range(n_segments)], dtype=object)

    z0 = customer_latent[:, 0] / norm
    age = np.clip(np.round(42 + 9 * z0 + rng.normal(0, 4, size=n_customers)), 18, 85).astype(int)
    region = np.array(REGIONS, dtype=object)[rng.integers(len(REGIONS), size=n_customers)]
    customer_features = pd.DataFrame(
        {"customer_id": customer_ids, "segment": segment_names[segment], "age": age, "region": region}
    )

    category = np.argmax((offer_latent / norm) @ centres.T, axis=1)
    price = np.round(np.exp(2.5 + 0.4 * offer_latent[:, 1] / norm + rng.normal(0, 0.15, size=n_offers)), 2)
    offer_matrix = pd.DataFrame(
        {
            "offer_name": offer_names,
            "offer_id": np.arange(1, n_offers + 1),
            "category": np.array([f"category_{chr(ord('a') + k)}" for k in range(n_segments)])[category],
            "popularity": np.round(popularity / popularity.max(), 6),
            "price": price.astype(float),
            "cost": np.round(price * 0.5, 2).astype(float),
            "static_offers": False,
        }
    )
    return SimulatedWorld(
        customer_ids=customer_ids, offer_names=offer_names, customer_latent=customer_latent,
        offer_latent=offer_latent, customer_segment=segment, segment_centres=centres * norm,
        activity=activity, popularity=popularity, affinity_scale=affinity_scale, bias=bias,
        offer_matrix=offer_matrix, customer_features=customer_features,
    )


def _draw_offers(rng: np.random.Generator, popularity: np.ndarray, n: int, k: int) -> np.ndarray:
    """(n, k) distinct offer indices per row, drawn one after another with probability `popularity`
    among those not yet drawn (successive sampling without replacement), in draw order."""
    n_offers = len(popularity)
    shown = np.empty((n, k), dtype=np.int64)
    if 4 * k > n_offers:
        # Few offers: Gumbel top-k over all of them, in chunks to bound memory.
        log_pop = np.log(popularity)
        for lo in range(0, n, _CHUNK):
            hi = min(lo + _CHUNK, n)
            keys = log_pop[None, :] + rng.gumbel(size=(hi - lo, n_offers))
            shown[lo:hi] = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        return shown
    # Many offers: draw each position with replacement and redraw the rows that repeat an earlier
    # offer (rejection gives the same distribution; with k <= n_offers / 4 redraws are few).
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]

    def draw(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_offers - 1)

    for j in range(k):
        column = draw(n)
        rows = np.flatnonzero((shown[:, :j] == column[:, None]).any(axis=1))
        while rows.size:
            column[rows] = draw(rows.size)
            rows = rows[(shown[rows, :j] == column[rows, None]).any(axis=1)]
        shown[:, j] = column
    return shown


def _exposures(world: SimulatedWorld, n_requests: int, offers_per_request: int, start, days: float,
               seed: int) -> pd.DataFrame:
    n_offers = len(world.offer_names)
    if not 1 <= offers_per_request <= n_offers:
        raise ValueError(f"offers_per_request must be between 1 and n_offers ({n_offers})")
    if n_requests < 1 or days <= 0:
        raise ValueError("need n_requests >= 1 and days > 0")
    start = pd.Timestamp(start)
    if start.tz is None:
        raise ValueError(f"start {start} has no timezone")
    _, rng = _streams(seed)
    k = offers_per_request
    customer = rng.choice(len(world.customer_ids), size=n_requests, p=world.activity)
    shown = _draw_offers(rng, world.popularity, n_requests, k)

    offsets = np.sort(rng.uniform(0.0, days * 86400.0, size=n_requests))
    base = np.datetime64(start.tz_convert("UTC").tz_localize(None).as_unit("ms").asm8)
    when = base + np.round(offsets * 1000.0).astype("int64").astype("timedelta64[ms]")

    rows_customer = np.repeat(customer, k)
    rows_offer = shown.ravel()
    affinity = np.einsum("ij,ij->i", world.customer_latent[rows_customer], world.offer_latent[rows_offer])
    p = _sigmoid(world.affinity_scale * affinity + world.bias)
    accepted = (rng.random(size=p.shape) < p).astype(np.int8)

    popularity_score = np.round(world.popularity / world.popularity.max(), 6)
    price = world.offer_matrix["price"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "request": np.repeat(np.arange(n_requests, dtype=np.int64), k),
            "customer_id": pd.Categorical.from_codes(rows_customer, categories=world.customer_ids.astype(str)),
            "offer": pd.Categorical.from_codes(rows_offer, categories=world.offer_names.astype(str)),
            "accepted": accepted,
            "datetime": pd.DatetimeIndex(np.repeat(when, k)).tz_localize("UTC"),
            "price": price[rows_offer],
            "score": popularity_score[rows_offer],
        }
    )


def simulate_exposures(
    n_customers: int = 2000,
    n_offers: int = 50,
    n_requests: int = 20000,
    offers_per_request: int = 4,
    latent_dim: int = 8,
    start: dt.datetime | str = START,
    days: float = 30,
    seed: int = 42,
    **world_options,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(exposures, offer_matrix, customer_features) without building documents: the fast path.

    `world_options` (n_segments, affinity_scale, base_accept_rate) go to :func:`simulate_world`;
    call it with the same arguments for the ground truth.
    """
    world = simulate_world(n_customers, n_offers, latent_dim, seed=seed, **world_options)
    exposures = _exposures(world, n_requests, offers_per_request, start, days, seed)
    return exposures, world.offer_matrix, world.customer_features


def simulate_traffic(
    n_customers: int = 2000,
    n_offers: int = 50,
    n_requests: int = 20000,
    offers_per_request: int = 4,
    latent_dim: int = 8,
    start: dt.datetime | str = START,
    days: float = 30,
    seed: int = 42,
    predictor: str = PREDICTOR,
    **world_options,
) -> SimulatedTraffic:
    world = simulate_world(n_customers, n_offers, latent_dim, seed=seed, **world_options)
    exposures = _exposures(world, n_requests, offers_per_request, start, days, seed)
    logs = build_runtime_logs(
        exposures, predictor=predictor, channel=CHANNEL, offer_matrix=world.offer_matrix,
        customer_features=world.customer_features, response_delay=dt.timedelta(seconds=60),
    )
    return SimulatedTraffic(logs=logs, exposures=exposures, world=world)
