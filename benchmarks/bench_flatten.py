"""Flatten throughput: exposures/s from runtime logs to the flatten collection (read, join, write
as committed day slices), against a raw `insert_many` of the same rows into the same server; and
reading the committed slices back against a plain `find` of the same collection."""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid

from twotower_pipeline.ingest import datasets
from twotower_pipeline.ingest.flatten import fetch_runtime_window, flatten_runtime_logs
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.store import frames, names, slices
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline.store.client import MongoStore


def _logs(quick: bool):
    movielens = datasets.find_dataset(datasets.MOVIELENS)
    if movielens is not None and not quick:
        from twotower_pipeline.ingest.movielens import load_movielens

        return "MovieLens 100K", load_movielens(movielens)
    from twotower_pipeline.ingest.simulator import simulate_traffic

    return "simulated", simulate_traffic(n_requests=5_000 if quick else 25_000).logs


def run(uri: str, quick: bool) -> list[dict]:
    source, logs = _logs(quick)
    store = MongoStore(uri, f"bench{uuid.uuid4().hex[:6]}_")
    write_runtime_logs(store, logs)
    dates = [d["date_log"] for d in logs.presented]
    start = min(dates).replace(hour=0, minute=0, second=0, microsecond=0)
    end = max(dates).replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    target = store.collection(names.FLATTEN)
    reference = store.database("bench")["raw_insert"]

    days = [(start + dt.timedelta(days=i)).date().isoformat() for i in range((end - start).days)]
    sliced = SlicedCollection(store, names.FLATTEN)

    def ours() -> int:
        fetched = fetch_runtime_window(store, start, end)
        result = flatten_runtime_logs(fetched.presented, fetched.responses, (start, end), fetched.orphan_responses,
                                      fetched.naive_responses, fetched.earlier_uuids)
        exposures = result.exposures
        row_days = ((exposures["datetime"] - start) // dt.timedelta(days=1)).to_numpy()
        # the call the IO manager makes for ecosystemruntime_flatten: one slice per day, one commit
        return sum(sliced.write(exposures, days, row_days).values())

    fetched = fetch_runtime_window(store, start, end)
    rows = frames.frame_to_documents(flatten_runtime_logs(fetched.presented, fetched.responses, (start, end)).exposures)

    def raw(indexed: bool):
        reference.drop()
        if indexed:  # the one secondary index the flatten collection has
            reference.create_index("_write_id")
        documents = [dict(r) for r in rows]  # fresh dicts: insert_many adds _id to what it is given
        t = time.perf_counter()
        for batch in frames.chunked(documents, frames.INSERT_BATCH):
            reference.insert_many(batch, ordered=False)
        return len(documents) / (time.perf_counter() - t)

    def timed(write) -> float:
        target.drop()  # a first materialisation of the range: nothing to delete
        store.collection(slices.COMMITS).delete_many({"_id": names.FLATTEN})
        t = time.perf_counter()
        return write() / (time.perf_counter() - t)

    def read(committed: bool) -> float:
        t = time.perf_counter()
        n = len(sliced.read(days) if committed else frames.read_frame(target))
        return n / (time.perf_counter() - t)

    repeats = 2 if quick else 3
    rates: dict[str, list[float]] = {k: [] for k in ("ours", "raw", "raw_indexed", "rewrite", "read", "find")}
    for _ in range(repeats):
        rates["ours"].append(timed(ours))
        rates["raw"].append(raw(indexed=False))
        rates["raw_indexed"].append(raw(indexed=True))
        t = time.perf_counter()  # a re-materialisation: the old slices are deleted after the commit
        rates["rewrite"].append(ours() / (time.perf_counter() - t))
        rates["read"].append(read(committed=True))
        rates["find"].append(read(committed=False))
    median = {k: statistics.median(v) for k, v in rates.items()}
    for database in store.client.list_database_names():
        if database.startswith(store.database_prefix):
            store.client.drop_database(database)
    label = f"{source}, {len(rows):,} exposures"
    return [
        {
            "figure": f"flatten throughput vs raw insert_many ({label})",
            "ours": median["ours"],
            "reference": median["raw"],
            "unit": "exposures/s",
        },
        {
            "figure": "flatten throughput vs insert_many into a collection with one secondary index",
            "ours": median["ours"],
            "reference": median["raw_indexed"],
            "unit": "exposures/s",
        },
        {
            "figure": "flatten re-materialisation (slice rewrite) vs raw insert_many",
            "ours": median["rewrite"],
            "reference": median["raw"],
            "unit": "exposures/s",
        },
        {
            "figure": "reading the committed day slices vs a plain find of the collection",
            "ours": median["read"],
            "reference": median["find"],
            "unit": "rows/s",
        },
    ]
