"""Publishing a run's embeddings to the collections the runtime reads (SPEC §5), as a whole.

A run's vectors are written to a staging collection first and checked; only then is the live
collection replaced, by one `renameCollection(dropTarget=True)`, so a reader sees either the old
run or the new one, never a mix, and a crash part-way leaves the live collection untouched. The
live collection's previous content is copied to `<name>__previous` first, for rollback.
"""

from __future__ import annotations

import numpy as np
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.frames import swap_in

PREVIOUS_SUFFIX = "__previous"


def publish_embeddings(
    store: MongoStore, location: str, key_field: str, run_id: str, keys: list[str], vectors: np.ndarray
) -> dict:
    """Replace the live collection at `location` with `{run_id, key_field, embedding}` documents."""
    if len(keys) != len(vectors):
        raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors for {location}")
    if not keys:
        raise ValueError(f"no vectors to publish to {location}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate {key_field} values in the vectors for {location}")
    live = store.collection(location)
    documents = [
        {"run_id": run_id, key_field: key, "embedding": vector}
        for key, vector in zip(keys, np.asarray(vectors, dtype=np.float64).tolist())
    ]
    previous = live.find_one({}, {"run_id": 1})

    def keep_previous():
        if previous is not None:
            live.aggregate([{"$match": {}}, {"$out": live.name + PREVIOUS_SUFFIX}])

    written = swap_in(live, documents, unique_key=key_field, before_swap=keep_previous)
    return {"written": written, "previous_run_id": previous["run_id"] if previous else None}


def live_run_id(store: MongoStore, location: str) -> str | None:
    """The run whose vectors the runtime reads now."""
    document = store.collection(location).find_one({}, {"run_id": 1})
    return document["run_id"] if document else None


def rollback_embeddings(store: MongoStore, location: str) -> str:
    """Put the previous run's vectors back live; returns that run's id."""
    database_name, _, name = location.partition(".")
    database = store.database(database_name)
    previous = database[name + PREVIOUS_SUFFIX]
    document = previous.find_one({}, {"run_id": 1})
    if document is None:
        raise LookupError(f"no previous embeddings kept for {location}")
    previous.rename(name, dropTarget=True)
    return document["run_id"]
