"""Model training (SPEC §4, §5): jointly trained towers, the run document, and the two embedding
collections the runtime reads."""

import base64
import hashlib
import time
from pathlib import Path
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from twotower_pipeline import publishing
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.model import TrainingParams, train_two_tower
from twotower_pipeline.model.plots import training_curve_png
from twotower_pipeline.runs import TrainedRun, new_run_id, run_document
from twotower_pipeline.store import frames, names

GROUP = "model_training"


def _model_code_version() -> str:
    """A hash of the model package's source: the UI marks the towers stale when it changes."""
    sources = sorted((Path(__file__).resolve().parents[2] / "model").glob("*.py"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


_DEFAULTS = TrainingParams()  # the launchpad shows the model's own defaults, never a copy of them


class TwoTowerConfig(dg.Config):
    """Training parameters (documented names and defaults); validated before any work starts."""

    embedding_dim: int = Field(default=_DEFAULTS.embedding_dim, description="Output width of both towers (4..256).")
    epochs: int = Field(default=_DEFAULTS.epochs, description="Most passes over the data (1..500).")
    stopping_rounds: int = Field(default=_DEFAULTS.stopping_rounds, description="Early-stopping patience (0..50).")
    batch_size: int = Field(default=_DEFAULTS.batch_size, description="Examples per step (= in-batch candidates).")
    hidden: int = Field(default=_DEFAULTS.hidden, description="Width of each tower's hidden layer.")
    learning_rate: float = Field(default=_DEFAULTS.learning_rate, description="Adam learning rate.")
    user_features: list[str] = Field(default=_DEFAULTS.user_features)
    item_features: list[str] = Field(default=_DEFAULTS.item_features)
    categorical_columns: list[str] = Field(default=_DEFAULTS.categorical_columns,
                                           description="Empty: text columns are categorical.")
    layers: int = Field(default=_DEFAULTS.layers, description="Hidden layers per tower (ours; 0 = linear).")
    loss: str = Field(default=_DEFAULTS.loss, description="softmax | mixed | pointwise (ours).")
    pointwise_weight: float = Field(default=_DEFAULTS.pointwise_weight,
                                    description="Weight of the loss on explicit declines (ours).")
    temperature: float = Field(default=_DEFAULTS.temperature, description="Softmax temperature on the cosine (ours).")
    validation_split: float = Field(default=_DEFAULTS.validation_split, description="Share held out for validation.")
    seed: int = Field(default=_DEFAULTS.seed, description="Same seed, same data, same machine: same model.")
    run_id: Optional[str] = Field(default=None, description="Generated when empty.")

    @model_validator(mode="after")
    def _valid_parameters(self):
        self.params()  # raises ValueError naming the parameter, its value and the allowed range
        return self

    def params(self) -> TrainingParams:
        return TrainingParams.from_dict(self.model_dump(exclude={"run_id"}))


@dg.asset(
    key="two_tower_model",
    ins={"training_frame": dg.AssetIn("training_frame")},
    io_manager_key="artefact_io_manager",
    group_name=GROUP,
    kinds={"pytorch", "mongodb"},
    code_version=_model_code_version(),
)
def two_tower_model(
    context: dg.AssetExecutionContext, config: TwoTowerConfig, mongo: MongoResource, training_frame: pd.DataFrame
) -> dg.Output[TrainedRun]:
    """Customer and offer towers trained jointly on the cosine; writes the run document."""
    params = config.params()
    predictors = sorted(training_frame["predictor"].dropna().unique()) if "predictor" in training_frame else []
    predictor = predictors[0] if len(predictors) == 1 else ",".join(predictors)
    run_id = config.run_id or new_run_id()
    started = time.monotonic()
    try:
        result = train_two_tower(training_frame, params, log=context.log.info)
    except ValueError as error:  # bad input: say what is wrong before any time is spent
        raise dg.Failure(description=f"cannot train on the training frame: {error}") from None
    seconds = time.monotonic() - started
    run = TrainedRun(
        run=run_document(run_id=run_id, predictor=predictor, params=params, metrics=result.metrics,
                         n_rows=result.n_rows, epochs_run=result.epochs_run),
        model=result.model,
        details={"best_epoch": result.best_epoch, "metrics": result.metrics, "history": result.history,
                 "parameters": params.to_dict(), "dagster_run_id": context.run_id},
    )
    publishing.save_run_document(mongo.store(), run)
    curve = training_curve_png(result.history, metric_name=result.validation_metric, best_epoch=result.best_epoch,
                               title=f"run {run_id}")
    return dg.Output(
        run,
        metadata={
            "run_id": run_id,
            "predictor": predictor,
            "parameters": dg.MetadataValue.json(params.to_dict()),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "training_seconds": round(seconds, 2),
            "examples_per_second": round(result.examples_per_second, 1),
            "n_rows": result.n_rows,
            "early_stopping_metric": result.validation_metric,
            **{
                f"validation_{k}": float(v)
                for k, v in result.metrics.items()
                if isinstance(v, (int, float)) and k != "validation_metric"
            },
            "training_curve": dg.MetadataValue.md(
                f"![training curve](data:image/png;base64,{base64.b64encode(curve).decode()})"
            ),
        },
    )


def _published_checks(key: dg.AssetKey, collection, key_field: str, dim: int, expected: int):
    """Checks on what the runtime will read: the live collection, read back after the swap."""
    documents = list(collection.find({}, {"_id": 0, key_field: 1, "embedding": 1, "run_id": 1}))
    vectors = [d.get("embedding") or [] for d in documents]
    wrong_length = sum(len(v) != dim for v in vectors)
    matrix = np.array([v for v in vectors if len(v) == dim], dtype=np.float64).reshape(-1, dim)
    not_finite = int((~np.isfinite(matrix)).any(axis=1).sum())
    off_unit = int((np.abs(np.linalg.norm(matrix, axis=1) - 1.0) > publishing.NORM_TOLERANCE).sum())
    keys = {d.get(key_field) for d in documents}
    runs = sorted({d.get("run_id") for d in documents})
    yield dg.AssetCheckResult(
        asset_key=key, check_name="unit_vectors_of_embedding_dim",
        passed=bool(documents) and wrong_length == not_finite == off_unit == 0,
        metadata={"vectors": len(documents), "embedding_dim": dim, "wrong_length": wrong_length,
                  "not_finite": not_finite, "not_unit_norm": off_unit},
    )
    yield dg.AssetCheckResult(
        asset_key=key, check_name="one_vector_per_key", passed=len(keys) == len(documents) and len(runs) == 1,
        metadata={"vectors": len(documents), "distinct_keys": len(keys), "run_ids": ", ".join(map(str, runs))},
    )
    yield dg.AssetCheckResult(
        asset_key=key, check_name="counts_match_sources", passed=len(documents) == expected,
        metadata={"vectors": len(documents), "distinct_keys_in_sources": expected},
    )


EMBEDDING_CHECKS = ("unit_vectors_of_embedding_dim", "one_vector_per_key", "counts_match_sources")


def _embedding_asset(name: str, location: str, source_location: str, source_field: str, build, description: str):
    """An asset publishing one tower's vectors for every key of `source_location` and the window."""
    key = dg.AssetKey(name)

    @dg.asset(
        key=key,
        ins={
            "two_tower_model": dg.AssetIn("two_tower_model"),
            # only the keys seen in the window are needed: the projection halves the read
            "training_frame": dg.AssetIn("training_frame", metadata={"columns": ["customer_id", "offer"]}),
        },
        deps=[dg.AssetKey(source_location.split("."))],
        group_name=GROUP,
        kinds={"mongodb"},
        metadata={"mongo_collection": location},
        check_specs=[dg.AssetCheckSpec(n, asset=key) for n in EMBEDDING_CHECKS],
        description=description,
    )
    def embeddings_asset(context: dg.AssetExecutionContext, mongo: MongoResource, two_tower_model: TrainedRun,
                         training_frame: pd.DataFrame):
        store = mongo.store()
        source = frames.read_frame(store.collection(source_location))
        embedding_set = build(two_tower_model, source, training_frame)
        window_keys = training_frame[embedding_set.key_field]
        expected = len({str(v) for v in source.get(source_field, [])} | {str(v) for v in window_keys})
        outcome = publishing.publish(store, location, two_tower_model, embedding_set)  # refuses bad vectors
        context.log.info(f"{location} now serves run {two_tower_model.run_id} ({outcome['written']} vectors)")
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={"run_id": two_tower_model.run_id, "collection": location, "dagster/row_count": outcome["written"],
                      "previous_run_id": outcome["previous_run_id"] or "none", **embedding_set.sources},
        )
        yield from _published_checks(key, store.collection(location), embedding_set.key_field,
                                     two_tower_model.model.embedding_dim, expected)

    return embeddings_asset


user_embeddings = _embedding_asset(
    "user_embeddings", publishing.USER_EMBEDDINGS, names.CUSTOMER_FEATURES, names.CUSTOMER_KEY,
    publishing.user_embedding_set,
    "Every customer's vector `{run_id, customer_id, embedding}`, swapped in whole per run.",
)
item_embeddings = _embedding_asset(
    "item_embeddings", publishing.ITEM_EMBEDDINGS, names.OFFER_MATRIX, names.OFFER_KEY,
    publishing.item_embedding_set,
    "Every offer's vector `{run_id, offer, embedding}`, swapped in whole per run.",
)
