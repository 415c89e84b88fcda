"""The two towers: customer features -> unit vector, offer features -> unit vector; score = cosine.

Each tower sums, in the `embedding_dim`-wide space itself, an id part and a feature part, then
L2-normalises:
- offer tower: the offer's id embedding + MLP(offer features);
- customer tower: the mean of the id embeddings of the offers the customer accepted in training
  (its history, YouTube-DNN style, on the offer tower's own id table, so customers and offers share
  one space from the first step), scaled to unit length, + MLP(customer features). With
  `user_history` "off", a customer id embedding of its own instead. While training, the customer's
  feature part is dropped for `feature_dropout` of the rows, so the history carries the ranking and
  the features correct it (they still place a customer the towers have not seen).
The MLP reads [categorical embeddings | standardised numerics | multi-hot mean embeddings] ->
`layers` x (Linear(hidden) + ReLU) -> Linear(embedding_dim). Every out-of-vocabulary row (index 0)
of every embedding starts at zero, and an unseen customer has no history, so an unseen customer or
offer is placed by its other features alone.

The customer tower may also read the request's context (`context_<key>` columns from the request's
`in_params`); without a request (exported vectors) it takes the neutral value.
`TwoTowerModel.customer_vector` embeds one customer with a request's `in_params` (what a serving
process calls).

`TwoTowerModel` holds both towers, the customers' histories (as buffers) and the fitted encoders;
it stores as (JSON config, weights saved with torch.save(state_dict)) and loads with
torch.load(weights_only=True): never a pickle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twotower_pipeline.ingest.context import context_row
from twotower_pipeline.ingest.training_frame import customer_row
from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.features import FeatureEncoder, TowerInputs

ARTEFACT_FORMAT = 2
_INFERENCE_CHUNK = 65536
_ID_INIT_STD = 0.1


@dataclass
class TowerConfig:
    n_ids: int                          # id vocabulary size without the OOV index; 0 = no id embedding
    categorical_sizes: list[int]        # vocabulary size per categorical column (without OOV)
    n_numeric: int
    multi_hot_sizes: list[int]          # element vocabulary size per list column (without OOV/padding)
    feature_dim: int = 8
    hidden: int = 64
    layers: int = 1
    embedding_dim: int = 32
    history: bool = False               # the id part is the pooled history (given to forward), no own table

    @classmethod
    def of(cls, encoder: FeatureEncoder, params: TrainingParams, history: bool = False) -> "TowerConfig":
        return cls(
            n_ids=len(encoder.id_vocabulary) if encoder.id_column and not history else 0,
            categorical_sizes=[len(v) for v in encoder.categorical.values()],
            n_numeric=len(encoder.numeric),
            multi_hot_sizes=[len(v) for v in encoder.multi_hot.values()],
            feature_dim=params.feature_embedding_dim, hidden=params.hidden, layers=params.layers,
            embedding_dim=params.embedding_dim, history=history,
        )

    @property
    def feature_input_dim(self) -> int:
        return (self.feature_dim * len(self.categorical_sizes) + self.n_numeric
                + self.feature_dim * len(self.multi_hot_sizes))


class Tower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        if cfg.feature_input_dim == 0 and not cfg.n_ids and not cfg.history:
            raise ValueError("a tower needs at least one input feature")
        self.cfg = cfg
        self.id_embedding = nn.Embedding(cfg.n_ids + 1, cfg.embedding_dim) if cfg.n_ids else None
        # all categorical columns share one table; column j's codes are shifted by offsets[j]
        sizes = [s + 1 for s in cfg.categorical_sizes]
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(sizes)[:-1]], dtype=torch.int64)
                             if sizes else torch.zeros(0, dtype=torch.int64))
        self.categorical = nn.Embedding(sum(sizes), cfg.feature_dim) if sizes else None
        self.bags = nn.ModuleList(nn.EmbeddingBag(s + 1, cfg.feature_dim, mode="mean", padding_idx=0)
                                  for s in cfg.multi_hot_sizes)
        self.mlp = None
        if cfg.feature_input_dim:
            blocks, width = [], cfg.feature_input_dim
            for _ in range(cfg.layers):
                blocks += [nn.Linear(width, cfg.hidden), nn.ReLU()]
                width = cfg.hidden
            blocks.append(nn.Linear(width, cfg.embedding_dim))
            self.mlp = nn.Sequential(*blocks)
        with torch.no_grad():  # out-of-vocabulary rows start neutral
            if self.id_embedding is not None:
                nn.init.normal_(self.id_embedding.weight, std=_ID_INIT_STD)
                self.id_embedding.weight[0].zero_()
            if self.categorical is not None:
                self.categorical.weight[self.offsets] = 0.0
            if self.mlp is not None and (cfg.n_ids or cfg.history):  # features join the id part at zero
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    def forward(self, x: TowerInputs, history: torch.Tensor | None = None, feature_dropout: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit vectors [B, embedding_dim]; `history` [B, embedding_dim] is the pooled history of a
        history tower (see `TwoTowerModel.pooled_history`); `feature_dropout`: while training, the
        share of rows whose feature part is dropped (the kept ones scaled up to match)."""
        out = history
        if self.id_embedding is not None:
            ids = self.id_embedding(x.ids)                                     # [B, d]
            out = ids if out is None else out + ids
        if self.mlp is not None:
            parts = []
            if self.categorical is not None:
                emb = self.categorical(x.categorical + self.offsets)           # [B, C, feature_dim]
                parts.append(emb.flatten(1))                                   # [B, C * feature_dim]
            if self.cfg.n_numeric:
                parts.append(x.numeric)                                        # [B, F]
            for bag, codes in zip(self.bags, x.multi_hot):
                parts.append(bag(codes))                                       # [B, feature_dim]
            features = self.mlp(torch.cat(parts, dim=1))                       # [B, d]
            if self.training and feature_dropout:
                kept = torch.rand(x.n_rows, 1, generator=generator) >= feature_dropout     # [B, 1]
                features = features * kept / (1.0 - feature_dropout)
            out = features if out is None else out + features
        if out is None:
            out = torch.zeros((x.n_rows, self.cfg.embedding_dim))
        return F.normalize(out, dim=1)                                         # [B, d], unit norm


class TwoTowerModel(nn.Module):
    artefact_kind = "two_tower_model"

    def __init__(self, params: TrainingParams, user_encoder: FeatureEncoder, item_encoder: FeatureEncoder):
        super().__init__()
        self.params = params
        self.user_encoder = user_encoder
        self.item_encoder = item_encoder
        self.item_tower = Tower(TowerConfig.of(item_encoder, params))
        self.uses_history = bool(params.user_history == "on" and user_encoder.id_column
                                 and self.item_tower.id_embedding is not None)
        self.user_tower = Tower(TowerConfig.of(user_encoder, params, history=self.uses_history))
        # history of customer code c (user encoder id code; 0 = unknown: empty) is
        # history_items[history_offsets[c]:history_offsets[c + 1]], item encoder id codes
        self.register_buffer("history_offsets", torch.zeros(len(user_encoder.id_vocabulary) + 2, dtype=torch.int64))
        self.register_buffer("history_items", torch.zeros(0, dtype=torch.int64))
        # only the pointwise (BCE) objective reads it: logit = cosine / pointwise_temperature + bias
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def embedding_dim(self) -> int:
        return self.params.embedding_dim

    # --- the customers' histories ------------------------------------------------------------
    def set_history(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        """Histories from accepted pairs (user / item encoder id codes, in time order): per customer
        its distinct known offers, the last `history_length` of them."""
        keep = (user_ids > 0) & (item_ids > 0)
        pairs = pd.DataFrame({"user": user_ids[keep], "item": item_ids[keep]})
        pairs = pairs.drop_duplicates(keep="last")
        pairs = pairs.groupby("user", sort=False).tail(self.params.history_length)
        pairs = pairs.sort_values("user", kind="stable")
        counts = np.bincount(pairs["user"].to_numpy(), minlength=len(self.history_offsets) - 1)
        self.history_offsets = torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64))
        self.history_items = torch.from_numpy(pairs["item"].to_numpy(dtype=np.int64, copy=True))

    def history_lengths(self, user_ids: torch.Tensor) -> torch.Tensor:
        return self.history_offsets[user_ids + 1] - self.history_offsets[user_ids]

    def pooled_history(self, user_ids: torch.Tensor, exclude: torch.Tensor | None = None, dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, d] direction of the mean offer-id embedding of each customer's history (zeros for an empty one);
        `exclude` [B]: an offer left out of row b's history (its own target while training);
        `dropout`: share of history entries dropped per row (training-time noise)."""
        starts, lengths = self.history_offsets[user_ids], self.history_lengths(user_ids)   # [B], [B]
        row = torch.repeat_interleave(torch.arange(len(user_ids)), lengths)                 # [T]
        position = torch.arange(len(row)) - (torch.cumsum(lengths, 0) - lengths)[row]      # [T]
        items = self.history_items[starts[row] + position]                                  # [T]
        keep = None
        if exclude is not None:
            keep = items != exclude[row]
        if dropout:
            kept = torch.rand(len(items), generator=generator) >= dropout
            keep = kept if keep is None else keep & kept
        if keep is not None:  # dropping entries (not zero-weighting them) spares their gather and gradient
            items, row = items[keep], row[keep]
        # the sum as a sparse [B, N] x dense [N, d] product: its backward is one scatter, where
        # EmbeddingBag's sorts the indices (measured 7x faster, forward and backward)
        table = self.item_tower.id_embedding.weight                                         # [N, d]
        members = torch.sparse_coo_tensor(torch.stack([row, items]), torch.ones(len(items), dtype=table.dtype),
                                          (len(user_ids), table.shape[0]), check_invariants=False)
        # unit length (the mean's direction is the sum's): a long, varied history averages to a
        # short vector, which would let the feature part outweigh it; its direction alone joins the
        # features (measured: NDCG@10 0.452 against 0.441 for the plain mean, MovieLens implicit
        # protocol, before the feature dropout)
        return F.normalize(torch.sparse.mm(members, table), dim=1)                          # [B, d]

    def user_vectors(self, x: TowerInputs, exclude: torch.Tensor | None = None, dropout: float = 0.0,
                     generator: torch.Generator | None = None, feature_dropout: float = 0.0) -> torch.Tensor:
        """The user tower on encoded rows, with the pooled history when the model uses it (and then
        `feature_dropout` of the rows without their feature part, while training)."""
        if not self.uses_history:
            return self.user_tower(x)
        history = self.pooled_history(x.ids, exclude, dropout, generator)
        return self.user_tower(x, history, feature_dropout, generator)

    # --- inference ---------------------------------------------------------------------------
    def user_embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """[len(frame), embedding_dim] float32 unit vectors, one per row of `frame`: the customer key
        column, the feature columns and, where a request is being served, its `context_<key>`
        columns (`ingest.context.context_row(in_params)`). Columns the towers were not trained on are
        ignored; absent ones take their neutral value (absent context: what exported vectors have)."""
        return self.embed_users(self.user_encoder.encode(frame.reset_index(drop=True))).numpy()

    def customer_vector(self, customer_id: str, features: dict | None = None,
                        in_params: dict | None = None) -> np.ndarray:
        """The unit customer vector [embedding_dim] (float32) of one customer for one request.

        `features`: the customer's stored feature document (`recommender_demos.customer_features`,
        keyed by `customer_id`; `_id`, `updated_at` and `_`-fields are ignored), empty or None for a
        cold-start customer (then the vector comes from what is known: no history, neutral
        features, the context). `in_params`: the request's `in_params` (SPEC §7) as it was sent;
        each key is the context column `context_<key>`, by the flatten's rule (`context_row`):
        keys the model was not trained on are ignored, keys it was trained on but the request lacks
        take the neutral value, and unusable values (lists, dicts, over-long text) count as absent.
        Without `in_params` (or with `{}`) this is the exported vector of the customer
        (`publishing.user_embedding_set`: the same typing of the feature row, `customer_row`). Score an offer by the dot
        product with its exported item vector (both are unit length: the cosine)."""
        frame = customer_row(customer_id, features, context_row(in_params))
        return self.embed_users(self.user_encoder.encode(frame))[0].numpy()

    def item_embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """[len(frame), embedding_dim] float32 unit vectors, one per row of `frame`."""
        return self.embed_items(self.item_encoder.encode(frame.reset_index(drop=True))).numpy()

    def embed_users(self, inputs: TowerInputs) -> torch.Tensor:
        return _chunked(self, self.user_vectors, inputs)

    def embed_items(self, inputs: TowerInputs) -> torch.Tensor:
        return _chunked(self, self.item_tower, inputs)

    # --- artefact ----------------------------------------------------------------------------
    def to_artefact(self) -> tuple[dict, bytes]:
        config = {"format": ARTEFACT_FORMAT, "params": self.params.to_dict(),
                  "user_encoder": self.user_encoder.to_dict(), "item_encoder": self.item_encoder.to_dict()}
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return config, buffer.getvalue()

    @classmethod
    def from_artefact(cls, config: dict, state: bytes) -> "TwoTowerModel":
        if config.get("format") != ARTEFACT_FORMAT:
            raise ValueError(f"two-tower artefact format {config.get('format')!r} is not {ARTEFACT_FORMAT}: "
                             "retrain the run with this version")
        model = cls(TrainingParams.from_dict(config["params"]), FeatureEncoder.from_dict(config["user_encoder"]),
                    FeatureEncoder.from_dict(config["item_encoder"]))
        weights = torch.load(io.BytesIO(state), weights_only=True)
        model.history_items = torch.empty_like(weights["history_items"])  # sized by the stored histories
        model.load_state_dict(weights)
        return model.eval()


@torch.no_grad()
def _chunked(model: nn.Module, forward, inputs: TowerInputs) -> torch.Tensor:
    """forward(rows) for pre-encoded rows, in chunks, in eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    try:
        n = inputs.n_rows
        out = torch.empty((n, model.params.embedding_dim), dtype=torch.float32)
        for start in range(0, n, _INFERENCE_CHUNK):
            index = torch.arange(start, min(n, start + _INFERENCE_CHUNK))
            out[start:start + len(index)] = forward(inputs.take(index))
        return out
    finally:
        model.train(was_training)
