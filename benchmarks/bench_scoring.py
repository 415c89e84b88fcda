"""Top-K scoring, batch recommendations and offline metrics, each beside its reference.

- top-K: the top 10 of 1,000 offers for 1,000,000 customers (d = 32, unit vectors, inner
  product) by `scoring.top_k` against faiss-cpu's exact `IndexFlatIP.search` on the same vectors
  (all cores for both);
- batch recommendations: the asset's work for 100,000 customers of a stored run (read each
  shard's vectors, top-10 of 1,000 offers without the customer's accepts, build the documented
  documents, keep them as the run's scores, each shard committed) against a bare `insert_many` of
  the very same documents into an empty collection; and the publish that follows (staging copy,
  unique index, rename over `two_tower_scores`, verification) against the same reference;
- offline metrics: every MovieLens 100K customer ranked over the whole catalogue, K 5/10/20 and the
  AUCs, by `evaluation.evaluate` against `torch.topk` on the full score matrix plus ranx on the
  top lists (the well-known library); skipped when the data set is absent.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import numpy as np
import pandas as pd

from twotower_pipeline import offline
from twotower_pipeline.model import evaluation, metrics, scoring
from twotower_pipeline.store import embeddings
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.frames import INSERT_BATCH, chunked


def _unit(rng, n, d) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _median_rates(timings: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in timings.items()}


def top_k_rows(quick: bool) -> list[dict]:
    import faiss

    n, n_items, d, k = (200_000 if quick else 1_000_000), 1000, 32, 10
    rng = np.random.default_rng(0)
    users, items = _unit(rng, n, d), _unit(rng, n_items, d)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(d)
    index.add(items)
    scoring.top_k(users[:10_000], items, k, metric="dot")  # compiled once, outside the timing
    rates: dict[str, list[float]] = {"ours": [], "faiss": []}
    for _ in range(2 if quick else 3):
        started = time.perf_counter()
        _, ours = scoring.top_k(users, items, k, metric="dot")
        rates["ours"].append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        _, theirs = index.search(users, k)
        rates["faiss"].append(n / (time.perf_counter() - started))
    agreement = float((ours == theirs).mean())  # float rounding may swap near-ties
    median = _median_rates(rates)
    return [{"figure": f"top-{k} of {n_items:,} offers, {n:,} customers, d {d}: ours vs faiss IndexFlatIP "
                       f"({agreement:.4%} of slots equal)",
             "ours": median["ours"], "reference": median["faiss"], "unit": "customers/s"}]


def batch_rows(uri: str, quick: bool) -> list[dict]:
    n, n_items, d, k, n_shards = (20_000 if quick else 100_000), 1000, 32, 10, 4
    store = MongoStore(uri, f"bench{uuid.uuid4().hex[:6]}_")
    rng = np.random.default_rng(1)
    publisher = embeddings.Publisher(store, offline.DATABASE)
    customers = [f"c{i:07d}" for i in range(n)]
    offers = [f"o{i:04d}" for i in range(n_items)]
    publisher.write_run("user", "bench", customers, _unit(rng, n, d))
    publisher.write_run("item", "bench", offers, _unit(rng, n_items, d))
    _, item_vectors = offline.run_vectors(store, "bench", "item")
    accepted = pd.DataFrame({"customer_id": rng.choice(customers, 3 * n), "offer": rng.choice(offers, 3 * n)})
    shard_keys = [f"shard_{i:02d}_of_{n_shards:02d}" for i in range(n_shards)]
    scores = offline.scores_publisher(store, shard_keys)
    reference = store.database("bench")["raw_insert"]
    rates: dict[str, list[float]] = {"ours": [], "publish": [], "raw": []}
    for repeat in range(2 if quick else 3):
        run_id = f"r{repeat}"
        started = time.perf_counter()
        documents, row_slices = offline.score_shards(store, "bench", list(range(n_shards)), n_shards, offers,
                                                     item_vectors, k, accepted=accepted)
        for document in documents:
            document["run_id"] = run_id
        offline.write_scores(store, run_id, documents, shard_keys, row_slices, shard_keys)
        rates["ours"].append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        scores.publish(run_id)
        rates["publish"].append(n / (time.perf_counter() - started))
        reference.drop()
        plain = [{key: value for key, value in doc.items() if key != "_id" and key != "_write_id"}
                 for doc in documents]  # the same documents, built outside the timing
        started = time.perf_counter()
        for batch in chunked(plain, INSERT_BATCH):
            reference.insert_many(batch, ordered=False)
        rates["raw"].append(n / (time.perf_counter() - started))
    for database in store.client.list_database_names():
        if database.startswith(store.database_prefix):
            store.client.drop_database(database)
    median = _median_rates(rates)
    return [
        {"figure": f"batch_recommendations, {n:,} customers x {n_items:,} offers, scored and kept (4 shards) "
                   "vs raw insert_many of the documents", "ours": median["ours"], "reference": median["raw"],
         "unit": "customers/s"},
        {"figure": "publishing those scores as two_tower_scores (copy, unique index, rename, verify)",
         "ours": median["publish"], "reference": median["raw"], "unit": "customers/s"},
    ]


def metrics_rows(quick: bool) -> list[dict]:
    import ranx
    import torch

    from benchmarks.movielens_protocol import implicit_frame
    from twotower_pipeline.ingest import datasets

    if datasets.find_dataset(datasets.MOVIELENS) is None:
        return []
    frame, customers, offers = implicit_frame()
    held = evaluation.holdout_mask(frame, share=0.25)
    user_keys = sorted(frame["customer_id"].unique())
    item_keys = sorted(frame["offer"].unique())
    held_out = evaluation.HeldOut.from_frame(frame, held, user_keys, item_keys)
    rng = np.random.default_rng(2)
    users, items = _unit(rng, len(user_keys), 32), _unit(rng, len(item_keys), 32)
    scorer = evaluation.VectorScorer(users, items)
    evaluation.evaluate(scorer, held_out)  # compiled once, outside the timing
    names = [f"{m}@{k}" for m in ("precision", "recall", "ndcg", "map", "hit_rate") for k in metrics.KS]

    def reference():
        scores = torch.from_numpy(users @ items.T)
        scores[torch.from_numpy(held_out.train_rows), torch.from_numpy(held_out.train_columns)] = -torch.inf
        top = torch.topk(scores, max(metrics.KS), dim=1).indices.numpy()
        evaluated = held_out.evaluated_users
        qrels = ranx.Qrels({str(u): {str(i): 1 for i in held_out.test_columns[held_out.test_rows == u]}
                            for u in evaluated})
        run = ranx.Run({str(u): {str(i): float(20 - r) for r, i in enumerate(top[u])} for u in evaluated})
        ranx.evaluate(qrels, run, names + ["mrr@20"])
        probe = scorer.pairs(held_out.exposure_rows, held_out.exposure_columns)
        metrics.auc_metrics(probe, held_out.exposure_labels, held_out.exposure_rows, held_out.exposure_columns)

    reference()  # ranx compiles its metrics once, outside the timing
    rates: dict[str, list[float]] = {"ours": [], "reference": []}
    n = len(held_out.evaluated_users)
    for _ in range(3 if quick else 5):
        started = time.perf_counter()
        evaluation.evaluate(scorer, held_out)
        rates["ours"].append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        reference()
        rates["reference"].append(n / (time.perf_counter() - started))
    median = _median_rates(rates)
    return [{"figure": f"offline metrics, all {n} MovieLens 100K customers x {len(item_keys):,} offers (K 5/10/20, "
                       f"AUCs; ours {n / median['ours']:.2f} s) vs torch.topk + ranx",
             "ours": median["ours"], "reference": median["reference"], "unit": "customers/s"}]


def run(uri: str, quick: bool) -> list[dict]:
    return top_k_rows(quick) + batch_rows(uri, quick) + metrics_rows(quick)
