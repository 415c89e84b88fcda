"""Offline scoring against the stored runs (SPEC §6): the run's kept vectors, the publish gate's
verdicts, the documented concept test and batch recommendations. Used by the assets and the CLI.

Verdicts live in `ecosystem_meta.two_tower_offline_metrics`, one document per run:
`{run_id, metrics: {two_tower: {...}, popularity: {...}, ...}, gate: {passed, reasons, notes, ...},
probes: [...], created_at}`. Nothing reaches the runtime's collections or the scores collection
for a run whose document does not say `gate.passed` (`require_gate`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from twotower_pipeline.model import scoring
from twotower_pipeline.store import embeddings, leases, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import WRITE_ID_FIELD, SlicedCollection

DATABASE = names.FLATTEN.partition(".")[0]


class GateError(RuntimeError):
    """The run has not passed the publish gate."""


# --- a run's kept vectors ----------------------------------------------------------------------------
def run_vectors(store: MongoStore, run_id: str, tower: str, keys=None) -> tuple[list[str], np.ndarray]:
    """(keys, vectors [n, d]) of a run's kept `tower` vectors ("user" | "item"), streamed in
    batches; only `keys` when given (all otherwise). LookupError when the run has none kept."""
    publisher = embeddings.Publisher(store, DATABASE)
    spec = publisher.tower(tower)
    sliced = SlicedCollection(store, publisher.run_location(tower, run_id))
    if not sliced.committed_slices():
        raise LookupError(f"run {run_id} has no {tower} vectors kept in {sliced.location} (never written, or "
                          f"pruned: the newest {embeddings.KEEP_RUNS} runs and the live and previous ones are kept)")
    wanted = None if keys is None else {str(k) for k in keys}
    found_keys, found_vectors = [], []
    for batch in sliced.read_batches(columns=[spec.key_field, "embedding"]):
        if wanted is not None:
            batch = batch[batch[spec.key_field].isin(wanted)]
        found_keys += batch[spec.key_field].astype(str).tolist()
        found_vectors += batch["embedding"].tolist()
    if not found_keys:
        return [], np.zeros((0, 0), dtype=np.float32)
    return found_keys, np.asarray(found_vectors, dtype=np.float32)


# --- the gate -------------------------------------------------------------------------------------
def save_offline_metrics(store: MongoStore, run_id: str, record: dict) -> None:
    """Upsert the run's offline metrics and gate verdict (journaled: the gate must survive a crash)."""
    collection = leases.journaled(store.collection(names.OFFLINE_METRICS))
    collection.create_index("run_id", unique=True)
    collection.replace_one({"run_id": run_id}, {"run_id": run_id, **record,
                                                "created_at": dt.datetime.now(dt.timezone.utc)}, upsert=True)


def offline_metrics(store: MongoStore, run_id: str) -> dict | None:
    return store.collection(names.OFFLINE_METRICS).find_one({"run_id": run_id}, {"_id": 0})


def require_gate(store: MongoStore, run_id: str) -> dict:
    """The run's gate verdict when it passed; GateError saying why not otherwise."""
    record = offline_metrics(store, run_id)
    if record is None:
        raise GateError(f"run {run_id} has no offline metrics: materialise concept_test_metrics for it first "
                        "(nothing is published or scored before the publish gate passes)")
    gate = record.get("gate") or {}
    if not gate.get("passed"):
        raise GateError(f"run {run_id} did not pass the publish gate: {'; '.join(gate.get('reasons') or ['unknown'])}")
    return gate


# --- the concept test (SPEC §6) -------------------------------------------------------------------
def concept_test(store: MongoStore, run_id: str, customer_id: str, offers=None) -> dict:
    """Rank `offers` (default: the run's whole catalogue) for one customer with one run:
    `{success, run_id, customer_id, ranked: [{offer, score}], detail}`, score descending. An unknown
    run, customer or offer gives success false with the reason, never an exception."""
    answer = {"success": False, "run_id": run_id, "customer_id": customer_id, "ranked": [], "detail": ""}
    if not isinstance(run_id, str) or not embeddings.RUN_ID_PATTERN.match(run_id):
        return {**answer, "detail": f"run_id {run_id!r} is not a run id (1-80 letters, digits, '_', '-', '.')"}
    if not isinstance(customer_id, str) or not customer_id:
        return {**answer, "detail": f"customer_id {customer_id!r} must be a non-empty string"}
    if offers is not None and (not isinstance(offers, (list, tuple)) or not all(isinstance(o, str) for o in offers)):
        return {**answer, "detail": "offers must be a list of offer names (strings)"}
    try:
        _, user = run_vectors(store, run_id, "user", [customer_id])
        item_keys, items = run_vectors(store, run_id, "item")
    except LookupError as error:
        known = store.collection(names.RUNS).count_documents({"run_id": run_id}) > 0
        return {**answer, "detail": str(error) if known else f"unknown run {run_id}: no such run in {names.RUNS}"}
    if len(user) == 0:
        return {**answer, "detail": f"unknown customer {customer_id}: run {run_id} has no vector for it"}
    position = {key: i for i, key in enumerate(item_keys)}
    wanted = list(dict.fromkeys(offers)) if offers else item_keys
    unknown = [o for o in wanted if o not in position]
    known = [o for o in wanted if o in position]
    ranked = [{"offer": offer, "score": score}
              for offer, score in scoring.rank_offers(user[0], items[[position[o] for o in known]], known)]
    detail = f"{len(ranked)} offers ranked by cosine with run {run_id}" + ("" if offers else " (the whole catalogue)")
    if unknown:
        detail += f"; unknown offers (no vector in run {run_id}): {unknown}"
    return {**answer, "success": not unknown, "ranked": ranked, "detail": detail}


# --- batch recommendations (SPEC §6) --------------------------------------------------------------
def shard_buckets(shard: int, n_shards: int) -> tuple[int, int]:
    """The customer buckets [low, high) of shard `shard` of `n_shards`."""
    return shard * embeddings.BUCKETS // n_shards, (shard + 1) * embeddings.BUCKETS // n_shards


def shard_customers(store: MongoStore, run_id: str, shard: int, n_shards: int, limit: int | None) -> tuple[
        list[str], np.ndarray]:
    """(customer ids, vectors) of one shard of the run's customers, in bucket order, at most `limit`."""
    publisher = embeddings.Publisher(store, DATABASE)
    sliced = SlicedCollection(store, publisher.run_location("user", run_id))
    write_ids = sliced.committed_write_ids() or {}
    if not write_ids:
        raise LookupError(f"run {run_id} has no user vectors kept in {sliced.location}")
    low, high = shard_buckets(shard, n_shards)
    shard = {"bucket": {"$gte": low, "$lt": high}, WRITE_ID_FIELD: {"$in": list(write_ids.values())}}
    cursor = sliced.collection.find(shard, {"customer_id": 1, "embedding": 1, "_id": 0})
    cursor = cursor.sort([("bucket", 1), ("customer_id", 1)])
    if limit is not None:
        cursor = cursor.limit(int(limit))
    documents = list(cursor)
    if not documents:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [d["customer_id"] for d in documents], np.asarray([d["embedding"] for d in documents], dtype=np.float32)


def scores_publisher(store: MongoStore, shard_keys) -> embeddings.Publisher:
    """The live `two_tower_scores` and its per-run collections, whose slices are the customer shards."""
    spec = embeddings.Tower("scores", names.SCORES, "customer_id", vector_field=None, slices=tuple(shard_keys))
    return embeddings.Publisher(store, DATABASE, towers=(spec,), journal_key=f"{DATABASE}.{names.SCORES}")


def write_scores(store: MongoStore, run_id: str, documents: list[dict], shard_keys: list[str],
                 row_slices: np.ndarray, all_shard_keys, owner: dict | None = None) -> dict[str, int]:
    """Keep the documents as the run's own scores, each shard a slice committed whole."""
    location = scores_publisher(store, all_shard_keys).run_location("scores", run_id)
    return SlicedCollection(store, location).write(documents, shard_keys, row_slices, indexes=[["customer_id"]],
                                                   owner=owner)


def score_shards(store: MongoStore, run_id: str, shards: list[int], n_shards: int, offers: list[str],
                 item_vectors: np.ndarray, k: int, *, max_users: int | None = None,
                 accepted: pd.DataFrame | None = None, log=None) -> tuple[list[dict], np.ndarray]:
    """(score documents, the position in `shards` of each document's shard) for the customers of
    `shards` (of `n_shards`); `max_users` caps the customers over all shards (each shard its share)."""
    documents, row_slices = [], []
    for position, shard in enumerate(shards):
        limit = None if max_users is None else max_users // n_shards + (shard < max_users % n_shards)
        customers, user_vectors = shard_customers(store, run_id, shard, n_shards, limit)
        found = recommendation_documents(run_id, customers, user_vectors, offers, item_vectors, k, accepted=accepted)
        documents += found
        row_slices += [position] * len(found)
        if log:
            log(f"shard {shard} of {n_shards}: {len(found)} customers scored against {len(offers)} eligible offers")
    return documents, np.asarray(row_slices, dtype=np.int64)


def recommendation_documents(run_id: str, customers: list[str], user_vectors: np.ndarray, offers: list[str],
                             item_vectors: np.ndarray, k: int, *, accepted: pd.DataFrame | None = None,
                             created_at: dt.datetime | None = None) -> list[dict]:
    """The documented score documents `{run_id, customer_id, ranked: [{offer, score}], created_at}`
    of `customers`: the top `k` of `offers` (the eligible catalogue) by cosine, without the offers
    each customer accepted (`accepted`: customer_id, offer pairs), in one blocked top-K pass."""
    created_at = created_at or dt.datetime.now(dt.timezone.utc)
    exclude = None
    if accepted is not None and len(accepted):
        rows = pd.Index(customers).get_indexer(accepted["customer_id"].astype(str))
        columns = pd.Index(offers).get_indexer(accepted["offer"].astype(str))
        keep = (rows >= 0) & (columns >= 0)
        exclude = scoring.exclusions(rows[keep], columns[keep], len(customers))
    scores, index = scoring.top_k(user_vectors, item_vectors, k, exclude=exclude)
    offer_names = np.asarray(offers, dtype=object)
    scores = scores.astype(np.float64)
    documents = []
    for customer, row_index, row_scores in zip(customers, index, scores):
        shown = row_index >= 0
        documents.append({"run_id": run_id, "customer_id": customer, "ranked": [
            {"offer": o, "score": s} for o, s in zip(offer_names[row_index[shown]], row_scores[shown].tolist())],
            "created_at": created_at})
    return documents
