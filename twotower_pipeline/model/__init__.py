"""The two-tower model in plain PyTorch/numpy/pandas: configuration, feature encoding, towers,
losses, training loop, metrics, top-K scoring and training-curve plots. No Dagster, no MongoDB."""

from twotower_pipeline.ingest.context import context_row
from twotower_pipeline.model.config import TrainingParams
from twotower_pipeline.model.scoring import rank_offers, top_k
from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.model.train import TrainingResult, train_two_tower

__all__ = ["context_row", "TrainingParams", "TrainingResult", "TwoTowerModel", "rank_offers", "top_k",
           "train_two_tower"]
