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

from twotower_pipeline.model import offpolicy, scoring
from twotower_pipeline.store import embeddings, leases, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import SlicedCollection

DATABASE = names.FLATTEN.partition(".")[0]
#: Up to this many keys are fetched with `$in` on the key's index (the embedded server's `$in` grows
#: quadratically with thousands of values); more are read whole and filtered.
LOOKUP_LIMIT = 200


class GateError(RuntimeError):
    """The run has not passed the publish gate."""


# --- a run's kept vectors ----------------------------------------------------------------------------
def run_vectors(store: MongoStore, run_id: str, tower: str, keys=None) -> tuple[list[str], np.ndarray]:
    """(keys, vectors [n, d]) of a run's kept `tower` vectors ("user" | "item"); only `keys` when
    given (all otherwise). A few keys of the live run are looked up on the live collection's key
    index; otherwise they come from the run's binary snapshot, or, when it is missing, a streamed
    scan of its collection. LookupError when none are kept."""
    publisher = embeddings.Publisher(store, DATABASE)
    spec = publisher.tower(tower)
    sliced = SlicedCollection(store, publisher.run_location(tower, run_id))
    if not sliced.committed_slices():
        raise LookupError(f"run {run_id} has no {tower} vectors kept in {sliced.location} (never written, or "
                          f"pruned: the newest {embeddings.KEEP_RUNS} runs and the live and previous ones are kept)")
    wanted = None if keys is None else {str(k) for k in keys}
    if wanted is not None and len(wanted) <= LOOKUP_LIMIT and publisher.live_run_id() == run_id:
        live = store.database(DATABASE)[spec.collection]  # the live run's: looked up on its unique key index
        documents = live.find({spec.key_field: {"$in": sorted(wanted)}, "run_id": run_id},
                              {spec.key_field: 1, "embedding": 1, "_id": 0})
        return _stacked([pd.DataFrame(list(documents), columns=[spec.key_field, "embedding"])], spec.key_field)
    snapshot = publisher.run_snapshot(tower, run_id)
    if snapshot is None:
        found_keys, vectors = _stacked(sliced.read_batches(columns=[spec.key_field, "embedding"]), spec.key_field)
    else:
        found_keys, vectors = snapshot.keys, snapshot.vectors
    if wanted is None:
        return found_keys, vectors
    keep = [i for i, key in enumerate(found_keys) if key in wanted]
    return [found_keys[i] for i in keep], vectors[keep]


def _stacked(batches, key_field: str) -> tuple[list[str], np.ndarray]:
    found_keys, found_vectors = [], []
    for batch in batches:
        found_keys += batch[key_field].astype(str).tolist()
        found_vectors += batch["embedding"].tolist()
    if not found_keys:
        return [], np.zeros((0, 0), dtype=np.float32)
    return found_keys, np.asarray(found_vectors, dtype=np.float32)


# --- the gate -------------------------------------------------------------------------------------
def save_offline_metrics(store: MongoStore, run_id: str, record: dict) -> None:
    """Upsert the run's offline metrics and gate verdict (journaled: the gate must survive a crash)."""
    collection = leases.journaled(store.collection(names.OFFLINE_METRICS))
    collection.create_index("run_id", unique=True)
    collection.create_index("created_at")  # the publish sensor reads the verdicts newer than its cursor
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
        return {**answer, "detail": f"run_id {run_id!r} is not a run id (1-80 letters, digits, '_', '-', '.'; "
                                    "not '..', not ending in '.')"}
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
def shard_customers(keys: list[str], vectors: np.ndarray, buckets: np.ndarray, shard: int, n_shards: int,
                    limit: int | None) -> tuple[list[str], np.ndarray]:
    """(customer ids, vectors) of shard `shard` of `n_shards` (a range of the customers' stable hash
    buckets, `embeddings.customer_buckets`), in (bucket, id) order, at most `limit` of them (so a
    cap always keeps the same customers)."""
    members = np.flatnonzero(buckets * n_shards // embeddings.BUCKETS == shard)
    order = members[np.lexsort((np.asarray(keys, dtype=str)[members], buckets[members]))]
    if limit is not None:
        order = order[: int(limit)]
    return [keys[i] for i in order], vectors[order]


def score_shards(store: MongoStore, run_id: str, shards: list[int], n_shards: int, offers: list[str],
                 item_vectors: np.ndarray, k: int, *, max_users: int | None = None,
                 accepted: pd.DataFrame | None = None, log=None) -> tuple[list[dict], np.ndarray]:
    """(score documents, the position in `shards` of each document's shard) for the customers of
    `shards` (of `n_shards`); `max_users` caps the customers over all shards (each shard its share)."""
    keys, vectors = run_vectors(store, run_id, "user")
    buckets = embeddings.customer_buckets(keys)
    documents, row_slices = [], []
    for position, shard in enumerate(shards):
        limit = None if max_users is None else max_users // n_shards + (shard < max_users % n_shards)
        customers, user_vectors = shard_customers(keys, vectors, buckets, shard, n_shards, limit)
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


def scores_publisher(store: MongoStore, shard_keys) -> embeddings.Publisher:
    """The live `two_tower_scores` and its per-run collections, whose slices are the customer shards."""
    spec = embeddings.Tower("scores", names.SCORES, "customer_id", vector_field=None, slices=tuple(shard_keys))
    return embeddings.Publisher(store, DATABASE, towers=(spec,), journal_key=f"{DATABASE}.{names.SCORES}")


def write_scores(store: MongoStore, run_id: str, documents: list[dict], shard_keys: list[str],
                 row_slices: np.ndarray, all_shard_keys, owner: dict | None = None) -> dict[str, int]:
    """Keep the documents as the run's own scores, each shard a slice committed whole."""
    location = scores_publisher(store, all_shard_keys).run_location("scores", run_id)
    # read only whole, by the publish (one scan): no write-id index to pay for on every insert
    return SlicedCollection(store, location).write(documents, shard_keys, row_slices, owner=owner)


def publish_scores(store: MongoStore, run_id: str, shard_keys, owner: dict | None = None) -> dict:
    """Switch `two_tower_scores` to a gated run's kept scores, whole (`GateError` before the gate
    passed; `embeddings.PublishError` when a shard is missing)."""
    require_gate(store, run_id)
    return scores_publisher(store, shard_keys).publish(run_id, owner=owner)


# --- replay: the candidate's accept rate estimated from logged exposures with propensities -------
def replay(store: MongoStore, run_id: str, exposures: pd.DataFrame, seed: int = 0,
           vectors: tuple | None = None) -> dict:
    """`model.offpolicy.replay` of a stored run over `exposures` (customer_id, offer, rank,
    accepted, propensity): IPS, SNIPS and DR with their intervals, or why there is no estimate.
    `vectors` (user keys, user vectors, item keys, item vectors): the run's, where the caller holds
    them already; else they are read, and only where some exposure carries a propensity."""
    propensity = exposures["propensity"] if "propensity" in exposures else pd.Series(np.nan, index=exposures.index)
    rounds = offpolicy.LoggedRounds(
        exposures["customer_id"].astype(str).to_numpy(), exposures["offer"].astype(str).to_numpy(),
        pd.to_numeric(exposures["rank"], errors="coerce").fillna(1).astype(int).to_numpy(),
        exposures["accepted"].astype(int).to_numpy(), pd.to_numeric(propensity, errors="coerce").to_numpy())
    logged = np.isfinite(rounds.propensity)
    if vectors is None and logged.any():
        item_keys, item_vectors = run_vectors(store, run_id, "item")
        user_keys, user_vectors = run_vectors(store, run_id, "user", set(rounds.customers[logged]))
        vectors = (user_keys, user_vectors, item_keys, item_vectors)
    # without a propensity the estimate says why before it looks at any vector
    return offpolicy.replay(rounds, *(vectors or ([], np.zeros((0, 1)), [], np.zeros((0, 1)))), seed=seed)


def replay_gate(candidate: dict, live: dict | None, max_drop: float | None) -> tuple[bool, str | None]:
    """(passes, why): the candidate's SNIPS estimate may not fall below the live run's on the same
    rounds by more than `max_drop`; without that setting, or without estimates for both, it passes
    (saying why where it could not compare)."""
    if max_drop is None:
        return True, None
    if not candidate.get("available") or not (live or {}).get("available"):
        why = (candidate if not candidate.get("available") else live or {}).get("reason") or "no live run"
        return True, f"replay not compared: {why}"
    ours, theirs = candidate["estimates"]["snips"]["value"], live["estimates"]["snips"]["value"]
    if ours < theirs - max_drop:
        return False, (f"replay: SNIPS accept rate {ours:.4f} is below the live run's {theirs:.4f} by more than "
                       f"{max_drop}")
    return True, None
