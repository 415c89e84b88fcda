"""What one `twotower serve` process holds: the live run's vectors (in memory), the challenger
runs of the running experiments (their vectors in memory too), the towers, the log journal, the
presented documents kept for `/response`, the campaigns' accepted offers and the Dagster client of
the workbench. A request reads memory only; the database is read by the reload
thread, by `/response` for a request older than the ones kept, and by the sidecar for a customer
that has no vector."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Annotated

import bson
import numpy as np
from bson.codec_options import CodecOptions
from fastapi import Depends, HTTPException, Request

from twotower_pipeline import experiments
from twotower_pipeline.ingest.context import context_row
from twotower_pipeline.ingest.runtime_logs import ensure_source_indexes
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.accepted import AcceptedOffers
from twotower_pipeline.serving.explore import Explorer
from twotower_pipeline.serving.journal import JournalFull, LogJournal
from twotower_pipeline.serving.live import LiveEmbeddings, ServedRun, release_run
from twotower_pipeline.serving.schemas import InvocationRequest
from twotower_pipeline.serving.settings import CampaignSettings, ServeSettings
from twotower_pipeline.serving.towers import TowerService
from twotower_pipeline.serving.vectors import clear_cache
from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore, redact_text
from twotower_pipeline.store.slices import SlicedCollection

log = logging.getLogger("twotower.serving")
#: Presented documents kept in memory for `/response` (older ones are looked up by uuid), as BSON
#: bytes: one untracked object each, where 50,000 documents as dicts are a million objects that
#: every full garbage collection of the service would walk.
RECENT_PRESENTED = 50_000
_PRESENTED_CODEC = CodecOptions(tz_aware=True)
DEFAULT_POLICY = CampaignSettings()
#: The share of its cap past which the journal fails the health check (appends are refused at the cap).
JOURNAL_FULL_SHARE = 0.95


class Runtime:
    """The state of one service process, started and stopped with the application."""

    def __init__(self, store: MongoStore, settings: ServeSettings):
        self.store = store
        self.settings = settings
        self.live = LiveEmbeddings(store, metric=settings.metric, memory_budget_bytes=settings.memory_budget_bytes,
                                   cache_dir=settings.vector_cache_dir)
        self.towers = TowerService(store)
        self.journal = LogJournal(store, Path(settings.journal_dir), cap_bytes=settings.journal_cap_bytes,
                                  batch_size=settings.log_batch, fsync=settings.journal_fsync)
        self.explorer = Explorer(settings.explore_seed)
        self.jobs = workbench.DagsterJobs(store, settings.dagster_url) if settings.dagster_url else None
        #: campaign -> its running experiment and the challenger run as served (`experiments`)
        self.experiments: dict[str, tuple[experiments.Experiment, ServedRun]] = {}
        #: campaign -> its customers' accepted offers (campaigns that leave them out only)
        self.accepted: dict[str, AcceptedOffers] = {}
        self.recent: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._reloader: threading.Thread | None = None
        self._sidecar_client = None
        self.reload_error: str | None = None
        self.counts = collections.Counter()

    def start(self) -> None:
        ensure_source_indexes(self.store)
        clear_cache(self.settings.vector_cache_dir)
        unshipped = self.journal.open()
        # requests answered before a restart and not in MongoDB yet: the newest are kept for /response
        presented = [document for location, document in unshipped if location == names.PRESENTED]
        for document in presented[-RECENT_PRESENTED:]:
            self.remember(document["uuid"], bson.encode(document))
        self.reload()
        for location, document in unshipped:
            if location == names.RESPONSES:
                self._note_accepts(document)
        # what start-up built (the modules, the app, the first run's arrays) stays for the
        # process's life: frozen out of the collector's reach, a full collection walks only what
        # requests leave behind, not a pause of a few hundred milliseconds across every request
        gc.collect()
        gc.freeze()
        self._reloader = threading.Thread(target=self._reload_loop, name="twotower-reload", daemon=True)
        self._reloader.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reloader:
            self._reloader.join(30)
        self.journal.close()
        if self._sidecar_client is not None:
            self._sidecar_client.close()

    # --- what is served, kept current by the reload thread -------------------------------------
    def reload(self) -> None:
        """Load what changed: the live run's vectors, the running experiments' challenger runs, and
        the accepted offers of the campaigns that leave them out. A failure is logged and reported
        by /health; the service keeps serving."""
        try:
            self.live.check()
            served = self.live.current
            self._load_experiments(served)
            for campaign in self.campaigns(served):
                if self.policy(campaign).exclude_accepted:
                    self._load_accepted(campaign)
            self.reload_error = None
        except Exception as error:  # noqa: BLE001 - the thread must outlive any one failure
            self.reload_error = f"{type(error).__name__}: {redact_text(str(error), self.store.uri)}"
            log.error("reloading what is served failed: %s", self.reload_error)

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.settings.reload_s):
            self.reload()

    def _load_experiments(self, live: ServedRun | None) -> None:
        """The running experiments, each with its challenger's vectors in memory beside the live
        run's (a challenger that became live, or whose vectors cannot be loaded, is not split off:
        its campaign is served by the live run, and the reason logged)."""
        current, loaded = self.experiments, {}
        try:
            for experiment in experiments.running(self.store):
                if live is not None and experiment.challenger_run_id == live.run_id:
                    continue  # promoted: every customer gets the live run
                earlier = current.get(experiment.campaign)
                same_run = earlier[1] if earlier and earlier[1].run_id == experiment.challenger_run_id else None
                challenger = self.live.challenger(experiment.challenger_run_id, same_run)
                if challenger is None:
                    log.warning("experiment %s: challenger run %s has no kept vectors; its campaign is served by "
                                "the live run", experiment.name, experiment.challenger_run_id)
                    continue
                loaded[experiment.campaign] = (experiment, challenger)
        except Exception:
            _release_unless_kept(loaded, current)  # what this failed reload built is not served: its files go
            raise
        self.experiments = loaded
        _release_unless_kept(current, loaded)

    def assigned(self, served: ServedRun, campaign: str, customer_id: str) -> tuple[ServedRun, str | None, str]:
        """(the run that serves this customer, the experiment, the arm): the challenger for the
        customers an experiment of the campaign assigns to it, the live run otherwise."""
        running = self.experiments.get(campaign)
        if running is None:
            return served, None, experiments.LIVE
        experiment, challenger = running
        arm = experiment.arm_of(customer_id)
        return (challenger if arm == experiments.CHALLENGER else served), experiment.name, arm

    def _load_accepted(self, campaign: str) -> None:
        earlier = self.accepted.get(campaign)
        days = tuple(sorted((SlicedCollection(self.store, names.FLATTEN).committed_write_ids() or {}).items()))
        if earlier is not None and earlier.version == days:
            return
        table = AcceptedOffers.load(self.store, campaign)
        self.accepted[campaign] = table.carry_recent(earlier) if earlier is not None else table

    def campaigns(self, served: ServedRun | None) -> set[str]:
        """The campaigns this runtime answers: the live run's predictor and those configured."""
        return ({served.predictor} if served is not None and served.predictor else set()) | set(self.settings.campaigns)

    def policy(self, campaign: str) -> CampaignSettings:
        return self.settings.campaigns.get(campaign, DEFAULT_POLICY)

    def accepted_by(self, campaign: str, customer_id: str) -> list[str]:
        table = self.accepted.get(campaign)
        if table is None:
            self.counts["exclusions_unavailable"] += 1
            return []
        return table.of(customer_id)

    # --- the customer vector --------------------------------------------------------------------
    def held_vector(self, served: ServedRun, request: InvocationRequest) -> np.ndarray | None:
        """The customer's vector in memory, unless the request's context is to be embedded by the
        sidecar; None sends the request to `embedded_vector` (when there is a sidecar)."""
        if self.settings.sidecar and self.settings.context_vectors and request.in_params:
            return None
        return served.customers.get(request.customer)

    def embedded_vector(self, served: ServedRun, request: InvocationRequest) -> np.ndarray:
        """The sidecar's vector of the customer with the request's context (one call, or this
        process's towers): blocking, for the thread pool."""
        if self.settings.sidecar == "local":
            return self.towers.customer_vector(served.run_id, request.customer, request.in_params)
        return self._remote_vector(served.run_id, {"customer_id": request.customer, **context_row(request.in_params)})

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

    # --- the logs ---------------------------------------------------------------------------------
    def log(self, location: str, document: dict) -> bytes:
        """Append a log document to the journal before the request is answered (it then survives a
        kill -9 of the service); its BSON. 503 with Retry-After when the journal is at its cap."""
        try:
            return self.journal.append(location, document)
        except JournalFull as error:
            self.counts["journal_full"] += 1
            raise HTTPException(503, f"the log journal is full ({error}): MongoDB is not taking the logs; "
                                     "retry later", headers={"Retry-After": str(error.retry_after_s)}) from None

    def log_presented(self, document: dict) -> None:
        self.remember(document["uuid"], self.log(names.PRESENTED, document))

    def log_response(self, presented: dict, accepted: list[str], channel: str | None) -> None:
        """The response document, keyed by the request and what was accepted: a retried `/response`
        is stored once, a later response with other offers is stored too."""
        request_id = presented["uuid"]
        digest = hashlib.sha256(json.dumps([sorted(accepted), channel]).encode()).hexdigest()[:16]
        document = {
            "_id": f"{request_id}:{digest}", "uuid": request_id, "predictor": presented.get("predictor"),
            "date_log": now(),
            "response": {"offers_accepted": [{"offer_name": name, "offer": name} for name in accepted],
                         "channel_name": channel},
            "response_log": {k: v for k, v in presented.items() if k != "_id"},
        }
        self.log(names.RESPONSES, document)
        self._note_accepts(document)

    def _note_accepts(self, response: dict) -> None:
        table = self.accepted.get(response.get("predictor"))
        if table is not None:
            customer = ((response.get("response_log") or {}).get("api_params") or {}).get("customer")
            offers = [a["offer_name"] for a in (response.get("response") or {}).get("offers_accepted") or []]
            if customer is not None and offers:
                table.add(str(customer), offers)

    # --- presented documents, for /response -------------------------------------------------------
    def remember(self, request_id: str, encoded: bytes) -> None:
        """Keep a presented document (its BSON) for `/response`."""
        with self._recent_lock:
            self.recent[request_id] = encoded
            while len(self.recent) > RECENT_PRESENTED:
                self.recent.popitem(last=False)

    def recent_presented(self, request_id: str) -> dict | None:
        """The presented document of a recent request, from memory."""
        with self._recent_lock:
            encoded = self.recent.get(request_id)
        return None if encoded is None else bson.decode(encoded, codec_options=_PRESENTED_CODEC)

    def stored_presented(self, request_id: str) -> dict | None:
        """The presented document of an older request, from MongoDB (blocking, for the thread pool)."""
        found = self.store.collection(names.PRESENTED).find_one({"uuid": request_id})
        if found is None and self.journal.stats()["documents_pending"] > RECENT_PRESENTED:
            # older than what is kept in memory and maybe still in the journal, not in MongoDB yet
            raise HTTPException(503, f"request {request_id} is not in MongoDB yet: the log journal is behind; "
                                     "retry later", headers={"Retry-After": "5"})
        return found

    # --- health -----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        """(healthy, report): failing when the journal's shipper died or the journal is full."""
        journal = self.journal.stats()
        problems = []
        if not self.journal.healthy:
            problems.append("the log shipper is not running: logs are not reaching MongoDB")
        if journal["bytes"] >= JOURNAL_FULL_SHARE * journal["cap_bytes"]:
            problems.append(f"the log journal holds {journal['bytes']:,} of its {journal['cap_bytes']:,} bytes: "
                            "requests are refused once it is full")
        served = self.live.current
        return not problems, {
            "status": "failing" if problems else "ok", "problems": problems,
            "live_run": served.summary() if served else None, "reload_error": self.reload_error,
            "journal": journal, "requests_without_vector": self.counts["no_vector"],
            "campaigns": {c: dataclasses.asdict(self.policy(c)) for c in sorted(self.campaigns(served))},
            "experiments": [{"experiment": e.name, "campaign": e.campaign, "share": e.share,
                             "challenger_run": challenger.summary()} for e, challenger in self.experiments.values()],
        }


def _release_unless_kept(runs: dict, kept: dict) -> None:
    """Release the challenger runs of `runs` whose vectors `kept` does not serve."""
    serving = {id(served.customers) for _, served in kept.values()}
    for _, served in runs.values():
        if id(served.customers) not in serving:
            release_run(served)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def current_runtime(request: Request) -> Runtime:
    """The application's runtime, for a route's parameters (`ServedRuntime`); `async`, so that
    FastAPI resolves it on the event loop, not with a hop to its thread pool."""
    return request.app.state.runtime


ServedRuntime = Annotated[Runtime, Depends(current_runtime)]
