"""Embedding export: every customer and every offer embedded with one run's towers, checked, kept
as the run's own vectors, then published as a pair to the collections the runtime reads (SPEC §5,
`store.embeddings`). Used by the assets and the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from twotower_pipeline import offline
from twotower_pipeline.ingest.training_frame import CHANGED_AT, build_training_frame
from twotower_pipeline.runs import TrainedRun
from twotower_pipeline.store import artefacts, embeddings, frames, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import SlicedCollection

#: The embedding collections live in the training source database (the run document's `database`).
DATABASE = names.FLATTEN.partition(".")[0]
USER_EMBEDDINGS = f"{DATABASE}.{names.USER_EMBEDDINGS}"
ITEM_EMBEDDINGS = f"{DATABASE}.{names.ITEM_EMBEDDINGS}"
#: Stands in for the other tower's key when one side is embedded on its own (it is never encoded).
NO_KEY = "__export__"


@dataclasses.dataclass
class EmbeddingSet:
    """One tower's vectors for every key, with the facts the checks look at."""

    key_field: str
    keys: list[str]
    vectors: np.ndarray  # [n, embedding_dim]
    sources: dict[str, int]  # how many keys each source contributed


def _keys(values) -> list[str]:
    return sorted({str(v) for v in values if v is not None and str(v) != ""})


def embedding_frame(tower: str, keys: list[str], features: pd.DataFrame,
                    context: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows a tower embeds `keys` from: each key joined with its row of `features` (the
    customer features or the offer matrix, keyed as stored) and typed and filled the way the
    training frame is, with the exposure's `context` columns (price, rank, score: their documented
    defaults when absent). The one path of the export, the refresh and the sidecar."""
    key, other = ("customer_id", "offer") if tower == "user" else ("offer", "customer_id")
    exposures = pd.DataFrame({key: list(keys), other: NO_KEY, "accepted": 0})
    if context is not None:
        for column in context.columns:
            exposures[column] = context[column].to_numpy()
    if tower == "user":
        frame, _ = build_training_frame(exposures, features, pd.DataFrame(), customer_key=names.CUSTOMER_KEY)
    else:
        frame, _ = build_training_frame(exposures, pd.DataFrame(), features, offer_key=names.OFFER_KEY)
    return frame


def embed(run: TrainedRun, tower: str, frame: pd.DataFrame) -> np.ndarray:
    """[len(frame), embedding_dim] unit vectors of `embedding_frame` rows with the run's `tower`."""
    return run.model.user_embeddings(frame) if tower == "user" else run.model.item_embeddings(frame)


def user_embedding_set(run: TrainedRun, customer_features: pd.DataFrame, training_frame: pd.DataFrame) -> EmbeddingSet:
    """Every customer of the feature collection and every customer seen in the window."""
    known = _keys(customer_features[names.CUSTOMER_KEY]) if len(customer_features) else []
    seen = _keys(training_frame["customer_id"]) if len(training_frame) else []
    keys = sorted(set(known) | set(seen))
    vectors = embed(run, "user", embedding_frame("user", keys, customer_features))
    return EmbeddingSet("customer_id", keys, vectors, {"customer_features": len(known), "training_window": len(seen)})


def item_embedding_set(run: TrainedRun, offer_matrix: pd.DataFrame, training_frame: pd.DataFrame) -> EmbeddingSet:
    """Every offer of the offer matrix and every offer seen in the window."""
    known = _keys(offer_matrix[names.OFFER_KEY]) if len(offer_matrix) else []
    seen = _keys(training_frame["offer"]) if len(training_frame) else []
    keys = sorted(set(known) | set(seen))
    vectors = embed(run, "item", embedding_frame("item", keys, offer_matrix))
    return EmbeddingSet("offer", keys, vectors, {"offer_matrix": len(known), "training_window": len(seen)})


def keep_run_vectors(publisher: embeddings.Publisher, run: TrainedRun, embedding_set: EmbeddingSet,
                     owner: dict | None = None) -> int:
    """Keep one tower's vectors as the run's own (not yet what the runtime reads); vectors that
    break the contract are refused by the write (`embeddings.vector_problems`)."""
    tower = "user" if embedding_set.key_field == "customer_id" else "item"
    return publisher.write_run(tower, run.run_id, embedding_set.keys, embedding_set.vectors, owner=owner,
                               embedding_dim=run.model.embedding_dim)


def save_run_document(store: MongoStore, run: TrainedRun) -> None:
    """Upsert the run's document into `ecosystem_meta.two_tower_runs` (keyed by run_id)."""
    runs = store.collection(names.RUNS)
    runs.create_index("run_id", unique=True)
    runs.replace_one({"run_id": run.run_id}, run.run, upsert=True)


def publish_run(store: MongoStore, run_id: str, owner: dict | None = None) -> dict:
    """Make a run's kept pair what the runtime reads, if the run passed the publish gate (else
    `offline.GateError`, and nothing changes)."""
    offline.require_gate(store, run_id)
    outcome = embeddings.Publisher(store, DATABASE).publish(run_id, owner=owner)
    record_live_run(store, outcome["run_id"])
    return outcome


def rollback_run(store: MongoStore, owner: dict | None = None) -> dict:
    """Put the run that was live before the current one back, both towers together, verified."""
    outcome = embeddings.Publisher(store, DATABASE).rollback(owner=owner)
    record_live_run(store, outcome["run_id"])
    return outcome


def record_live_run(store: MongoStore, run_id: str) -> None:
    """Mark in `ecosystem_meta.two_tower_runs` which run the runtime serves (`live`) and since when
    (`published_at`); the publish journal stays the authority, this is what a reader of the runs sees."""
    runs = store.collection(names.RUNS)
    runs.update_many({"live": True, "run_id": {"$ne": run_id}}, {"$set": {"live": False}})
    runs.update_one({"run_id": run_id}, {"$set": {"live": True, "published_at": dt.datetime.now(dt.timezone.utc)}})


# --- between retrains: the live run's vectors for new and changed customers and offers -------------
SOURCES = {"user": names.CUSTOMER_FEATURES, "item": names.OFFER_MATRIX}


def ensure_change_index(store: MongoStore) -> None:
    """The `updated_at` index `changes_since` reads (the loaders make it too; another writer may not)."""
    for location in SOURCES.values():
        store.collection(location).create_index(CHANGED_AT)


def changes_since(store: MongoStore, since: dt.datetime) -> dict[str, tuple[int, dt.datetime | None]]:
    """{tower: (documents of its source changed after `since`, the newest change)}: counted on the
    server through the `updated_at` index (`ensure_change_index`)."""
    found = {}
    for tower, location in SOURCES.items():
        collection = store.collection(location)
        query = {CHANGED_AT: {"$gt": since}}
        newest = collection.find_one(query, {CHANGED_AT: 1, "_id": 0}, sort=[(CHANGED_AT, -1)])
        found[tower] = (collection.count_documents(query) if newest else 0, newest[CHANGED_AT] if newest else None)
    return found


def refresh_live_run(store: MongoStore, run_id: str, since: dt.datetime, until: dt.datetime,
                     owner: dict | None = None) -> dict:
    """Embed the customers and offers whose documents changed in (since, until] with the live run's
    own towers (its stored artefact) and upsert them into the live pair (`Publisher.refresh`:
    refused unless `run_id` is live). The towers' encoders read what they were trained on; a new
    customer has no history and is placed by its features."""
    run = artefacts.load_artefact(store, "two_tower_model", run_id=run_id)
    window = {CHANGED_AT: {"$gt": since, "$lte": until}}
    no_window = pd.DataFrame({"customer_id": pd.Series(dtype=str), "offer": pd.Series(dtype=str)})
    vectors = {}
    for tower, build in (("user", user_embedding_set), ("item", item_embedding_set)):
        changed = frames.read_frame(store.collection(SOURCES[tower]), window)
        if len(changed):
            embedded = build(run, changed, no_window)
            vectors[tower] = (embedded.keys, embedded.vectors)
    publisher = embeddings.Publisher(store, DATABASE)
    if not vectors:
        return {"run_id": run_id, "refreshed": {}, "counts": publisher.run_counts(run_id),
                "report": publisher.verify(run_id, read_vectors=False), "recovered": None}
    return publisher.refresh(run_id, vectors, owner=owner)


def live_run_id(store: MongoStore) -> str | None:
    """The run the runtime serves, from the publish journal."""
    return embeddings.Publisher(store, DATABASE).live_run_id()


def export_run(store: MongoStore, run: TrainedRun) -> dict:
    """Embed every customer and offer with a stored run and publish the pair (the CLI's path); the
    run must have passed the publish gate."""
    offline.require_gate(store, run.run_id)
    training_frame = SlicedCollection(store, names.TRAINING_FRAME).read(columns=["customer_id", "offer"])
    customers = frames.read_frame(store.collection(names.CUSTOMER_FEATURES))
    offers = frames.read_frame(store.collection(names.OFFER_MATRIX))
    publisher = embeddings.Publisher(store, DATABASE)
    keep_run_vectors(publisher, run, user_embedding_set(run, customers, training_frame))
    keep_run_vectors(publisher, run, item_embedding_set(run, offers, training_frame))
    return publish_run(store, run.run_id)
