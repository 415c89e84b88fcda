"""What the runtime serves: the live run's offer vectors in memory, reloaded when the publish
journal changes (a publish, a rollback, or the refresh sensor's upserts), and customer vectors
looked up per request on the live collection's key index, of that same run only.

Two runs are never mixed: the in-memory scorer belongs to one run, a customer vector of any other
run is treated as absent, and a reload is skipped while the journal says a publish or refresh is
under way (the previous scorer keeps serving until the live pair is whole again).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from twotower_pipeline import publishing
from twotower_pipeline.ingest.training_frame import CHANGED_AT
from twotower_pipeline.serving.scorer import SimilarityScorer
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore

log = logging.getLogger("twotower.serving")
#: Offer-matrix fields the runtime copies into a presented document's result.
OFFER_DETAILS = ("offer_id", "price", "cost")


class NothingLive(LookupError):
    """No run is published (or its offers could not be loaded yet)."""


class LiveEmbeddings:
    """The live run's scorer, kept current by `check()` (called on a timer by the service)."""

    def __init__(self, store: MongoStore, *, metric: str = "cosine"):
        self.store = store
        self.metric = metric
        self.database = store.database(publishing.DATABASE)
        self.users = self.database[names.USER_EMBEDDINGS]  # built once: read on every request
        self.publisher = embeddings.Publisher(store, publishing.DATABASE)
        self._scorer: SimilarityScorer | None = None
        self.predictor: str | None = None  # the live run's predictor: the campaign it serves
        self._fingerprint = None
        self._lock = threading.Lock()
        self.reloads = 0

    @property
    def scorer(self) -> SimilarityScorer:
        scorer = self._scorer
        if scorer is None:
            raise NothingLive("no run is live: publish a run that passed the gate (publish_job, or the "
                              "publish sensor) before the runtime can rank offers")
        return scorer

    @property
    def current(self) -> SimilarityScorer | None:
        """The scorer being served, None before a run is live."""
        return self._scorer

    def check(self) -> bool:
        """Reload the offers if the journal changed since the last load; True when it reloaded."""
        with self._lock:
            journal = self.publisher.status()
            fingerprint = (journal.get("live_run_id"), journal.get("published_at"), *self._catalogue_version())
            if journal.get("state") != "live" or fingerprint == self._fingerprint or fingerprint[0] is None:
                return False  # nothing live yet, nothing new, or a publish or refresh under way: keep serving
            scorer = self._load(fingerprint[0])
            if scorer is None:
                return False
            run = self.store.collection(names.RUNS).find_one({"run_id": scorer.run_id}, {"predictor": 1}) or {}
            self._scorer, self.predictor, self._fingerprint = scorer, run.get("predictor"), fingerprint
            self.reloads += 1
            log.info("serving run %s: %d offers with a vector, %d catalogue offers without one (skipped: %s)",
                     scorer.run_id, len(scorer), len(scorer.skipped), scorer.skipped[:10])
            return True

    def _catalogue_version(self) -> tuple:
        """(offers, newest `updated_at`) of the offer matrix, read on its indexes: an offer added,
        changed or retired reloads the scorer (a retired offer is never shown again)."""
        matrix = self.store.collection(names.OFFER_MATRIX)
        newest = matrix.find_one({CHANGED_AT: {"$exists": True}}, {CHANGED_AT: 1, "_id": 0}, sort=[(CHANGED_AT, -1)])
        return matrix.count_documents({}), (newest or {}).get(CHANGED_AT)

    def _load(self, run_id: str) -> SimilarityScorer | None:
        items = self.database[names.ITEM_EMBEDDINGS]
        other = items.count_documents({"run_id": {"$ne": run_id}})
        if other:
            log.warning("not reloading: %d offer vectors in %s are not of run %s yet", other, items.name, run_id)
            return None
        offers, vectors = [], []
        for document in items.find({}, {"_id": 0, "offer": 1, "embedding": 1}):
            offers.append(str(document["offer"]))
            vectors.append(document["embedding"])
        if not offers:
            log.warning("run %s is live but %s holds no offer vectors", run_id, items.name)
            return None
        catalogue, details = [], {}
        projection = {"_id": 0, names.OFFER_KEY: 1, **{field: 1 for field in OFFER_DETAILS}}
        for document in self.store.collection(names.OFFER_MATRIX).find({}, projection):
            name = str(document.get(names.OFFER_KEY, ""))
            if name:
                catalogue.append(name)
                details[name] = {field: document[field] for field in OFFER_DETAILS if field in document}
        return SimilarityScorer(run_id, offers, np.asarray(vectors, dtype=np.float32), metric=self.metric,
                                catalogue=catalogue or None, details=details)

    def customer_vector(self, run_id: str, customer_id: str) -> np.ndarray | None:
        """The customer's live vector of `run_id`, or None (absent, or of another run)."""
        document = self.users.find_one(
            {"customer_id": customer_id}, {"_id": 0, "run_id": 1, "embedding": 1})
        if document is None:
            return None
        if document.get("run_id") != run_id:
            log.info("customer %s has a vector of run %s while run %s is served: not mixed", customer_id,
                     document.get("run_id"), run_id)
            return None
        return np.asarray(document["embedding"], dtype=np.float32)
