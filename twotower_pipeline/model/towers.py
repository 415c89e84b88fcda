"""The two towers: customer features -> unit vector, offer features -> unit vector; score = cosine.

Tower input (one row): [id embedding | categorical embeddings | standardised numerics |
multi-hot mean embeddings] -> `layers` x (Linear(hidden) + ReLU) -> Linear(embedding_dim) -> L2 norm.
Every out-of-vocabulary row (index 0) of every embedding starts at zero, so an unseen customer or
offer is placed by its other features alone.

`TwoTowerModel` holds both towers and their fitted encoders; it stores as (JSON config, weights
saved with torch.save(state_dict)) and loads with torch.load(weights_only=True): never a pickle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.features import FeatureEncoder, TowerInputs

ARTEFACT_FORMAT = 1
_INFERENCE_CHUNK = 65536


@dataclass
class TowerConfig:
    n_ids: int                          # id vocabulary size without the OOV index; 0 = no id input
    categorical_sizes: list[int]        # vocabulary size per categorical column (without OOV)
    n_numeric: int
    multi_hot_sizes: list[int]          # element vocabulary size per list column (without OOV/padding)
    id_dim: int = 32
    feature_dim: int = 8
    hidden: int = 64
    layers: int = 1
    embedding_dim: int = 32

    @classmethod
    def of(cls, encoder: FeatureEncoder, params: TrainingParams) -> "TowerConfig":
        return cls(
            n_ids=len(encoder.id_vocabulary) if encoder.id_column else 0,
            categorical_sizes=[len(v) for v in encoder.categorical.values()],
            n_numeric=len(encoder.numeric),
            multi_hot_sizes=[len(v) for v in encoder.multi_hot.values()],
            id_dim=params.id_embedding_dim, feature_dim=params.feature_embedding_dim,
            hidden=params.hidden, layers=params.layers, embedding_dim=params.embedding_dim,
        )

    @property
    def input_dim(self) -> int:
        return ((self.id_dim if self.n_ids else 0) + self.feature_dim * len(self.categorical_sizes)
                + self.n_numeric + self.feature_dim * len(self.multi_hot_sizes))


class Tower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        if cfg.input_dim == 0:
            raise ValueError("a tower needs at least one input feature")
        self.cfg = cfg
        self.id_embedding = nn.Embedding(cfg.n_ids + 1, cfg.id_dim) if cfg.n_ids else None
        # all categorical columns share one table; column j's codes are shifted by offsets[j]
        sizes = [s + 1 for s in cfg.categorical_sizes]
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(sizes)[:-1]], dtype=torch.int64)
                             if sizes else torch.zeros(0, dtype=torch.int64))
        self.categorical = nn.Embedding(sum(sizes), cfg.feature_dim) if sizes else None
        self.bags = nn.ModuleList(nn.EmbeddingBag(s + 1, cfg.feature_dim, mode="mean", padding_idx=0)
                                  for s in cfg.multi_hot_sizes)
        blocks, width = [], cfg.input_dim
        for _ in range(cfg.layers):
            blocks += [nn.Linear(width, cfg.hidden), nn.ReLU()]
            width = cfg.hidden
        blocks.append(nn.Linear(width, cfg.embedding_dim))
        self.mlp = nn.Sequential(*blocks)
        with torch.no_grad():  # out-of-vocabulary rows start neutral
            if self.id_embedding is not None:
                self.id_embedding.weight[0].zero_()
            if self.categorical is not None:
                self.categorical.weight[self.offsets] = 0.0

    def forward(self, x: TowerInputs) -> torch.Tensor:
        parts = []
        if self.id_embedding is not None:
            parts.append(self.id_embedding(x.ids))                             # [B, id_dim]
        if self.categorical is not None:
            emb = self.categorical(x.categorical + self.offsets)               # [B, C, feature_dim]
            parts.append(emb.flatten(1))                                       # [B, C * feature_dim]
        if self.cfg.n_numeric:
            parts.append(x.numeric)                                            # [B, F]
        for bag, codes in zip(self.bags, x.multi_hot):
            parts.append(bag(codes))                                           # [B, feature_dim]
        h = torch.cat(parts, dim=1)                                            # [B, input_dim]
        return F.normalize(self.mlp(h), dim=1)                                 # [B, embedding_dim], unit norm


class TwoTowerModel(nn.Module):
    artefact_kind = "two_tower_model"

    def __init__(self, params: TrainingParams, user_encoder: FeatureEncoder, item_encoder: FeatureEncoder):
        super().__init__()
        self.params = params
        self.user_encoder = user_encoder
        self.item_encoder = item_encoder
        self.user_tower = Tower(TowerConfig.of(user_encoder, params))
        self.item_tower = Tower(TowerConfig.of(item_encoder, params))
        # only the pointwise (BCE) objective reads it: logit = cosine / temperature + bias
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def embedding_dim(self) -> int:
        return self.params.embedding_dim

    # --- inference ---------------------------------------------------------------------------
    def user_embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """[len(frame), embedding_dim] float32 unit vectors, one per row of `frame`."""
        return self._embed(self.user_tower, self.user_encoder, frame)

    def item_embeddings(self, frame: pd.DataFrame) -> np.ndarray:
        """[len(frame), embedding_dim] float32 unit vectors, one per row of `frame`."""
        return self._embed(self.item_tower, self.item_encoder, frame)

    def _embed(self, tower: Tower, encoder: FeatureEncoder, frame: pd.DataFrame) -> np.ndarray:
        inputs = encoder.encode(frame.reset_index(drop=True))
        return embed_inputs(tower, inputs).numpy()

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
            raise ValueError(f"two-tower artefact format {config.get('format')!r} is not {ARTEFACT_FORMAT}")
        model = cls(TrainingParams.from_dict(config["params"]), FeatureEncoder.from_dict(config["user_encoder"]),
                    FeatureEncoder.from_dict(config["item_encoder"]))
        model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        return model.eval()


@torch.no_grad()
def embed_inputs(tower: Tower, inputs: TowerInputs) -> torch.Tensor:
    """Tower output for pre-encoded rows, in chunks, in eval mode (restores the previous mode)."""
    was_training = tower.training
    tower.eval()
    try:
        n = inputs.n_rows
        out = torch.empty((n, tower.cfg.embedding_dim), dtype=torch.float32)
        for start in range(0, n, _INFERENCE_CHUNK):
            index = torch.arange(start, min(n, start + _INFERENCE_CHUNK))
            out[start:start + len(index)] = tower(inputs.take(index))
        return out
    finally:
        tower.train(was_training)
