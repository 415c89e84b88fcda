"""Every knob of a two-tower training run, declared once: names, defaults, ranges and descriptions.

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

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Loss = Literal["auto", "softmax", "mixed", "pointwise"]
Switch = Literal["auto", "on", "off"]
Holdout = Literal["customer", "time"]
DeclineSampling = Literal["auto", "off", "always"]
LearningRateSchedule = Literal["auto", "cosine", "constant"]
ValidationMetric = Literal["auto", "ndcg@k", "recall@k", "auc", "user_auc", "item_auc"]


def _in(default, low, high, text: str):
    """A bounded parameter: the bounds are checked and shown in its description, declared once."""
    return Field(default, ge=low, le=high, description=f"{text} ({low:g}..{high:g})")


def _columns(*default: str, text: str):
    """A list of column names; a plain default (pydantic copies it per instance) so that the
    launchpad shows it."""
    return Field(list(default), description=text)


class TrainingParams(BaseModel):
    """The parameters of a training run. The launchpad (`TwoTowerConfig`, `RetrainConfig`), the
    workbench's validation and the model read this one declaration; "(SPEC §4)" marks the
    documented ones, the rest are ours (see the module docstring for why each default)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    # --- documented (SPEC §4) ---
    embedding_dim: int = _in(32, 4, 256, "Length of both towers' output vectors (SPEC §4).")
    epochs: int = _in(25, 1, 500, "Most passes over the training examples, early stopping aside (SPEC §4).")
    stopping_rounds: int = _in(3, 0, 50, "Early-stopping patience in epochs; 0 = all epochs, the last kept (SPEC §4).")
    batch_size: int = _in(256, 2, 65536, "Examples per step (= in-batch candidates for the softmax) (SPEC §4).")
    hidden: int = _in(64, 1, 4096, "Width of each hidden layer (SPEC §4).")
    learning_rate: float = _in(0.001, 1e-6, 1.0, "Adam's learning rate (SPEC §4).")
    user_features: list[str] = _columns("customer_id", "price", "rank", "score",
                                        text="Columns of the customer tower (SPEC §4).")
    item_features: list[str] = _columns("offer", "price", "rank", "score", text="Columns of the offer tower (SPEC §4).")
    categorical_columns: list[str] = _columns(text="Columns encoded as categories; empty: the text columns (SPEC §4).")
    user_id_column: str = Field("customer_id", min_length=1, description="The customer key column (SPEC §4).")
    item_id_column: str = Field("offer", min_length=1, description="The offer key column (SPEC §4).")
    target_column: str = Field("accepted", min_length=1, description="The 0/1 label column (SPEC §4).")
    validation_split: float = _in(0.2, 0.05, 0.5, "Share of each customer's exposures held out (holdout "
                                  "customer) (SPEC §4).")
    seed: int = _in(42, 0, 2**32 - 1, "Same seed, same data, same machine: the same model (SPEC §4).")
    # --- ours: the held-out split (offline scoring rebuilds it from the same frame) ---
    holdout: Holdout = Field("customer", description="customer: a share per customer; time: the last "
                             "holdout_days days.")
    holdout_days: int = _in(7, 1, 3650, "Days held out for holdout=time.")
    # --- ours: features ---
    side_features: bool = Field(True, description="Also feed each tower the frame's columns its key determines.")
    feature_embedding_dim: int = _in(8, 1, 256, "Width of each categorical and multi-hot embedding.")
    min_frequency: int = _in(1, 1, 1_000_000, "A value seen fewer times maps to the out-of-vocabulary index 0.")
    max_vocabulary: int = _in(1_000_000, 1, 100_000_000, "Most frequent values kept per column; the rest map to "
                              "index 0.")
    max_list_length: int = _in(32, 1, 1024, "Multi-hot lists (e.g. genres) keep their first N entries.")
    context_dropout: float = _in(1.0, 0.0, 1.0, "Share of training rows whose price/rank/score are replaced by "
                                 "the export defaults.")
    request_context: bool = Field(True, description="The customer tower also reads the request's context (the "
                                  "frame's `context_<key>` columns from in_params).")
    request_context_dropout: float = _in(0.5, 0.0, 1.0, "Share of training rows whose request context is set to "
                                         "its neutral value, as exported vectors have it.")
    id_dropout: float = _in(0.0, 0.0, 1.0, "Share of training rows whose id is replaced by the out-of-vocabulary "
                            "index (cold-start practice).")
    # --- ours: model ---
    layers: int = _in(1, 0, 8, "Hidden layers of each tower's feature part (0 = linear).")
    user_history: Switch = Field("auto", description="The customer as the mean of its accepted offers' embeddings "
                                 "instead of an id embedding; auto: on, except for real declines over a small "
                                 "catalogue.")
    history_length: int = _in(256, 1, 100_000, "Most recent distinct accepted offers kept per customer.")
    history_dropout: float = _in(0.7, 0.0, 0.99, "Share of a history dropped per training row (its target "
                                 "always is).")
    feature_dropout: float = _in(0.5, 0.0, 0.99, "With a history: share of training rows without the customer's "
                                 "feature part.")
    # --- ours: objective ---
    loss: Loss = Field("auto", description="softmax (in-batch) | mixed (in-batch + catalogue) | pointwise (BCE on "
                       "the exposures); auto: pointwise for real declines over a small catalogue, else softmax.")
    small_catalogue: int = _in(20, 0, 100_000_000, "auto: at most this many offers with real declines asks "
                               "accept-or-decline (pointwise).")
    pointwise_weight: float = _in(0.5, 0.0, 100.0, "Weight of the BCE term on declines added to softmax/mixed "
                                  "(0 = off).")
    temperature: float = _in(0.1, 0.001, 10.0, "The softmax's logits are cosine / temperature.")
    pointwise_temperature: float = _in(0.2, 0.001, 10.0, "The BCE term's logit is cosine / pointwise_temperature "
                                       "+ bias.")
    logq_correction: bool = Field(True, description="Subtract each candidate's log sampling probability from "
                                  "its logit.")
    popularity_prior: float = _in(0.3, 0.0, 5.0, "Share of log(offer popularity) the softmax leaves in the served "
                                  "cosine (0 = none).")
    remove_accidental_hits: bool = Field(True, description="Mask in-batch candidates that are the row's own "
                                         "positive offer.")
    n_catalogue_negatives: int = _in(2048, 1, 100_000, "loss=mixed: uniform catalogue negatives per step; a "
                                     "catalogue of at most this many offers is ranked whole.")
    weight_decay: float = _in(0.0, 0.0, 10.0, "Decoupled weight decay (AdamW); 0 = Adam.")
    learning_rate_schedule: LearningRateSchedule = Field(
        "auto", description="cosine: falls to 5% of learning_rate along a half cosine over the epochs; constant; "
        "auto: constant for pointwise, else cosine.")
    decline_sampling: DeclineSampling = Field(
        "auto", description="A sampled decline pairs an accept's customer with a uniformly drawn offer: auto when "
        "the frame has no declines, always beside real declines, or off.")
    # --- ours: validation / runtime ---
    validation_metric: ValidationMetric = Field(
        "auto", description="Early-stopping metric (higher is better); auto: auc for real declines over a small "
        "catalogue, else ndcg@k.")
    min_epochs: int = _in(5, 1, 500, "Early stopping never stops a run before this many epochs.")
    metric_k: int = _in(10, 1, 1000, "K of recall@K and NDCG@K.")
    max_validation_users: int = _in(5000, 1, 10_000_000, "Customers sampled for the ranking metrics each epoch.")
    num_threads: int = _in(0, 0, 256, "Torch threads while training; 0 = 1 (measured fastest for these sizes).")

    def __init__(self, **values: Any):
        """Every refusal is one ValueError naming each parameter, its value and what is allowed."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(_describe_all(type(self), error.errors())) from None

    @model_validator(mode="after")
    def _consistent(self):
        for name in ("user_features", "item_features", "categorical_columns"):
            if not all(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a list of column names")
        for name in ("user_features", "item_features"):
            if not getattr(self, name) and not self.side_features:
                raise ValueError(f"{name}=[] with side_features=False leaves the tower without inputs")
        if self.user_id_column == self.item_id_column:
            raise ValueError(f"user_id_column and item_id_column are both {self.user_id_column!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TrainingParams":
        """Build from a plain dict (launchpad, sidecar `hyperparameters`); unknown keys are an error."""
        return cls(**dict(values or {}))

    def resolved(self, has_declines: bool, n_offers: int) -> "TrainingParams":
        """The parameters with every "auto" decided by the data: a frame with real declines whose
        catalogue has at most `small_catalogue` offers asks whether a customer accepts an offer
        (pointwise, validated on the accept/decline AUC of the held-out exposures, the customer its
        id embedding, a constant learning rate); any other frame asks which offers (the in-batch
        softmax, validated on NDCG@K, the customer its history, the cosine learning-rate schedule)."""
        accept_or_decline = has_declines and n_offers <= self.small_catalogue
        loss = self.loss if self.loss != "auto" else ("pointwise" if accept_or_decline else "softmax")
        return self.replace(
            loss=loss,
            learning_rate_schedule=(self.learning_rate_schedule if self.learning_rate_schedule != "auto"
                                    else ("constant" if loss == "pointwise" else "cosine")),
            user_history=(self.user_history if self.user_history != "auto"
                          else ("off" if accept_or_decline else "on")),
            validation_metric=(self.validation_metric if self.validation_metric != "auto"
                               else ("auc" if accept_or_decline else "ndcg@k")))

    def replace(self, **changes: Any) -> "TrainingParams":
        """A copy with `changes`, validated like any other."""
        return type(self)(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def params(self) -> "TrainingParams":
        """The training parameters alone, of a launchpad that declares more fields beside them."""
        return TrainingParams.from_dict(self.model_dump(include=set(TrainingParams.model_fields)))


def _describe_all(model: type[BaseModel], problems: list[dict]) -> str:
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    said = [f"unknown training parameter(s) {unknown}; known parameters: {sorted(model.model_fields)}"
            for _ in unknown[:1]]
    return "; ".join(said + [_describe(model, p) for p in problems if p["type"] != "extra_forbidden"])


def _describe(model: type[BaseModel], problem: dict) -> str:
    """One pydantic problem in the words of this project's earlier messages."""
    where = problem["loc"][0] if problem["loc"] else None
    value = problem.get("input")
    field = model.model_fields.get(where) if isinstance(where, str) else None
    kind = problem["type"]
    if kind == "missing":
        return f"{where} is required"
    if field is None or kind == "value_error":
        return problem["msg"].removeprefix("Value error, ")
    bounds = [getattr(m, attr) for m in field.metadata for attr in ("ge", "le") if hasattr(m, attr)]
    allowed = f"{bounds[0]:g}..{bounds[1]:g}" if len(bounds) == 2 else None
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{where}={value!r} is out of range; allowed {allowed}"
    if kind == "literal_error":
        return f"{where}={value!r} is not one of {list(get_args(field.annotation))}"
    if field.annotation is bool:
        return f"{where}={value!r} must be true or false"
    if field.annotation is int:
        return f"{where}={value!r} must be an integer" + (f" in {allowed}" if allowed else "")
    if field.annotation is float:
        return f"{where}={value!r} must be a number" + (f" in {allowed}" if allowed else "")
    if field.annotation == list[str]:
        return f"{where}={problem['input']!r} must be a list of column names" if len(problem["loc"]) == 1 else \
            f"{where}: entry {problem['loc'][1]} ({value!r}) must be a column name"
    return f"{where}={value!r}: {problem['msg']}"
