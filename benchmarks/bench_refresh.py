"""The refresh sensor's tick at a million customers against Dagster's sensor time limit (60 s,
`DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`): a tick counts the customers and offers changed since its
cursor on the server (the `updated_at` index) and reads the publish journal and the live run's
document, nothing else. Measured: ticks after the first (which starts the cursor), with nothing
changed, and with 1,000 customers changed."""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid

import dagster as dg
import numpy as np

from twotower_pipeline.defs.automation import refresh_sensor
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.frames import INSERT_BATCH

LIMIT_SECONDS = 60.0


def run(uri: str, quick: bool) -> list[dict]:
    n, changed = (100_000, 1_000) if quick else (1_000_000, 1_000)
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    store = MongoStore(uri, prefix)
    trained = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
    customers = store.collection(names.CUSTOMER_FEATURES)
    rng = np.random.default_rng(0)
    ages = rng.integers(18, 80, n)
    loading = time.perf_counter()
    for start in range(0, n, INSERT_BATCH):
        customers.insert_many([{"customer_id": f"c{i:07d}", "age": int(ages[i]), "segment": f"s{i % 7}",
                                "updated_at": trained - dt.timedelta(minutes=int(i % 10_000))}
                               for i in range(start, min(n, start + INSERT_BATCH))], ordered=False)
    customers.create_index("updated_at")  # built once over the loaded documents
    customers.create_index("customer_id", unique=True)
    print(f"  {n:,} customers loaded and indexed in {time.perf_counter() - loading:.0f} s", flush=True)
    store.collection(names.OFFER_MATRIX).insert_many(
        [{"offer_name": f"o{i}", "price": 1.0, "updated_at": trained} for i in range(1000)])
    # a live run (a few vectors: the tick never reads them) and its run document
    publisher = embeddings.Publisher(store)
    vectors = np.eye(4)[[0, 1, 2, 3]]
    publisher.write_run("user", "live", ["c0000000", "c0000001", "c0000002", "c0000003"], vectors)
    publisher.write_run("item", "live", ["o0", "o1", "o2", "o3"], vectors)
    publisher.publish("live")
    store.collection(names.RUNS).insert_one({"run_id": "live", "updated_at": trained})
    mongo = MongoResource(uri=uri, database_prefix=prefix)

    def tick(cursor: str | None) -> tuple[float, object, str]:
        with dg.DagsterInstance.ephemeral() as instance:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"mongo": mongo})
            started = time.perf_counter()
            result = refresh_sensor(context)
            return time.perf_counter() - started, result, context.cursor

    cursor = tick(None)[2]  # the first tick starts the cursor at the run's training time
    quiet = [tick(cursor)[:2] for _ in range(5)]
    assert all(isinstance(r, dg.SkipReason) for _, r in quiet), quiet[0][1]
    customers.update_many({"customer_id": {"$in": [f"c{i:07d}" for i in range(changed)]}},
                          {"$set": {"updated_at": trained + dt.timedelta(hours=1)}})
    busy = [tick(cursor)[:2] for _ in range(5)]
    assert all(len(r.run_requests) == 1 for _, r in busy), busy[0][1]
    for database in store.client.list_database_names():
        if database.startswith(prefix):
            store.client.drop_database(database)
    return [
        {"figure": f"refresh_sensor tick, {n:,} customers, nothing changed: seconds vs the 60 s sensor limit",
         "ours": statistics.median(t for t, _ in quiet), "reference": LIMIT_SECONDS, "unit": "s (lower is better)"},
        {"figure": f"refresh_sensor tick, {changed:,} of {n:,} customers changed (one refresh run requested)",
         "ours": statistics.median(t for t, _ in busy), "reference": LIMIT_SECONDS, "unit": "s (lower is better)"},
    ]
