"""Every knob of a two-tower training run, in one validated dataclass.

The documented ecosystem.Ai parameters (SPEC §4, PyTorch path) keep their names and defaults:
`embedding_dim` 32 (4..256), `epochs` 25 (1..500), `stopping_rounds` 3 (0..50), `batch_size` 256,
`hidden` 64, `learning_rate` 0.001, `user_features`, `item_features`, `categorical_columns`,
`user_id_column`, `item_id_column`, `target_column`, seed 42 and the 80/20 split.

Everything else is ours (the documentation is silent on loss, negatives, temperature and depth),
chosen by measurement on two public data sets of different kinds: MovieLens 100K as implicit
feedback (the published protocol) and with explicit declines, and the UCI coupon data (real
declines, 10 offers); `python -m benchmarks.quality` gives the README's quality table and
`python -m benchmarks.compare_losses` the one-change-at-a-time comparison. In short:
- `user_history` "auto": the customer as the mean of its accepted offers' id embeddings (shared with
  the offer tower): NDCG@10 0.011 above a customer id embedding on the MovieLens implicit protocol
  (0.473 against 0.462, seed 42), about even with explicit declines; off where the question is
  accept-or-decline over a small catalogue (coupons: AUC 0.798 without it, 0.770 with it);
  `history_dropout` 0.7 regularises it (Mult-DAE style input dropout), and `feature_dropout` 0.5
  keeps the customer's features from memorising it (implicit protocol 0.473 against 0.461 without);
- `loss` "auto": the in-batch softmax with log-Q correction and accidental-hit masking plus
  `pointwise_weight` 0.5 x BCE on declines (implicit protocol 0.473 at seed 42, 0.466 +- 0.008 over
  three seeds, against 0.463 for the exact softmax over the whole catalogue, `loss` "mixed");
  "pointwise" for real declines over at most `small_catalogue` offers, where the trees' AUC is the bar;
- `popularity_prior` 0.3: the softmax leaves 0.3 x log(popularity) in the learned cosine (implicit
  protocol 0.473 against 0.468 without, the time split 0.344 against 0.325, explicit 0.322 against
  0.320; top-10 lists less diverse: coverage 0.23 against 0.31);
- `context_dropout` 1.0: exported vectors are computed with the documented context defaults, so
  towers trained on the exposure's real price/rank/score would serve vectors they never learned;
- `request_context` on, `request_context_dropout` 0.5: the customer tower reads the request's
  `in_params` (`context_<key>` columns) and, for half the training rows, their neutral value, which
  is what exported vectors have (coupons, three seeds: AUC 0.834 with each held-out row's context,
  0.801 for the exported vectors, against 0.798 without any context; 0.3 and 0.7 measured within
  0.002 of both; without the dropout 0.822 and 0.770 at seed 42);
- `temperature` 0.1 for the softmax, `pointwise_temperature` 0.2 for the BCE term, and
  `learning_rate_schedule` "auto": for the softmax losses the learning rate falls to 5% of
  `learning_rate` along a half cosine over the run's epochs, for "pointwise" it stays constant.
  Together on the MovieLens implicit protocol: NDCG@10 0.478, 0.480, 0.473 at seeds 42, 7, 2026
  against 0.473, 0.467, 0.458 with 0.2 and a constant rate; apart, on the held-out ratings'
  per-epoch curves (seeds 42 and 7, mean of epochs 26-30), 0.1 adds about 0.004 and the cosine
  decay about 0.006 (0.07 ranked no better). On coupons (three seeds) the cosine decay is even
  with a constant rate (AUC 0.834 both), but a short pointwise run on the simulator (6 epochs, 20
  offers) lost its publish gate with it (NDCG@10 0.571 against popularity's 0.568 + 0.01), which
  the constant rate passes; 0.1 in the BCE term costs coupon AUC 0.014 at seed 42 (0.816 against
  0.830): hence its own temperature. With explicit declines (`benchmarks.compare_losses`) 0.2 ranks
  0.006 better than 0.1, inside that table's noise for the history, but a customer id embedding
  (`user_history` "off") wants 0.2;
- `layers` 1 (the coupon AUC needs the hidden layer), `min_epochs` 5.
Conventional, not tuned: `feature_embedding_dim` 8, `metric_k` 10, `num_threads` 1 (2 threads were
slower on 2 cores), `holdout` "customer" (the offline-scoring split), `decline_sampling` "auto"
(sampled declines only for a frame without any), `weight_decay` 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LOSSES = ("auto", "softmax", "mixed", "pointwise")
SWITCHES = ("auto", "on", "off")
HOLDOUTS = ("customer", "time")
DECLINE_SAMPLING = ("auto", "off", "always")
LEARNING_RATE_SCHEDULES = ("auto", "cosine", "constant")
VALIDATION_METRICS = ("auto", "ndcg@k", "recall@k", "auc", "user_auc", "item_auc")

# name -> (low, high) inclusive; floats marked by float bounds.
_RANGES: dict[str, tuple[float, float]] = {
    "embedding_dim": (4, 256),
    "epochs": (1, 500),
    "stopping_rounds": (0, 50),
    "batch_size": (2, 65536),
    "hidden": (1, 4096),
    "layers": (0, 8),
    "learning_rate": (1e-6, 1.0),
    "temperature": (0.001, 10.0),
    "pointwise_temperature": (0.001, 10.0),
    "n_catalogue_negatives": (1, 100_000),
    "pointwise_weight": (0.0, 100.0),
    "context_dropout": (0.0, 1.0),
    "request_context_dropout": (0.0, 1.0),
    "id_dropout": (0.0, 1.0),
    "history_dropout": (0.0, 0.99),
    "feature_dropout": (0.0, 0.99),
    "history_length": (1, 100_000),
    "weight_decay": (0.0, 10.0),
    "popularity_prior": (0.0, 5.0),
    "min_epochs": (1, 500),
    "small_catalogue": (0, 100_000_000),
    "feature_embedding_dim": (1, 256),
    "min_frequency": (1, 1_000_000),
    "max_vocabulary": (1, 100_000_000),
    "max_list_length": (1, 1024),
    "validation_split": (0.05, 0.5),
    "holdout_days": (1, 3650),
    "metric_k": (1, 1000),
    "max_validation_users": (1, 10_000_000),
    "seed": (0, 2**32 - 1),
    "num_threads": (0, 256),
}
_FLOATS = {"learning_rate", "temperature", "pointwise_temperature", "pointwise_weight", "context_dropout",
           "request_context_dropout", "id_dropout", "validation_split", "history_dropout", "feature_dropout",
           "weight_decay", "popularity_prior"}


@dataclass
class TrainingParams:
    # --- documented (SPEC §4) ---
    embedding_dim: int = 32            # length of both towers' output vectors
    epochs: int = 25                   # passes over the training examples (upper bound with early stopping)
    stopping_rounds: int = 3           # early-stopping patience in epochs; 0 = all epochs, the last one kept
    batch_size: int = 256              # examples per step (= in-batch candidates for the softmax)
    hidden: int = 64                   # width of each MLP layer
    learning_rate: float = 0.001       # Adam
    user_features: list[str] = field(default_factory=lambda: ["customer_id", "price", "rank", "score"])
    item_features: list[str] = field(default_factory=lambda: ["offer", "price", "rank", "score"])
    categorical_columns: list[str] = field(default_factory=list)  # empty: object/str columns are categorical
    user_id_column: str = "customer_id"
    item_id_column: str = "offer"
    target_column: str = "accepted"
    validation_split: float = 0.2      # share of each customer's exposures held out (holdout "customer")
    seed: int = 42
    # --- ours: the held-out split (offline scoring rebuilds it from the same frame) ---
    holdout: str = "customer"          # "customer": per-customer share; "time": the last holdout_days days
    holdout_days: int = 7
    # --- ours: features ---
    side_features: bool = True         # also feed each tower the frame's columns its key determines
    feature_embedding_dim: int = 8     # width of each categorical and multi-hot embedding
    min_frequency: int = 1             # a value seen fewer times maps to the out-of-vocabulary index 0
    max_vocabulary: int = 1_000_000    # most frequent values kept per column; the rest map to index 0
    max_list_length: int = 32          # multi-hot lists (e.g. genres) keep their first N entries
    context_dropout: float = 1.0       # per training row, replace price/rank/score by the export defaults
    # the customer tower also reads the request's context (the frame's `context_<key>` columns)
    request_context: bool = True
    # per training row, the whole request context set to its neutral value (absent: the
    # out-of-vocabulary code, the training mean), as exported vectors have it
    request_context_dropout: float = 0.5
    id_dropout: float = 0.0            # per training row, replace the id by the OOV index (cold-start practice)
    # --- ours: model ---
    layers: int = 1                    # hidden MLP layers of each tower's feature part (0 = linear)
    # customer id part = mean embedding of its accepted offers (training split) instead of an id
    # embedding; "auto": on, except for real declines over a small catalogue (see `resolved`)
    user_history: str = "auto"
    history_length: int = 256          # most recent distinct accepted offers kept per customer
    history_dropout: float = 0.7       # per training row, share of history entries dropped (its target always is)
    feature_dropout: float = 0.5       # with a history: share of training rows without the customer's feature part
    # --- ours: objective ---
    # "softmax" in-batch | "mixed" in-batch + catalogue | "pointwise" BCE on the exposures; "auto":
    # "pointwise" for real declines over a small catalogue (see `resolved`), else "softmax"
    loss: str = "auto"
    small_catalogue: int = 20          # "auto": at most this many offers with real declines -> pointwise
    pointwise_weight: float = 0.5      # weight of BCE on explicit declines added to softmax/mixed (0 = off)
    temperature: float = 0.1           # the softmax's logits = cosine / temperature
    pointwise_temperature: float = 0.2  # the pointwise (BCE) term's logit = cosine / pointwise_temperature + bias
    logq_correction: bool = True       # subtract log sampling probability of each candidate
    # the softmax also subtracts popularity_prior x log(popularity) from each candidate's logit, so
    # the cosine it learns keeps that much of the offer's popularity (a prior in the served scores)
    popularity_prior: float = 0.3
    remove_accidental_hits: bool = True  # mask in-batch candidates that are the row's own positive offer
    n_catalogue_negatives: int = 2048  # loss="mixed": uniform catalogue negatives per step; a catalogue
    #                                    of at most this many offers is ranked whole (exact softmax)
    weight_decay: float = 0.0          # decoupled weight decay (AdamW); 0 = Adam
    # "cosine": the learning rate falls from learning_rate to 5% of it along a half cosine over the
    # run's `epochs` (step by step); "constant": learning_rate throughout; "auto": cosine for the
    # softmax losses, constant for "pointwise" (see `resolved`)
    learning_rate_schedule: str = "auto"
    # a sampled decline pairs an accept's customer with a uniformly drawn catalogue offer (label 0):
    # "auto" when the frame has no declines (implicit feedback), "always" beside real declines, "off"
    decline_sampling: str = "auto"
    # --- ours: validation / runtime ---
    # early-stopping metric (higher is better); "auto": "ndcg@k", or "auc" (accepts above declines
    # over all held-out exposures) for real declines over a small catalogue (see `resolved`)
    validation_metric: str = "auto"
    min_epochs: int = 5                # early stopping never stops a run before this many epochs
    metric_k: int = 10                 # K of recall@K / NDCG@K
    max_validation_users: int = 5000   # customers sampled for the ranking metrics each epoch
    num_threads: int = 0               # torch threads while training; 0 = 1 (measured fastest for these sizes)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainingParams":
        """Build from a plain dict (launchpad, sidecar `hyperparameters`); unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; known parameters: {sorted(known)}")
        return cls(**values)

    def resolved(self, has_declines: bool, n_offers: int) -> "TrainingParams":
        """The parameters with every "auto" decided by the data: a frame with real declines whose
        catalogue has at most `small_catalogue` offers asks whether a customer accepts an offer
        (pointwise, validated on the accept/decline AUC of the held-out exposures, the customer its
        id embedding, a constant learning rate); any other frame asks which offers (the in-batch
        softmax, validated on NDCG@K, the customer its history, the cosine learning-rate schedule)."""
        accept_or_decline = has_declines and n_offers <= self.small_catalogue
        loss = self.loss if self.loss != "auto" else ("pointwise" if accept_or_decline else "softmax")
        return dataclasses.replace(
            self,
            loss=loss,
            learning_rate_schedule=(self.learning_rate_schedule if self.learning_rate_schedule != "auto"
                                    else ("constant" if loss == "pointwise" else "cosine")),
            user_history=(self.user_history if self.user_history != "auto"
                          else ("off" if accept_or_decline else "on")),
            validation_metric=(self.validation_metric if self.validation_metric != "auto"
                               else ("auc" if accept_or_decline else "ndcg@k")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _RANGES:
                low, high = _RANGES[f.name]
                if f.name in _FLOATS:
                    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
                    kind = "a number"
                else:
                    ok_type = isinstance(value, int) and not isinstance(value, bool)
                    kind = "an integer"
                if not ok_type:
                    raise ValueError(f"{f.name}={value!r} must be {kind} in {low:g}..{high:g}")
                if not low <= value <= high:
                    raise ValueError(f"{f.name}={value!r} is out of range; allowed {low:g}..{high:g}")
        for name in ("user_features", "item_features", "categorical_columns"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name}={value!r} must be a list of column names")
            setattr(self, name, list(value))
        for name in ("user_features", "item_features"):
            if not getattr(self, name) and not self.side_features:
                raise ValueError(f"{name}=[] with side_features=False leaves the tower without inputs")
        for name in ("user_id_column", "item_id_column", "target_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a column name")
        for name in ("side_features", "request_context", "logq_correction", "remove_accidental_hits"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        for name, choices in (("loss", LOSSES), ("holdout", HOLDOUTS), ("decline_sampling", DECLINE_SAMPLING),
                              ("user_history", SWITCHES), ("learning_rate_schedule", LEARNING_RATE_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(choices)}")
        if self.validation_metric not in VALIDATION_METRICS:
            raise ValueError(f"validation_metric={self.validation_metric!r} is not one of {list(VALIDATION_METRICS)}")
        if self.user_id_column == self.item_id_column:
            raise ValueError(f"user_id_column and item_id_column are both {self.user_id_column!r}")
