"""Embedding export: vectors/s from a run's vectors to the live pair the runtime reads (the run's
own collections written and committed, staged, indexed, renamed over the live ones, verified,
journaled) against a raw `insert_many` of the same documents."""

from __future__ import annotations

import statistics
import time
import uuid

import numpy as np

from twotower_pipeline.store import embeddings
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.frames import INSERT_BATCH, chunked


def run(uri: str, quick: bool) -> list[dict]:
    n, dim = (20_000, 32) if quick else (100_000, 32)
    store = MongoStore(uri, f"bench{uuid.uuid4().hex[:6]}_")
    rng = np.random.default_rng(42)
    vectors = rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"c{i:07d}" for i in range(n)]
    offers, offer_vectors = [f"o{i}" for i in range(100)], vectors[:100]
    reference = store.database("bench")["raw_insert"]
    publisher = embeddings.Publisher(store, keep_runs=2)

    def ours(run_id: str) -> float:
        t = time.perf_counter()
        publisher.write_run("user", run_id, keys, vectors)
        publisher.write_run("item", run_id, offers, offer_vectors)
        publisher.publish(run_id)
        return n / (time.perf_counter() - t)

    def raw(run_id: str) -> float:
        reference.drop()
        documents = [{"run_id": run_id, "customer_id": k, "embedding": v}
                     for k, v in zip(keys, vectors.tolist())]  # built outside the timing
        t = time.perf_counter()
        for batch in chunked(documents, INSERT_BATCH):
            reference.insert_many(batch, ordered=False)
        return n / (time.perf_counter() - t)

    rates: dict[str, list[float]] = {"first": [], "retrain": [], "raw": []}
    for repeat in range(2 if quick else 3):
        for name in ("logging", "ecosystem_meta"):
            store.client.drop_database(store.database_prefix + name)
        rates["first"].append(ours(f"r{repeat}a"))  # nothing live yet
        rates["retrain"].append(ours(f"r{repeat}b"))  # a retrain: the live pair is replaced
        rates["raw"].append(raw(f"r{repeat}"))
    for database in store.client.list_database_names():
        if database.startswith(store.database_prefix):
            store.client.drop_database(database)
    median = {k: statistics.median(v) for k, v in rates.items()}
    return [
        {"figure": f"embedding export, first run ({n:,} x {dim})", "ours": median["first"],
         "reference": median["raw"], "unit": "documents/s"},
        {"figure": "embedding export, retrain (replacing the live pair)", "ours": median["retrain"],
         "reference": median["raw"], "unit": "documents/s"},
    ]
