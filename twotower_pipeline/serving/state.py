"""What one `twotower serve` process holds: the live run's vectors, the towers, the log writer,
the presented documents kept for `/response`, and the Dagster client of the workbench."""

from __future__ import annotations

import collections
import datetime as dt
import gc
import logging
import threading
from typing import Annotated

import bson
import numpy as np
from bson.codec_options import CodecOptions
from fastapi import Depends, HTTPException, Request
from pymongo.errors import PyMongoError

from twotower_pipeline.ingest.context import context_row
from twotower_pipeline.ingest.runtime_logs import ensure_source_indexes
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.live import LiveEmbeddings
from twotower_pipeline.serving.logs import LogWriter
from twotower_pipeline.serving.schemas import InvocationRequest
from twotower_pipeline.serving.settings import ServeSettings
from twotower_pipeline.serving.towers import TowerService
from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore, redact_text

log = logging.getLogger("twotower.serving")
#: Presented documents kept in memory for `/response` (older ones are looked up by uuid), as BSON
#: bytes: one untracked object each, where 50,000 documents as dicts are a million objects that
#: every full garbage collection of the service would walk.
RECENT_PRESENTED = 50_000
_PRESENTED_CODEC = CodecOptions(tz_aware=True)


class Runtime:
    """The state of one service process, started and stopped with the application."""

    def __init__(self, store: MongoStore, settings: ServeSettings):
        self.store = store
        self.settings = settings
        self.live = LiveEmbeddings(store, metric=settings.metric)
        self.towers = TowerService(store)
        self.logs: LogWriter | None = None
        self.jobs = workbench.DagsterJobs(store, settings.dagster_url) if settings.dagster_url else None
        self.recent: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._reloader: threading.Thread | None = None
        self._sidecar_client = None
        self.counts = collections.Counter()

    def start(self) -> None:
        ensure_source_indexes(self.store)
        self.logs = LogWriter(self.store, batch_size=self.settings.log_batch)
        self._check()
        # what start-up built (the modules, the app, the first scorer) stays for the process's
        # life: frozen out of the collector's reach, a full collection walks only what requests
        # leave behind, not a pause of a few hundred milliseconds across every request in flight
        gc.collect()
        gc.freeze()
        self._reloader = threading.Thread(target=self._reload_loop, name="twotower-reload", daemon=True)
        self._reloader.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reloader:
            self._reloader.join(10)
        if self.logs:
            self.logs.close()
        if self._sidecar_client is not None:
            self._sidecar_client.close()

    def _check(self) -> None:
        try:
            self.live.check()
        except PyMongoError as error:
            log.error("reloading the live embeddings failed: %s", redact_text(str(error), self.store.uri))

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.settings.reload_s):
            self._check()

    # --- the customer vector ------------------------------------------------------------------
    def customer_vector(self, run_id: str, request: InvocationRequest) -> tuple[np.ndarray | None, str]:
        """(vector, where it came from): the request's context through the sidecar when there is
        both, else the stored vector, else the sidecar (one call), else None."""
        sidecar = self.settings.sidecar
        if not (sidecar and self.settings.context_vectors and request.in_params):
            stored = self.live.customer_vector(run_id, request.customer)
            if stored is not None or not sidecar:
                return stored, "stored"
        if sidecar == "local":
            return self.towers.customer_vector(run_id, request.customer, request.in_params), "sidecar"
        return self._remote_vector(run_id, {"customer_id": request.customer, **context_row(request.in_params)}), \
            "sidecar"

    def _remote_vector(self, run_id: str, row: dict) -> np.ndarray:
        import httpx
        if self._sidecar_client is None:
            headers = {"X-API-Key": self.settings.runtime_key} if self.settings.runtime_key else {}
            self._sidecar_client = httpx.Client(base_url=self.settings.sidecar.rstrip("/"), timeout=5.0,
                                                headers=headers)
        try:
            reply = self._sidecar_client.post("/pytorch/invocations", json={
                "model_id": f"two_tower_user_{run_id}", "instances": [{**row, "tower": "user"}]})
        except httpx.HTTPError as error:
            raise HTTPException(502, f"the sidecar at {self.settings.sidecar} did not answer "
                                     f"({type(error).__name__})") from None
        if reply.status_code != 200:
            raise HTTPException(502, f"the sidecar answered {reply.status_code} for customer {row['customer_id']}")
        return np.asarray(reply.json()["predictions"][0]["embedding"], dtype=np.float32)

    # --- presented documents, for /response -------------------------------------------------------
    def remember(self, document: dict) -> None:
        encoded = bson.encode(document)
        with self._recent_lock:
            self.recent[document["uuid"]] = encoded
            while len(self.recent) > RECENT_PRESENTED:
                self.recent.popitem(last=False)

    def presented(self, request_id: str) -> dict | None:
        """The presented document of a request (as `logging.ecosystemruntime` holds it, without `_id`)."""
        with self._recent_lock:
            encoded = self.recent.get(request_id)
        if encoded is not None:
            return bson.decode(encoded, codec_options=_PRESENTED_CODEC)
        return self.store.collection(names.PRESENTED).find_one({"uuid": request_id}, {"_id": 0})


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def current_runtime(request: Request) -> Runtime:
    """The application's runtime, for a route's parameters (`ServedRuntime`)."""
    return request.app.state.runtime


ServedRuntime = Annotated[Runtime, Depends(current_runtime)]
