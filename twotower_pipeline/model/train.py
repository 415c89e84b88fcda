"""Training: pre-checks, one-time encoding, the hot loop, per-epoch validation, early stopping.

`train_two_tower(frame, params, log)` = `prepare` (checks the frame before any training time is
spent, decides the "auto" parameters from the data (`TrainingParams.resolved`), fits the encoders,
encodes every row once into tensors, holds out 20% of each customer's exposures by a seeded hash:
`evaluation.holdout_mask`) then `fit` (the customers' histories from the training accepts; Adam,
or AdamW with weight decay, its rate on a cosine decay over the epochs by default; each step
gathers a batch by index slicing of a seeded permutation, embeds a catalogue of up to
`n_catalogue_negatives` offers once and gathers the step's offer vectors from it, and computes
the softmax in one fused buffer; after each epoch, validation metrics on export-style vectors;
the best epoch's weights are kept, or the last with `stopping_rounds` 0).

Validation uses the vectors that will be exported and served: one vector per customer and per
offer, with the context features at their documented defaults (price 0.0, rank 1.0, score 0.0),
and the offline-scoring metrics (`evaluation.evaluate`: the whole catalogue ranked, offers accepted
in training left out). A frame without declines (implicit feedback) trains too: the pointwise term
then pairs each accept's customer with a uniformly drawn offer as a decline (`decline_sampling`).
The same seed gives the same weights on the same machine and thread count.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from twotower_pipeline.ingest.context import is_context_column
from twotower_pipeline.ingest.training_frame import CONTEXT_DEFAULTS
from twotower_pipeline.model import evaluation, losses
from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.features import (FeatureEncoder, TowerInputs, request_context_columns,
                                              side_feature_columns)
from twotower_pipeline.model.towers import TwoTowerModel

Log = Callable[[str], None]
MIN_LR_SHARE = 0.05  # the cosine schedule ends at this share of the learning rate


@dataclass
class PreparedData:
    """Everything the loop reads, encoded once."""

    params: TrainingParams
    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder
    user_inputs: TowerInputs        # [n rows] user tower inputs of every exposure
    item_inputs: TowerInputs        # [n rows] item tower inputs of every exposure
    labels: torch.Tensor            # [n] float32, 1 accepted, 0 declined
    user_codes: np.ndarray          # [n] row -> customer index
    item_codes: np.ndarray          # [n] row -> offer index
    customers: np.ndarray           # [U] customer keys
    offers: np.ndarray              # [N] offer keys (the catalogue)
    customer_inputs: TowerInputs    # [U] one export-style row per customer
    catalogue_inputs: TowerInputs   # [N] one export-style row per offer
    train_rows: np.ndarray          # row indices of the training split (sorted)
    validation_rows: np.ndarray     # row indices of the validation split (sorted)
    ranking_users: np.ndarray       # customers whose validation accepts feed recall/NDCG
    held_out: evaluation.HeldOut    # the split as codes into customers / offers

    @property
    def accepted_train_rows(self) -> np.ndarray:
        return self.train_rows[self.labels.numpy()[self.train_rows] == 1]


@dataclass
class TrainingResult:
    model: TwoTowerModel
    params: TrainingParams
    history: list[dict]             # per epoch: epoch, loss, validation_metric, seconds, metrics...
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    examples_per_second: float      # training examples / training seconds (validation excluded)
    metrics: dict                   # validation metrics of the best epoch (user_auc, item_auc, ...)
    validation_metric: str          # name of the early-stopping metric, e.g. "ndcg@10"
    n_rows: int
    n_train: int
    n_validation: int
    features: dict = field(default_factory=dict)  # {"user": {kind: [columns]}, "item": {...}}

    def summary(self) -> dict:
        """JSON-able figures for run metadata."""
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
                "examples_per_second": round(self.examples_per_second, 1), "validation_metric": self.validation_metric,
                "n_rows": self.n_rows, "n_train": self.n_train, "n_validation": self.n_validation,
                "features": self.features, **{k: v for k, v in self.metrics.items()}}


# --- pre-checks ------------------------------------------------------------------------------------
def feature_columns(frame: pd.DataFrame, params: TrainingParams) -> tuple[list[str], list[str]]:
    """(user tower columns, item tower columns): the named features, plus the side features when on,
    plus the request's context columns (`context_<key>`) in the user tower when `request_context`."""
    user, item = list(params.user_features), list(params.item_features)
    if params.side_features:
        side_user, side_item = side_feature_columns(
            frame, user_id_column=params.user_id_column, item_id_column=params.item_id_column,
            target_column=params.target_column, exclude=[*user, *item])
        user += side_user
        item += side_item
    if params.request_context:
        user += request_context_columns(frame, exclude=[*user, *item])
    return user, item


def check_frame(frame: pd.DataFrame, params: TrainingParams) -> tuple[TrainingParams, list[str], list[str]]:
    """Raise ValueError naming what is wrong and what to do; return the parameters with their "auto"
    choices decided by this frame (`TrainingParams.resolved`) and the towers' columns."""
    if frame is None or len(frame) == 0:
        raise ValueError("the training frame is empty: choose a predictor and date window that hold exposures")
    needed = {params.user_id_column: "user_id_column", params.item_id_column: "item_id_column",
              params.target_column: "target_column"}
    needed.update({c: "user_features" for c in params.user_features if c not in needed})
    needed.update({c: "item_features" for c in params.item_features if c not in needed})
    needed.update({c: "categorical_columns" for c in params.categorical_columns if c not in needed})
    missing = [f"{c!r} ({needed[c]})" for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"the training frame lacks column(s) {', '.join(missing)}; it has {sorted(frame.columns)}. "
                         "Remove them from the parameter or add them to the frame.")
    target = pd.to_numeric(frame[params.target_column], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        raise ValueError(f"target column {params.target_column!r} must be 0 or 1 on every row; {int(bad.sum())} rows "
                         f"are not (e.g. {frame.loc[bad, params.target_column].iloc[0]!r})")
    params = params.resolved(has_declines=bool((target == 0).any()), n_offers=frame[params.item_id_column].nunique())
    user_columns, item_columns = feature_columns(frame, params)
    for column in dict.fromkeys([params.user_id_column, params.item_id_column, *user_columns, *item_columns]):
        n_missing = int(frame[column].isna().sum())
        if n_missing and not is_context_column(column):  # a context key a request did not send: neutral
            raise ValueError(f"feature column {column!r} has {n_missing} missing values (NaN/None) of {len(frame)}: "
                             "fill them (numbers: the median; categories: 'unknown'; context: "
                             f"{CONTEXT_DEFAULTS}) or leave the column out of the features")
        if pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            n_infinite = int(np.isinf(frame[column].to_numpy(dtype=np.float64)).sum())
            if n_infinite:
                raise ValueError(f"feature column {column!r} has {n_infinite} infinite values: replace them "
                                 "or leave the column out of the features")
    n_accepted = int(target.sum())
    if n_accepted == 0:
        raise ValueError(f"no accepted rows ({params.target_column} = 1) among {len(frame)} exposures: the towers "
                         "learn from accepted offers; widen the date window or check that responses are logged")
    for column, what in ((params.user_id_column, "customer"), (params.item_id_column, "offer")):
        if frame[column].nunique() < 2:
            raise ValueError(f"only one {what} ({column} = {frame[column].iloc[0]!r}) in the frame: a two-tower model "
                             f"ranks several {what}s against each other; train on a slice with more {what}s")
    n_validation = int(round(len(frame) * params.validation_split))
    stream = "exposures" if params.loss == "pointwise" else "accepted"
    available = (len(frame) if params.loss == "pointwise" else n_accepted) * (len(frame) - n_validation) / len(frame)
    if available < params.batch_size:
        hint = 2 ** max(1, int(math.log2(max(2, available // 2))))
        raise ValueError(f"far too few rows for batch_size={params.batch_size}: about {int(available)} {stream} "
                         f"training rows after the {params.validation_split:.0%} validation split, fewer than one "
                         f"batch; lower batch_size (e.g. {hint}) or train on a longer window")
    return params, user_columns, item_columns


# --- preparation -----------------------------------------------------------------------------------
def prepare(frame: pd.DataFrame, params: TrainingParams | None = None, held: np.ndarray | None = None) -> PreparedData:
    """`held`: a boolean [len(frame)] held-out mask of the caller's own (a benchmark's fixed split)
    instead of `split_of(frame, params)`."""
    params = params or TrainingParams()
    params, user_columns, item_columns = check_frame(frame, params)
    frame = frame.reset_index(drop=True)
    labels = pd.to_numeric(frame[params.target_column]).to_numpy(dtype=np.float32)
    n = len(frame)
    rng = np.random.default_rng(params.seed)
    held = split_of(frame, params) if held is None else np.asarray(held, dtype=bool)
    if held.shape != (n,):
        raise ValueError(f"the held-out mask has shape {held.shape}; the frame has {n} rows")
    validation_rows, train_rows = np.flatnonzero(held), np.flatnonzero(~held)
    if labels[validation_rows].sum() == 0:
        raise ValueError(f"the held-out exposures ({params.holdout} split) hold no accepted rows, so no metric "
                         "can be computed: train on more exposures or hold out more "
                         f"({'holdout_days' if params.holdout == 'time' else 'validation_split'})")
    if len(train_rows) == 0 or labels[train_rows].sum() == 0:
        raise ValueError(f"the {params.holdout} split leaves no accepted exposure to train on: hold out less")

    fitted = frame.iloc[train_rows]
    common = dict(categorical_columns=params.categorical_columns, min_frequency=params.min_frequency,
                  max_vocabulary=params.max_vocabulary, max_list_length=params.max_list_length,
                  pinned_context=params.context_dropout >= 1.0)
    user_encoder = FeatureEncoder.fit(fitted, user_columns, id_column=params.user_id_column, **common)
    item_encoder = FeatureEncoder.fit(fitted, item_columns, id_column=params.item_id_column, **common)

    user_codes, customers = pd.factorize(frame[params.user_id_column].astype(str), sort=True)
    item_codes, offers = pd.factorize(frame[params.item_id_column].astype(str), sort=True)
    first_user = pd.Series(np.arange(n)).groupby(user_codes).first().to_numpy()
    first_item = pd.Series(np.arange(n)).groupby(item_codes).first().to_numpy()
    # exported vectors have no request: no price/rank/score, no request context
    export_user = [c for c in user_columns if c not in CONTEXT_DEFAULTS and not is_context_column(c)]
    export_item = [c for c in item_columns if c not in CONTEXT_DEFAULTS]

    held_out = evaluation.HeldOut.from_codes(user_codes, item_codes, labels, held, len(customers), len(offers))
    validation_users = held_out.evaluated_users
    if len(validation_users) > params.max_validation_users:
        validation_users = np.sort(rng.choice(validation_users, params.max_validation_users, replace=False))
    return PreparedData(
        params=params, user_encoder=user_encoder, item_encoder=item_encoder,
        user_inputs=user_encoder.encode(frame), item_inputs=item_encoder.encode(frame),
        labels=torch.from_numpy(labels), user_codes=user_codes.astype(np.int64), item_codes=item_codes.astype(np.int64),
        customers=np.asarray(customers), offers=np.asarray(offers),
        customer_inputs=user_encoder.encode(frame.loc[first_user, export_user].reset_index(drop=True)),
        catalogue_inputs=item_encoder.encode(frame.loc[first_item, export_item].reset_index(drop=True)),
        train_rows=train_rows, validation_rows=validation_rows, ranking_users=validation_users, held_out=held_out,
    )


def split_of(frame: pd.DataFrame, params: TrainingParams) -> np.ndarray:
    """The held-out exposures of a frame under `params` (see `evaluation.holdout_mask`)."""
    return evaluation.holdout_mask(frame, method=params.holdout, share=params.validation_split,
                                   days=params.holdout_days, seed=params.seed, user_column=params.user_id_column,
                                   item_column=params.item_id_column)


# --- validation ------------------------------------------------------------------------------------
def evaluate(model: TwoTowerModel, data: PreparedData) -> dict:
    """Validation metrics of export-style vectors (see module docstring): the offline-scoring
    metrics at K = metric_k for the sampled customers, AUCs on every held-out exposure."""
    users = model.embed_users(data.customer_inputs)                            # [U, d]
    items = model.embed_items(data.catalogue_inputs)                           # [N, d]
    return evaluation.evaluate(evaluation.VectorScorer(users, items), data.held_out, ks=(data.params.metric_k,),
                               users=data.ranking_users)


def metric_key(params: TrainingParams) -> str:
    return params.validation_metric.replace("@k", f"@{params.metric_k}")


# --- the loop --------------------------------------------------------------------------------------
@contextmanager
def _torch_settings(params: TrainingParams):
    """Seeded, deterministic, threads set; every global restored on exit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(params.num_threads or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


class _Augment:
    """Training-time input noise: context features to their export defaults (context_dropout), the
    request's whole context to its neutral value (request_context_dropout: what an exported vector
    has), ids to the out-of-vocabulary index (id_dropout); per row, from the seeded generator. No
    random number is drawn for noise a tower has no input for."""

    def __init__(self, encoder: FeatureEncoder, params: TrainingParams, generator: torch.Generator):
        self.slots, self.defaults = encoder.context_defaults()
        self.slots = torch.tensor(self.slots, dtype=torch.int64)
        self.p_context = params.context_dropout if len(self.slots) and not encoder.pinned_context else 0.0
        request_categorical, request_numeric = encoder.request_context_slots()
        self.request_categorical = torch.tensor(request_categorical, dtype=torch.int64)
        self.request_numeric = torch.tensor(request_numeric, dtype=torch.int64)
        self.p_request = (params.request_context_dropout if request_categorical or request_numeric else 0.0)
        self.p_id = params.id_dropout if encoder.id_column else 0.0
        self.generator = generator

    def __call__(self, x: TowerInputs) -> TowerInputs:
        if self.p_context:
            drop = torch.rand(x.n_rows, 1, generator=self.generator) < self.p_context      # [B, 1]
            x.numeric[:, self.slots] = torch.where(drop, self.defaults, x.numeric[:, self.slots])
        if self.p_request:
            drop = torch.rand(x.n_rows, 1, generator=self.generator) < self.p_request      # [B, 1]
            if len(self.request_categorical):   # code 0: the neutral (absent) category
                x.categorical[:, self.request_categorical] = x.categorical[:, self.request_categorical].masked_fill(
                    drop, 0)
            if len(self.request_numeric):       # standardised 0: the training mean
                x.numeric[:, self.request_numeric] = x.numeric[:, self.request_numeric].masked_fill(drop, 0.0)
        if self.p_id:
            drop = torch.rand(x.n_rows, generator=self.generator) < self.p_id               # [B]
            x = x._replace(ids=x.ids.masked_fill(drop, 0))
        return x


def fit(data: PreparedData, log: Log | None = None, last_epoch: int | None = None) -> TrainingResult:
    """Train on `data`; `last_epoch`: stop after that epoch of the run that `params.epochs` plans
    (the learning-rate schedule still spans `epochs`), keeping it: how a benchmark retrains on every
    row for the epochs a selection run chose, on the same schedule."""
    params = data.params
    log = log or (lambda message: None)
    key = metric_key(params)
    B = params.batch_size
    softmax = params.loss in ("softmax", "mixed")
    bce_weight = 1.0 if params.loss == "pointwise" else params.pointwise_weight
    n_items = len(data.offers)
    whole_catalogue = params.loss == "mixed" and n_items <= params.n_catalogue_negatives
    # A catalogue this small is embedded once a step and every offer vector of the step gathered
    # from it, when an exposure's offer row equals the offer's catalogue row (context pinned to the
    # export defaults, no id dropout): fewer offer-tower rows than embedding each batch's offers
    # and its sampled declines apart.
    catalogue_pass = whole_catalogue or (n_items <= params.n_catalogue_negatives and data.item_encoder.pinned_context
                                         and not params.id_dropout)
    n_negatives = params.n_catalogue_negatives if params.loss == "mixed" and not whole_catalogue else 0
    accepted = data.accepted_train_rows
    primary_rows = torch.from_numpy(accepted if softmax else data.train_rows)
    bce_rows = torch.from_numpy(data.train_rows)
    item_keys = torch.from_numpy(data.item_codes)                               # [n] offer index per row
    probabilities = losses.sampling_probabilities(data.item_codes[accepted], n_items)
    # subtracted from each candidate's logit: log-Q (the in-batch and sampled candidates' sampling
    # bias) and the popularity prior; the exact catalogue softmax has no sampling bias, the prior only
    prior = losses.popularity_log_prior(probabilities, params.popularity_prior)                  # [N]
    log_q = losses.mixed_log_q(probabilities, B, n_negatives) if params.logq_correction else 0.0
    subtracted = torch.from_numpy((prior + log_q).astype(np.float32))                           # [N]
    catalogue_prior = torch.from_numpy(prior.astype(np.float32)) if params.popularity_prior else None
    has_declines = bool((data.labels.numpy()[data.train_rows] == 0).any())
    sample_declines = bce_weight > 0 and (params.decline_sampling == "always"
                                          or (params.decline_sampling == "auto" and not has_declines))

    with _torch_settings(params):
        model = TwoTowerModel(params, data.user_encoder, data.item_encoder)
        if model.uses_history:
            model.set_history(data.user_inputs.ids[accepted].numpy(), data.item_inputs.ids[accepted].numpy())
        generator = torch.Generator().manual_seed(params.seed)
        augment_user = _Augment(data.user_encoder, params, generator)
        augment_item = _Augment(data.item_encoder, params, generator)

        def users(rows: torch.Tensor) -> torch.Tensor:
            """User vectors of exposures `rows` [b]: each row's own offer left out of its history."""
            return model.user_vectors(augment_user(data.user_inputs.take(rows)), exclude=data.item_inputs.ids[rows],
                                      dropout=params.history_dropout, generator=generator,
                                      feature_dropout=params.feature_dropout)

        def items(rows: torch.Tensor, catalogue: torch.Tensor | None) -> torch.Tensor:
            """Item vectors of exposures `rows` [b] (from this step's whole-catalogue pass when there is one)."""
            if catalogue is not None:
                return catalogue[item_keys[rows]]
            return model.item_tower(augment_item(data.item_inputs.take(rows)))

        def catalogue_item(drawn: torch.Tensor, catalogue: torch.Tensor | None) -> torch.Tensor:
            return catalogue[drawn] if catalogue is not None else model.item_tower(data.catalogue_inputs.take(drawn))

        def pointwise_loss(rows: torch.Tensor, user: torch.Tensor, item: torch.Tensor,
                           catalogue: torch.Tensor | None) -> torch.Tensor:
            """BCE on the exposures `rows` (user, item [b, d]), plus one sampled decline per row: the
            row's customer with a uniformly drawn catalogue offer."""
            labels = data.labels[rows]
            if sample_declines:
                drawn = torch.randint(n_items, (len(rows),), generator=generator)            # [b]
                user = torch.cat([user, user])                                            # [2b, d]
                item = torch.cat([item, catalogue_item(drawn, catalogue)])
                labels = torch.cat([labels, torch.zeros(len(rows))])
            return losses.pointwise_bce_loss(user, item, labels, temperature=params.pointwise_temperature,
                                             bias=model.bias)

        if params.weight_decay:
            optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        steps_per_epoch = len(primary_rows) // B                                 # the last partial batch dropped
        schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, params.epochs * steps_per_epoch), eta_min=params.learning_rate * MIN_LR_SHARE)
            if params.learning_rate_schedule == "cosine" else None)
        log(f"training on {len(data.train_rows):,} exposures ({len(accepted):,} accepted), validating on "
            f"{len(data.validation_rows):,}; {len(data.customers):,} customers, {n_items:,} offers; loss "
            f"{params.loss}{' (whole catalogue)' if whole_catalogue else ''}"
            f"{f' + {bce_weight:g} x pointwise' if softmax and bce_weight else ''}"
            f"{' with sampled declines' if sample_declines else ''}"
            f"{'; customer history pooled' if model.uses_history else ''}; {params.learning_rate_schedule} "
            f"learning rate from {params.learning_rate:g}; "
            f"user tower {data.user_encoder.columns}, item tower {data.item_encoder.columns}")

        history, best_value, best_epoch, best_state = [], -math.inf, 0, None
        bce_order, bce_at = bce_rows[torch.randperm(len(bce_rows), generator=generator)], 0
        train_seconds = examples = 0
        stopped_early = False
        for epoch in range(1, min(params.epochs, last_epoch or params.epochs) + 1):
            model.train()
            started = time.perf_counter()
            order = primary_rows[torch.randperm(len(primary_rows), generator=generator)]
            steps = steps_per_epoch
            total = torch.zeros(())
            for step in range(steps):
                rows = order[step * B:(step + 1) * B]                           # [B]
                # the whole catalogue as exported (context at its defaults, no input noise)
                catalogue = model.item_tower(data.catalogue_inputs) if catalogue_pass else None  # [N, d]
                user = users(rows)                                               # [B, d]
                item = items(rows, catalogue)                                    # [B, d]
                if softmax:
                    ids = item_keys[rows]                                        # [B]
                    if whole_catalogue:
                        loss = losses.catalogue_softmax_loss(user, catalogue, ids, temperature=params.temperature,
                                                             log_prior=catalogue_prior)
                    elif n_negatives:
                        sampled = torch.randint(n_items, (n_negatives,), generator=generator)  # [M]
                        negatives = model.item_tower(data.catalogue_inputs.take(sampled))      # [M, d]
                        loss = losses.mixed_negatives_loss(
                            user, item, ids, negatives, sampled, temperature=params.temperature,
                            log_q=subtracted[ids], negative_log_q=subtracted[sampled],
                            remove_accidental_hits=params.remove_accidental_hits)
                    else:
                        loss = losses.fused_in_batch_softmax_loss(
                            user, item, ids, temperature=params.temperature, log_q=subtracted[ids],
                            remove_accidental_hits=params.remove_accidental_hits)
                    if bce_weight and not has_declines:  # implicit: the batch's accepts are the positives
                        loss = loss + bce_weight * pointwise_loss(rows, user, item, catalogue)
                    elif bce_weight:
                        if bce_at + B > len(bce_order):
                            bce_order, bce_at = bce_rows[torch.randperm(len(bce_rows), generator=generator)], 0
                        extra = bce_order[bce_at:bce_at + B]
                        bce_at += B
                        loss = loss + bce_weight * pointwise_loss(
                            extra, users(extra), items(extra, catalogue), catalogue)
                else:
                    loss = pointwise_loss(rows, user, item, catalogue)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                total += loss.detach()
            seconds = time.perf_counter() - started
            train_seconds += seconds
            examples += steps * B
            evaluated = time.perf_counter()
            scores = evaluate(model, data)
            value = scores.get(key, float("nan"))
            history.append({"epoch": epoch, "loss": float(total) / max(1, steps), "validation_metric": value,
                            "learning_rate": optimizer.param_groups[0]["lr"], "seconds": seconds,
                            "eval_seconds": time.perf_counter() - evaluated, **scores})
            improved = not math.isnan(value) and value > best_value
            # stopping_rounds 0 or a last_epoch: the last epoch run is kept
            if improved or best_state is None or not params.stopping_rounds or last_epoch:
                best_value = value if not math.isnan(value) else best_value
                best_epoch = epoch
                best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            log(f"epoch {epoch}/{params.epochs} loss {history[-1]['loss']:.4f} {key} {value:.4f} "
                f"user_auc {scores['user_auc']:.4f} item_auc {scores['item_auc']:.4f} "
                f"({seconds:.1f}s, {steps * B / max(seconds, 1e-9):,.0f} ex/s){' *' if improved else ''}")
            if (params.stopping_rounds and epoch >= params.min_epochs
                    and epoch - best_epoch >= params.stopping_rounds):
                stopped_early = epoch < params.epochs
                log(f"early stopping: no {key} gain in {params.stopping_rounds} epochs; best epoch {best_epoch}")
                break

        model.load_state_dict(best_state)
        model.eval()
    best = history[best_epoch - 1]
    return TrainingResult(
        model=model, params=params, history=history, best_epoch=best_epoch, epochs_run=len(history),
        stopped_early=stopped_early, examples_per_second=examples / max(train_seconds, 1e-9),
        metrics={k: v for k, v in best.items()
                 if k not in ("epoch", "loss", "learning_rate", "seconds", "eval_seconds")},
        validation_metric=key, n_rows=len(data.labels), n_train=len(data.train_rows),
        n_validation=len(data.validation_rows),
        features={"user": data.user_encoder.describe(), "item": data.item_encoder.describe()},
    )


def train_two_tower(frame: pd.DataFrame, params: TrainingParams | dict | None = None,
                    log: Log | None = None) -> TrainingResult:
    """Check, encode, train with early stopping; the model holds the best epoch's weights."""
    if not isinstance(params, TrainingParams):
        params = TrainingParams.from_dict(params)
    return fit(prepare(frame, params), log)
