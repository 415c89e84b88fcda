"""What the runtime serves: the live run's customer and offer vectors, held in memory, so that a
request reads no database.

They are loaded from the run's kept vectors (its binary snapshot; `offline.run_vectors`), not from
the live collections, and are built beside the ones being served, then swapped in whole by one
reference assignment: a request takes the `ServedRun` once and ranks with it, so it sees one run's
customers and offers, never a mix, even while a new run is loaded. `check()` (on a timer) looks at
the publish journal and the offer matrix and loads what changed:

- another run is live (a publish, a rollback): everything, while the old run keeps answering;
- the same run was refreshed (new or changed customers and offers): the refreshed customers are
  read into a small second pair of arrays over the run's own, which are kept as they are;
- the offer matrix changed (an offer added, changed or retired): the offers only.

A reload is skipped while the journal says a publish or refresh is under way, and a load whose
journal changed while it was read is thrown away (the next check loads the newer state).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time

from twotower_pipeline import offline, publishing
from twotower_pipeline.ingest.training_frame import CHANGED_AT
from twotower_pipeline.serving.scorer import SimilarityScorer
from twotower_pipeline.serving.vectors import CustomerVectors
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.slices import ALL, SlicedCollection

log = logging.getLogger("twotower.serving")
#: Offer-matrix fields the runtime copies into a presented document's result.
OFFER_DETAILS = ("offer_id", "price", "cost")


class NothingLive(LookupError):
    """No run is published (or its vectors could not be loaded yet)."""


@dataclasses.dataclass(frozen=True)
class ServedRun:
    """One run's vectors as served: taken once per request, replaced whole."""

    run_id: str
    predictor: str | None
    customers: CustomerVectors
    scorer: SimilarityScorer
    version: tuple  # (live run, published_at, the run's customer-vector write): what was loaded
    catalogue: tuple  # (offers in the matrix, newest updated_at) when the offers were loaded
    loaded_at: dt.datetime
    load_seconds: float

    def summary(self) -> dict:
        return {"run_id": self.run_id, "predictor": self.predictor, "customers": len(self.customers),
                "customer_vector_bytes": self.customers.nbytes, "memory_mapped": self.customers.mapped is not None,
                "offers": len(self.scorer), "skipped_offers": len(self.scorer.skipped),
                "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3)}


class LiveEmbeddings:
    """The live run's `ServedRun`, kept current by `check()` (called on a timer by the service)."""

    def __init__(self, store: MongoStore, *, metric: str = "cosine", memory_budget_bytes: int | None = None,
                 cache_dir=None):
        self.store = store
        self.metric = metric
        self.memory_budget_bytes = memory_budget_bytes
        self.cache_dir = cache_dir
        self.publisher = embeddings.Publisher(store, publishing.DATABASE)
        self._served: ServedRun | None = None
        self._lock = threading.Lock()
        self.reloads = 0

    @property
    def served(self) -> ServedRun:
        served = self._served
        if served is None:
            raise NothingLive("no run is live: publish a run that passed the gate (publish_job, or the "
                              "publish sensor) before the runtime can rank offers")
        return served

    @property
    def current(self) -> ServedRun | None:
        """The run being served, None before a run is live."""
        return self._served

    def check(self) -> bool:
        """Load what changed since the last load; True when a new `ServedRun` was swapped in."""
        with self._lock:
            version = self._version()
            if version is None:
                return False  # nothing live yet, or a publish or refresh under way: keep serving
            catalogue = self._catalogue_version()
            served = self._served
            if served is not None and served.version == version and served.catalogue == catalogue:
                return False
            started = time.monotonic()
            run_id = version[0]
            customers = self._customers(run_id, version[2], served)
            if served is None or served.version != version:
                customers = customers.with_refreshed(*self.publisher.refreshed_vectors("user", run_id))
            scorer = self._scorer(run_id)
            if scorer is None or self._version() != version:  # or a publish or refresh began while this was read
                if scorer is not None:
                    log.info("not swapping in run %s: the publish journal changed while it was loaded", run_id)
                _release(customers, served)
                return False
            run = self.store.collection(names.RUNS).find_one({"run_id": run_id}, {"predictor": 1}) or {}
            self._served = ServedRun(run_id, run.get("predictor"), customers, scorer, version, catalogue,
                                     dt.datetime.now(dt.timezone.utc), time.monotonic() - started)
            if served is not None:
                _release(served.customers, self._served)
            self.reloads += 1
            log.info("serving run %s: %d customers (%s bytes%s), %d offers with a vector, %d catalogue offers "
                     "without one (skipped: %s); loaded in %.2f s", run_id, len(customers), f"{customers.nbytes:,}",
                     ", memory-mapped" if customers.mapped else "", len(scorer), len(scorer.skipped),
                     scorer.skipped[:10], self._served.load_seconds)
            return True

    def challenger(self, run_id: str, earlier: ServedRun | None = None) -> ServedRun | None:
        """A gated run that is not live, as an experiment's challenger arm serves it: its own kept
        vectors (a refresh touches the live run only). `earlier` (the same run as loaded before)
        is returned as it is while its vectors and the offer matrix are unchanged. None when the
        run kept no vectors."""
        write_id = self._write_id(run_id)
        if write_id is None:
            return None
        version, catalogue = (run_id, None, write_id), self._catalogue_version()
        if earlier is not None and earlier.version == version and earlier.catalogue == catalogue:
            return earlier
        started = time.monotonic()
        customers = self._customers(run_id, write_id, earlier)
        try:
            scorer = self._scorer(run_id)
            run = self.store.collection(names.RUNS).find_one({"run_id": run_id}, {"predictor": 1}) or {}
        except Exception:
            _release(customers, earlier)  # not served: its mapped files go
            raise
        if scorer is None:
            _release(customers, earlier)
            return None
        loaded = ServedRun(run_id, run.get("predictor"), customers, scorer, version, catalogue,
                           dt.datetime.now(dt.timezone.utc), time.monotonic() - started)
        log.info("challenger run %s loaded: %d customers (%s bytes), %d offers in %.2f s", run_id, len(customers),
                 f"{customers.nbytes:,}", len(scorer), loaded.load_seconds)
        return loaded

    def _customers(self, run_id: str, write_id, earlier: ServedRun | None) -> CustomerVectors:
        """The run's own customer vectors: `earlier`'s arrays when they are the same write."""
        if earlier is not None and earlier.run_id == run_id and earlier.version[2] == write_id:
            return earlier.customers
        keys, vectors = offline.run_vectors(self.store, run_id, "user")
        return CustomerVectors.build(keys, vectors, budget_bytes=self.memory_budget_bytes, cache_dir=self.cache_dir)

    def _write_id(self, run_id: str):
        """The committed write of the run's kept customer vectors (None: it kept none)."""
        location = self.publisher.run_location("user", run_id)
        return (SlicedCollection(self.store, location).committed_write_ids() or {}).get(ALL)

    def _version(self) -> tuple | None:
        """(live run, published_at, the committed write of its customer vectors), or None while
        nothing is live or a publish or refresh is under way."""
        journal = self.publisher.status()
        run_id = journal.get("live_run_id")
        if journal.get("state") != "live" or run_id is None:
            return None
        return run_id, journal.get("published_at"), self._write_id(run_id)

    def _catalogue_version(self) -> tuple:
        """(offers, newest `updated_at`) of the offer matrix, read on its indexes: an offer added,
        changed or retired reloads the offers (a retired offer is never shown again)."""
        matrix = self.store.collection(names.OFFER_MATRIX)
        newest = matrix.find_one({CHANGED_AT: {"$exists": True}}, {CHANGED_AT: 1, "_id": 0}, sort=[(CHANGED_AT, -1)])
        return matrix.count_documents({}), (newest or {}).get(CHANGED_AT)

    def _scorer(self, run_id: str) -> SimilarityScorer | None:
        """The run's offer vectors (its own, with what a refresh added or changed) against the offer
        matrix; None when the run has none."""
        offers, vectors = offline.run_vectors(self.store, run_id, "item")
        vectors_of = dict(zip(map(str, offers), vectors))
        vectors_of.update(zip(*self.publisher.refreshed_vectors("item", run_id)))
        if not vectors_of:
            log.warning("run %s has no offer vectors: it cannot be served", run_id)
            return None
        catalogue, details = [], {}
        projection = {"_id": 0, names.OFFER_KEY: 1, **{field: 1 for field in OFFER_DETAILS}}
        for document in self.store.collection(names.OFFER_MATRIX).find({}, projection):
            name = str(document.get(names.OFFER_KEY, ""))
            if name:
                catalogue.append(name)
                details[name] = {field: document[field] for field in OFFER_DETAILS if field in document}
        return SimilarityScorer(run_id, list(vectors_of), list(vectors_of.values()), metric=self.metric,
                                catalogue=catalogue or None, details=details)


def release_run(served: ServedRun) -> None:
    """Delete the mapped files of a run no longer served."""
    _release(served.customers, None)


def _release(customers: CustomerVectors, kept: ServedRun | None) -> None:
    """Delete the mapped files of `customers` unless the run `kept` in service still maps them."""
    if customers.mapped is not None and (kept is None or kept.customers.mapped != customers.mapped):
        customers.release()
