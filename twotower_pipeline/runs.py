"""A training run: its id, the documented run document (SPEC §4) and the stored artefact.

`TrainedRun` is what the `two_tower_model` asset stores in GridFS: the towers' weights as bytes
and, as JSON, the feature encoders, the parameters and the run document, so a run can be found
by its `run_id` and exported again outside Dagster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from twotower_pipeline.model.towers import TwoTowerModel
from twotower_pipeline.store import names
from twotower_pipeline.store.artefacts import register_artefact


def new_run_id(now: dt.datetime | None = None) -> str:
    """Sortable and unique: `tt_<UTC timestamp>_<6 hex>`."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"tt_{now:%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"


def run_document(*, run_id: str, predictor: str, params, metrics: dict, n_rows: int, epochs_run: int) -> dict:
    """The documented `ecosystem_meta.two_tower_runs` document (all fields, documented names)."""
    database, _, flatten_collection = names.FLATTEN.partition(".")
    return {
        "run_id": run_id,
        "database": database,
        "flatten_collection": flatten_collection,
        "user_column": params.user_id_column,
        "item_column": params.item_id_column,
        "predictor": predictor,
        "embedding_dim": params.embedding_dim,
        "epochs": epochs_run,
        "stopping_rounds": params.stopping_rounds,
        "user_model_id": f"two_tower_user_{run_id}",
        "item_model_id": f"two_tower_item_{run_id}",
        "user_auc": float(metrics["user_auc"]),
        "item_auc": float(metrics["item_auc"]),
        "n_rows": int(n_rows),
        "updated_at": dt.datetime.now(dt.timezone.utc),
    }


@register_artefact
@dataclasses.dataclass
class TrainedRun:
    """The trained towers of one run, with the run's document and extra details."""

    artefact_kind = "two_tower_run"

    run: dict
    model: TwoTowerModel
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    def artefact_metadata(self) -> dict:
        """Searchable GridFS metadata: a run is found again by its id."""
        return {"run_id": self.run_id, "predictor": self.run["predictor"]}

    def to_artefact(self) -> tuple[dict, bytes]:
        model_config, state = self.model.to_artefact()
        run = {**self.run, "updated_at": self.run["updated_at"].isoformat()}
        return {"run": run, "details": self.details, "model": model_config}, state

    @classmethod
    def from_artefact(cls, config: dict, state: bytes) -> "TrainedRun":
        run = {**config["run"], "updated_at": dt.datetime.fromisoformat(config["run"]["updated_at"])}
        model = TwoTowerModel.from_artefact(config["model"], state)
        return cls(run=run, model=model, details=config.get("details", {}))
