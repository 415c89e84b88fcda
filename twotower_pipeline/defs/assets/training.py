"""Model training (SPEC §4, §5): jointly trained towers, the run document, and the two embedding
collections the runtime reads."""

import base64
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from twotower_pipeline import experiments, offline, publishing
from twotower_pipeline.defs.assets import OWNERS
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.model import TrainingParams, train_two_tower
from twotower_pipeline.model.plots import training_curve_png
from twotower_pipeline.runs import TrainedRun, new_run_id, run_document
from twotower_pipeline.store import artefacts, embeddings, frames, names
from twotower_pipeline.store.slices import ALL, SlicedCollection

GROUP = "model_training"


def _model_code_version() -> str:
    """A hash of the model package's source: the UI marks the towers stale when it changes."""
    sources = sorted((Path(__file__).resolve().parents[2] / "model").glob("*.py"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


class TwoTowerConfig(TrainingParams, dg.Config):
    """The towers' launchpad: every training parameter, declared once in `model.config.TrainingParams`
    (names, defaults, ranges, descriptions), and the run id; checked before any work starts."""

    run_id: Optional[str] = Field(default=None, description="Generated when empty (letters, digits, _ - .). A stored "
                                  "run's id is refused, unless asked again with its parameters on its training frame "
                                  "(its towers come back, untouched).")

    @field_validator("run_id")
    @classmethod
    def _storable_run_id(cls, run_id: Optional[str]) -> Optional[str]:
        if run_id is not None:
            embeddings.check_run_id(run_id)
        return run_id


@dg.asset(
    key="two_tower_model",
    # The frame is read in the body, after the parameters were checked: an input would be loaded
    # before the config is, and a typo in the launchpad would cost a full read first.
    deps=["training_frame"],
    io_manager_key="artefact_io_manager",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pytorch", "mongodb"},
    code_version=_model_code_version(),
)
def two_tower_model(
    context: dg.AssetExecutionContext, config: TwoTowerConfig, mongo: MongoResource
) -> dg.Output[TrainedRun]:
    """Customer and offer towers trained jointly on the cosine; writes the run document."""
    params = config.params()
    frame_collection = SlicedCollection(mongo.store(), names.TRAINING_FRAME)
    frame_version = (frame_collection.committed_write_ids() or {}).get(ALL)
    run_id = config.run_id or new_run_id()
    requested = json.loads(json.dumps(params.to_dict()))
    runs = mongo.store().collection(names.RUNS)
    document_before = runs.find_one({"run_id": run_id}, {"updated_at": 1})
    stored = _stored_towers(mongo.store(), run_id)
    if stored is not None:  # before the frame is read: a refused run id costs nothing
        return _same_run_again(context, mongo, run_id, stored, requested, frame_version)
    training_frame = frame_collection.read()
    if training_frame.empty:
        raise dg.Failure(description=f"{names.TRAINING_FRAME} is empty: materialise training_frame first")
    predictors = sorted(training_frame["predictor"].dropna().unique()) if "predictor" in training_frame else []
    predictor = predictors[0] if len(predictors) == 1 else ",".join(predictors)
    started = time.monotonic()
    try:
        result = train_two_tower(training_frame, params, log=context.log.info)
    except ValueError as error:  # bad input: say what is wrong before any time is spent
        raise dg.Failure(description=f"cannot train on the training frame: {error}") from None
    seconds = time.monotonic() - started
    run = TrainedRun(
        run=run_document(run_id=run_id, predictor=predictor, params=result.params, metrics=result.metrics,
                         n_rows=result.n_rows, epochs_run=result.epochs_run),
        model=result.model,
        details={"best_epoch": result.best_epoch, "metrics": result.metrics, "history": result.history,
                 "parameters": result.params.to_dict(), "requested_parameters": requested,
                 "dagster_run_id": context.run_id,
                 # offline scoring rebuilds the held-out split from this very frame
                 "training_frame_write_id": frame_version},
    )
    # another training of this run id that finished meanwhile keeps what it stored
    document_now = runs.find_one({"run_id": run_id}, {"updated_at": 1})
    if _stored_towers(mongo.store(), run_id) is not None or (
            document_now is not None and (document_before or {}).get("updated_at") != document_now["updated_at"]):
        raise dg.Failure(description=f"run_id {run_id!r} was stored by another training while this one trained: "
                         "it keeps its towers; leave run_id empty for a new run id")
    publishing.save_run_document(mongo.store(), run)
    curve = training_curve_png(result.history, metric_name=result.validation_metric, best_epoch=result.best_epoch,
                               title=f"run {run_id}")
    return dg.Output(
        run,
        metadata={
            "run_id": run_id,
            "predictor": predictor,
            "parameters": dg.MetadataValue.json(result.params.to_dict()),
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


def _stored_towers(store, run_id: str) -> dict | None:
    """The GridFS metadata of the newest stored towers named `run_id` (without reading them)."""
    files = store.database(artefacts.ARTEFACT_DATABASE)[f"{artefacts.ARTEFACT_BUCKET}.files"]
    found = files.find_one({"filename": "two_tower_model", "metadata.run_id": run_id}, {"metadata": 1},
                           sort=[("uploadDate", -1)])
    return found["metadata"] if found else None


def _same_run_again(context: dg.AssetExecutionContext, mongo: MongoResource, run_id: str, stored: dict,
                    requested: dict, frame_version) -> dg.Output[TrainedRun]:
    """A run id names one set of towers: its kept and published vectors and the sidecar's customer
    vectors were made with them, and towers trained again under the same id would be served against
    the old vectors. Asked again with the same parameters on the same training frame (a retry, a
    re-execution), the stored towers are the answer, untouched; anything else fails."""
    details = json.loads(stored.get("config") or "{}").get("details", {})
    trained_by = details.get("dagster_run_id") or stored.get("dagster_run_id")
    same = (frame_version is not None and details.get("training_frame_write_id") == frame_version
            and details.get("requested_parameters") == requested)
    if not same:
        raise dg.Failure(description=(
            f"run_id {run_id!r} already names a stored run (trained by Dagster run {trained_by}"
            f"{'' if frame_version == details.get('training_frame_write_id') else ' on another training frame'}"
            f"{'' if details.get('requested_parameters') == requested else ' with other parameters'}): a run id "
            "names one set of towers, and its embeddings were made with them; leave run_id empty for a new run id, "
            "or choose one not used yet"))
    run = artefacts.load_artefact(mongo.store(), "two_tower_model", run_id=run_id)
    context.log.info(f"run {run_id} was trained by Dagster run {trained_by} with these parameters on this "
                     "training frame: its stored towers are the answer, not trained again")
    return dg.Output(run, metadata={"run_id": run_id, "predictor": run.run.get("predictor"),
                                    "trained_by_dagster_run": str(trained_by), "trained_again": False,
                                    "n_rows": run.run.get("n_rows")})


EMBEDDING_CHECKS = ("unit_vectors_of_embedding_dim", "one_vector_per_key", "counts_match_sources")


def _embedding_asset(tower: str, source_location: str, source_field: str, build, description: str):
    """An asset keeping one tower's vectors of a run: every key of `source_location` and of the window."""
    key = dg.AssetKey(f"{tower}_embeddings")

    @dg.asset(
        key=key,
        ins={
            "two_tower_model": dg.AssetIn("two_tower_model"),
            # only the keys seen in the window are needed: the projection halves the read
            "training_frame": dg.AssetIn("training_frame", metadata={"columns": ["customer_id", "offer"]}),
        },
        deps=[dg.AssetKey(source_location.split("."))],
        group_name=GROUP,
        owners=OWNERS,
        kinds={"mongodb"},
        check_specs=[dg.AssetCheckSpec(n, asset=key, blocking=True) for n in EMBEDDING_CHECKS],
        description=description,
    )
    def embeddings_asset(context: dg.AssetExecutionContext, mongo: MongoResource, two_tower_model: TrainedRun,
                         training_frame: pd.DataFrame):
        store = mongo.store()
        source = frames.read_frame(store.collection(source_location))
        embedding_set = build(two_tower_model, source, training_frame)
        window_keys = training_frame[embedding_set.key_field]
        expected = len({str(v) for v in source.get(source_field, [])} | {str(v) for v in window_keys})
        publisher = embeddings.Publisher(store, publishing.DATABASE)
        try:
            written = publishing.keep_run_vectors(publisher, two_tower_model, embedding_set,
                                                  owner={"dagster_run_id": context.run_id})
        except ValueError as error:  # vectors that break the contract are never kept
            raise dg.Failure(description=str(error)) from None
        location = publisher.run_location(tower, two_tower_model.run_id)
        stored = SlicedCollection(store, location).count()  # read back: what a publish would copy
        context.log.info(f"run {two_tower_model.run_id}: {written} {tower} vectors kept in {location}")
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={"run_id": two_tower_model.run_id, "collection": location, "dagster/row_count": written,
                      **embedding_set.sources},
        )
        yield from _embedding_checks(key, embedding_set, two_tower_model.model.embedding_dim, stored, expected)

    return embeddings_asset


def _embedding_checks(key: dg.AssetKey, embedding_set: publishing.EmbeddingSet, dim: int, stored: int,
                      expected: int):
    vectors = embedding_set.vectors
    norms = np.linalg.norm(vectors, axis=1) if vectors.ndim == 2 else np.array([])
    yield dg.AssetCheckResult(
        asset_key=key, check_name="unit_vectors_of_embedding_dim",
        passed=not embeddings.vector_problems(embedding_set.keys, vectors, dim),
        metadata={"vectors": len(vectors), "embedding_dim": dim,
                  "max_norm_error": float(np.abs(norms - 1.0).max()) if len(norms) else 0.0},
    )
    yield dg.AssetCheckResult(
        asset_key=key, check_name="one_vector_per_key", passed=len(set(embedding_set.keys)) == stored,
        metadata={"vectors": stored, "distinct_keys": len(set(embedding_set.keys))},
    )
    yield dg.AssetCheckResult(
        asset_key=key, check_name="counts_match_sources", passed=stored == expected,
        metadata={"vectors": stored, "distinct_keys_in_sources": expected},
    )


user_embeddings = _embedding_asset(
    "user", names.CUSTOMER_FEATURES, names.CUSTOMER_KEY, publishing.user_embedding_set,
    "The run's own vector for every customer `{run_id, customer_id, embedding}`, kept for publishing and rollback.",
)
item_embeddings = _embedding_asset(
    "item", names.OFFER_MATRIX, names.OFFER_KEY, publishing.item_embedding_set,
    "The run's own vector for every offer `{run_id, offer, embedding}`, kept for publishing and rollback.",
)

RUNTIME_CHECKS = {
    "same_run_in_both": "Both live collections hold this run's vectors and no other run's.",
    "counts_match_run": "Each live collection holds exactly the run's vectors.",
    "unit_vectors_of_embedding_dim": "Every live vector is finite, unit length, `embedding_dim` long.",
    "one_vector_per_key": "A unique index on customer_id / offer: one vector per key.",
}


class PublishConfig(dg.Config):
    """Which run the runtime is switched to (by default the run trained upstream), or a rollback,
    or a refresh of the live run."""

    run_id: Optional[str] = Field(default=None, description="Publish this stored run instead of the run trained "
                                  "upstream (it must have passed the publish gate); with refresh_until: the live "
                                  "run to refresh.")
    rollback: bool = Field(default=False, description="Put back the run that was live before the current one "
                           "(both towers, verified), instead of publishing.")
    refresh_since: Optional[str] = Field(default=None, description="Refresh: customers and offers whose "
                                         "`updated_at` is after this UTC time (ISO) ...")
    refresh_until: Optional[str] = Field(default=None, description="... and at most this one are embedded with the "
                                         "live run's towers and upserted into its live collections.")
    promote_experiment: Optional[str] = Field(default=None, description="Publish this running experiment's "
                                              "challenger and end the experiment (promote_experiment_job).")

    @model_validator(mode="after")
    def _one_choice(self):
        if self.run_id is not None:
            embeddings.check_run_id(self.run_id)
        if self.promote_experiment is not None and (self.run_id is not None or self.rollback or
                                                    self.refresh_since is not None or self.refresh_until is not None):
            raise ValueError("promote_experiment takes no run_id, rollback or refresh window: it publishes the "
                             "experiment's challenger")
        if self.rollback and (self.run_id is not None or self.refresh_until is not None):
            raise ValueError("rollback takes no run_id or refresh window: it puts the previous run back")
        if self.refresh_until is not None:
            if self.run_id is None or self.refresh_since is None:
                raise ValueError("a refresh needs run_id (the live run), refresh_since and refresh_until")
            since, until = self.refresh_window()
            if since >= until:
                raise ValueError(f"refresh_since {self.refresh_since} must be before "
                                 f"refresh_until {self.refresh_until}")
        elif self.refresh_since is not None:
            raise ValueError("refresh_since without refresh_until: give both")
        return self

    def refresh_window(self) -> tuple[dt.datetime, dt.datetime]:
        def parsed(value: str, name: str) -> dt.datetime:
            try:
                moment = dt.datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not an ISO date-time") from None
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
        return parsed(self.refresh_since, "refresh_since"), parsed(self.refresh_until, "refresh_until")


@dg.asset(
    key="runtime_embeddings",
    ins={"two_tower_model": dg.AssetIn("two_tower_model")},
    deps=[user_embeddings, item_embeddings, "concept_test_metrics"],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mongodb"},
    check_specs=[dg.AssetCheckSpec(n, asset="runtime_embeddings", blocking=True, description=d)
                 for n, d in RUNTIME_CHECKS.items()],
    description="What the runtime reads: `two_tower_user_embeddings` and `two_tower_item_embeddings`, "
    "switched to one run together through the publish journal, verified after the swap; only a run that "
    "passed the publish gate (concept_test_metrics).",
)
def runtime_embeddings(context: dg.AssetExecutionContext, config: PublishConfig, mongo: MongoResource,
                       two_tower_model: TrainedRun):
    """Publish the run's user and item vectors as one unit (see `store.embeddings`), or roll back."""
    owner = {"dagster_run_id": context.run_id}
    if config.refresh_until is not None:
        yield from _refresh(context, config, mongo, owner)
        return
    try:
        if config.promote_experiment is not None:
            outcome = experiments.promote(mongo.store(), config.promote_experiment, owner=owner)
        elif config.rollback:
            outcome = publishing.rollback_run(mongo.store(), owner=owner)
        else:
            outcome = publishing.publish_run(mongo.store(), config.run_id or two_tower_model.run_id, owner=owner)
    except offline.GateError as error:
        raise dg.Failure(description=f"{error}; the runtime keeps serving the run it served") from None
    except experiments.ExperimentError as error:
        raise dg.Failure(description=str(error)) from None
    except embeddings.PublishError as error:
        if error.report is not None:
            yield from _runtime_checks(error.report)
        raise dg.Failure(description=str(error)) from None
    if outcome["recovered"]:
        context.log.warning(outcome["recovered"])
    context.log.info(f"the runtime now serves run {outcome['run_id']} (previous: {outcome['previous_run_id']})")
    yield dg.MaterializeResult(
        metadata={"run_id": outcome["run_id"], "previous_run_id": outcome["previous_run_id"] or "none",
                  "users": outcome["users"], "items": outcome["items"],
                  "collections": f"{publishing.USER_EMBEDDINGS}, {publishing.ITEM_EMBEDDINGS}",
                  **({"recovered": outcome["recovered"]} if outcome["recovered"] else {})},
    )
    yield from _runtime_checks(outcome["report"])


def _refresh(context: dg.AssetExecutionContext, config: PublishConfig, mongo: MongoResource, owner: dict):
    """New and changed customers and offers embedded with the live run's towers, upserted live."""
    since, until = config.refresh_window()
    try:
        outcome = publishing.refresh_live_run(mongo.store(), config.run_id, since, until, owner=owner)
    except (embeddings.PublishError, ValueError, LookupError) as error:
        if isinstance(error, embeddings.PublishError) and error.report is not None:  # after the writes
            yield from _runtime_checks(error.report)
            raise dg.Failure(description=f"{error}; the journal says `refreshing`: the next publish, rollback, "
                             "refresh or `twotower embeddings-status --recover` finishes it") from None
        raise dg.Failure(description=f"{error}; the live collections keep the vectors they had") from None
    if outcome["recovered"]:
        context.log.warning(outcome["recovered"])
    refreshed = outcome["refreshed"]
    summary = ", ".join(f"{r['vectors']} {t} vectors ({r['new']} new)" for t, r in refreshed.items()) or "nothing"
    context.log.info(f"run {config.run_id}: refreshed {summary} changed in ({since.isoformat()}, {until.isoformat()}]")
    yield dg.MaterializeResult(metadata={
        "run_id": config.run_id, "refreshed": summary, "since": since.isoformat(), "until": until.isoformat(),
        **{f"{t}_refreshed": r["vectors"] for t, r in refreshed.items()},
        **{f"{t}_new": r["new"] for t, r in refreshed.items()},
        "users": outcome["counts"].get("user"), "items": outcome["counts"].get("item")})
    yield from _runtime_checks(outcome["report"])


def _runtime_checks(report: embeddings.LiveReport):
    towers = list(report.documents)
    yield dg.AssetCheckResult(
        check_name="same_run_in_both", passed=not any(report.other_runs.values()),
        metadata={"run_id": report.run_id, **{f"{t}_other_run_documents": report.other_runs[t] for t in towers}},
    )
    yield dg.AssetCheckResult(
        check_name="counts_match_run", passed=report.documents == report.expected,
        metadata={**{f"{t}_documents": report.documents[t] for t in towers},
                  **{f"{t}_expected": report.expected[t] for t in towers}},
    )
    yield dg.AssetCheckResult(
        check_name="unit_vectors_of_embedding_dim",
        passed=not any(report.wrong_length.values()) and not any(report.not_finite.values())
        and not any(report.not_unit.values()),
        metadata={"embedding_dim": report.embedding_dim,
                  **{f"{t}_wrong_length": report.wrong_length[t] for t in towers},
                  **{f"{t}_not_finite": report.not_finite[t] for t in towers},
                  **{f"{t}_not_unit_length": report.not_unit[t] for t in towers}},
    )
    yield dg.AssetCheckResult(
        check_name="one_vector_per_key", passed=all(report.unique_key.values()),
        metadata={f"{t}_unique_key_index": report.unique_key[t] for t in towers},
    )
