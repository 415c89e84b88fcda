"""`twotower serve`: the runtime endpoints (SPEC §7), the PyTorch sidecar (§8) and the workbench
API (§9) in one FastAPI application.

Every request body is a pydantic model: ids are strings (a document such as `{"$gt": ""}` in
their place is refused before any query), sizes and `numberoffers` are bounded, unknown fields are
refused, and a client mistake is answered 4xx with the reason. Bodies over `max_body_bytes` are
refused with 413. With an API key set (required for any non-loopback bind) every endpoint but the
OpenAPI schema asks for it in the `X-API-Key` header.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import re
import secrets
import threading
import uuid as uuid_lib
from typing import Annotated, Any, Literal, Optional, Union

import bson
import numpy as np
from bson.codec_options import CodecOptions
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator
from pymongo.errors import PyMongoError

from twotower_pipeline import offline
from twotower_pipeline.ingest.context import KEY_PATTERN, MAX_KEY_LENGTH, MAX_KEYS, MAX_TEXT_LENGTH, context_row
from twotower_pipeline.ingest.runtime_logs import ensure_source_indexes
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.live import LiveEmbeddings, NothingLive
from twotower_pipeline.serving.logs import LogWriter
from twotower_pipeline.serving.towers import TowerService, parse_model_id
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore, redact_text

log = logging.getLogger("twotower.serving")

#: Most offers one request may ask for, and most feature rows one sidecar request may send.
MAX_NUMBER_OFFERS = 100
MAX_INSTANCES = 1000
#: Presented documents kept in memory for `/response` (older ones are looked up by uuid), as BSON
#: bytes: one untracked object each, where 50,000 documents as dicts are a million objects that
#: every full garbage collection of the service would walk.
RECENT_PRESENTED = 50_000
_PRESENTED_CODEC = CodecOptions(tz_aware=True)
DAGSTER_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Id = Annotated[StrictStr, Field(min_length=1, max_length=200)]
#: A request's context follows the flatten's rule (`ingest.context`): what it would drop is refused here.
ContextKey = Annotated[StrictStr, Field(min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)]
Scalar = Union[StrictBool, StrictInt, StrictFloat, Annotated[StrictStr, Field(max_length=MAX_TEXT_LENGTH)], None]


@dataclasses.dataclass
class ServeSettings:
    """What `twotower serve` is configured with (flags and environment, see the CLI)."""

    api_key: str | None = None
    metric: Literal["cosine", "dot"] = "cosine"
    #: A customer without a stored vector: None (cannot be ranked), "local" (this process's
    #: towers) or the URL of a sidecar (`POST {url}/pytorch/invocations`, one call per request).
    sidecar: str | None = None
    #: Requests with `in_params` get a vector computed with that context (needs a sidecar).
    context_vectors: bool = True
    dagster_url: str | None = None
    campaigns: tuple[str, ...] = ()
    reload_s: float = 5.0
    max_body_bytes: int = 256 * 1024
    log_batch: int = 500


# --- request and response models -----------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InvocationRequest(Strict):
    campaign: Id
    subcampaign: Optional[Id] = None
    channel: Id = "default"
    customer: Id
    numberoffers: StrictInt = Field(default=1, ge=1, le=MAX_NUMBER_OFFERS)
    userid: Optional[Id] = None
    in_params: dict[ContextKey, Scalar] = Field(default_factory=dict, max_length=MAX_KEYS)
    eligible_offers: Optional[list[Id]] = Field(default=None, max_length=10_000, description=(
        "Ours: rank only these offers (e.g. the customer's eligible ones); default: the whole offer matrix."))

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data):
        """The documentation spells it `sub-campaign` too."""
        if isinstance(data, dict) and "sub-campaign" in data:
            data = dict(data)
            spelled = data.pop("sub-campaign")
            if data.get("subcampaign") is None:
                data["subcampaign"] = spelled
        return data


class OfferResult(BaseModel):
    offer: str
    offer_name: str
    score: float


class RankedOffer(BaseModel):
    rank: int
    result: OfferResult


class InvocationResponse(BaseModel):
    final_result: list[RankedOffer]
    explore: int
    uuid: str


class AcceptedOffer(Strict):
    offer_name: Id


class ResponseRequest(Strict):
    uuid: Id
    offers_accepted: list[AcceptedOffer] = Field(max_length=MAX_NUMBER_OFFERS)
    channel_name: Optional[Id] = None


class ResponseAnswer(BaseModel):
    uuid: str
    offers_accepted: int
    logged: bool


class Instance(BaseModel):
    model_config = ConfigDict(extra="allow")
    customer_id: Optional[Id] = None
    offer: Optional[Id] = None
    price: Optional[float] = None
    rank: Optional[float] = None
    score: Optional[float] = None
    tower: Literal["user", "item"] = "user"

    @model_validator(mode="after")
    def _scalars(self):
        for key, value in (self.model_extra or {}).items():
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$", key):
                raise ValueError(f"feature name {key!r} is not a plain name (letters, digits, '_', '-')")
            if not (value is None or isinstance(value, (bool, int, float)) or
                    (isinstance(value, str) and len(value) <= 200)):
                raise ValueError(f"feature {key!r} must be a number, a boolean or a string of up to 200 characters")
        return self


class PytorchInvocation(Strict):
    model_id: Id
    instances: list[Instance] = Field(min_length=1, max_length=MAX_INSTANCES)


class Prediction(BaseModel):
    prediction: list[float]
    embedding: list[float]


class PytorchPredictions(BaseModel):
    predictions: list[Prediction]
    final_result: list[Prediction]
    framework: str


class TrainSource(Strict):
    database: Id = "logging"
    collection: Id = "ecosystemruntime_flatten"
    pipeline: list[dict[str, Any]] = Field(default_factory=list, max_length=0, description=(
        "Not supported (the training slice is a predictor and a window): must be empty."))
    limit: Optional[StrictInt] = Field(default=None, ge=1)


class TrainData(Strict):
    source: TrainSource = Field(default_factory=TrainSource)
    target_column: Literal["accepted"] = "accepted"
    feature_columns: list[Id] = Field(default_factory=list, max_length=200)
    categorical_columns: list[Id] = Field(default_factory=list, max_length=200)
    train_test_split: float = Field(default=0.2, gt=0, lt=1)
    random_state: StrictInt = 42


class PytorchTrain(Strict):
    model_id: Optional[Id] = None
    model_type: Literal["two_tower"] = "two_tower"
    problem_type: Literal["binary_classification"] = "binary_classification"
    data: TrainData = Field(default_factory=TrainData)
    hyperparameters: dict[Id, Any] = Field(max_length=100, description=(
        "SPEC §4 parameters; `predictor` is required, `from_date` / `to_date` optional."))


class BatchScoreRequest(Strict):
    run_id: Id
    top_k: StrictInt = Field(default=10, ge=1, le=1000)
    max_users: Optional[StrictInt] = Field(default=5000, ge=1)
    scores_collection: Literal["two_tower_scores"] = "two_tower_scores"


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer: the reason, or for a malformed body the list of what is wrong where."""

    detail: Union[str, list[dict[str, Any]]]


ERRORS = {status: {"model": ErrorAnswer} for status in (400, 401, 404, 409, 413, 422, 502, 503)}


class ConceptTestRequest(Strict):
    run_id: Id
    customer_id: Id
    offers: Optional[list[Id]] = Field(default=None, max_length=10_000)


# --- the runtime ---------------------------------------------------------------------------------
class Runtime:
    """The state one service process holds: the live embeddings, the towers, the log writer."""

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
            headers = {"X-API-Key": self.settings.api_key} if self.settings.api_key else {}
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- the ASGI guards -----------------------------------------------------------------------------
class Guard:
    """Body size cap and API key, as plain ASGI (no per-request task or body copy)."""

    OPEN_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect")

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.settings.api_key and scope["path"] not in self.OPEN_PATHS:
            given = headers.get(b"x-api-key", b"").decode("latin-1")
            if not secrets.compare_digest(given, self.settings.api_key):
                return await _reject(send, 401, "missing or wrong X-API-Key header")
        limit = self.settings.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _reject(send, 400, "Content-Length is not a number")
            if int(length) > limit:
                return await _reject(send, 413, f"request body over {limit} bytes")
            return await self.app(scope, receive, send)
        # no length given (chunked): read the body up to the cap, then hand it on
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                return await _reject(send, 413, f"request body over {limit} bytes")
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


async def _reject(send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --- the application -----------------------------------------------------------------------------
def create_app(store: MongoStore, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    runtime = Runtime(store, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title="twotower_pipeline runtime", version="1", lifespan=lifespan, responses=ERRORS, description=(
        "Ranks offers with the live two-tower embeddings (SPEC §7), serves the towers (§8) and the "
        "workbench API (§9)."))
    app.state.runtime = runtime

    @app.exception_handler(PyMongoError)
    async def _storage_unavailable(_request: Request, error: PyMongoError):
        log.error("MongoDB error: %s", redact_text(str(error), store.uri))
        return JSONResponse({"detail": f"storage unavailable ({type(error).__name__})"}, status_code=503)

    # --- runtime (SPEC §7) ------------------------------------------------------------------------
    @app.post("/invocations", response_model=InvocationResponse, tags=["runtime"],
              responses={404: {"description": "unknown campaign, or a customer without a vector"},
                         503: {"description": "nothing is live yet"}})
    def invocations(request: InvocationRequest):
        """Rank the offer matrix for one customer with the live run; log the presented document."""
        try:
            scorer = runtime.live.scorer
        except NothingLive as error:
            raise HTTPException(503, str(error)) from None
        served = {runtime.live.predictor, *settings.campaigns} - {None}
        if request.campaign not in served:
            raise HTTPException(404, f"unknown campaign {request.campaign!r}: this runtime serves {sorted(served)}")
        try:
            vector, source = runtime.customer_vector(scorer.run_id, request)
        except LookupError:  # the local sidecar found no stored towers of the live run
            raise HTTPException(404, f"run {scorer.run_id} has no stored towers to embed customer "
                                     f"{request.customer!r} with") from None
        if vector is None:
            runtime.counts["no_vector"] += 1
            raise HTTPException(404, f"customer {request.customer!r} has no vector in run {scorer.run_id} and no "
                                     "sidecar is configured: the offers cannot be ranked")
        ranked = scorer.rank(vector, request.numberoffers, request.eligible_offers)
        request_id = str(uuid_lib.uuid4())
        final_result = []
        for position, (offer, score) in enumerate(zip(ranked.offers, ranked.scores), start=1):
            final_result.append({"rank": position, "result": {"offer": offer, "offer_name": offer, "score": score}})
        document = {
            "uuid": request_id, "predictor": request.campaign, "date_log": _now(), "run_id": scorer.run_id,
            "api_params": {"customer": request.customer, "channel": request.channel, "campaign": request.campaign,
                           "subcampaign": request.subcampaign, "numberoffers": request.numberoffers,
                           "userid": request.userid},
            "params": [{"key": "customer", "value": request.customer}],
            "in_params": dict(request.in_params),
            "vector_source": source,
            "final_result": [{"rank": r["rank"], "result": {
                **r["result"], "final_score": r["result"]["score"], **scorer.details.get(r["result"]["offer"], {})}}
                for r in final_result],
            "explore": 0,
        }
        runtime.remember(document)
        runtime.logs.write(names.PRESENTED, document)
        return {"final_result": final_result, "explore": 0, "uuid": request_id}

    @app.post("/response", response_model=ResponseAnswer, tags=["runtime"],
              responses={404: {"description": "unknown uuid"}, 422: {"description": "an offer that was not shown"}})
    def response(request: ResponseRequest):
        """Log which of a presented request's offers the customer accepted."""
        presented = runtime.presented(request.uuid)
        if presented is None:
            raise HTTPException(404, f"unknown uuid {request.uuid!r}: no presented request has it")
        shown = {item["result"]["offer_name"] for item in presented.get("final_result", [])}
        accepted = [offer.offer_name for offer in request.offers_accepted]
        not_shown = [name for name in accepted if name not in shown]
        if not_shown:
            raise HTTPException(422, f"offers {not_shown} were not presented in request {request.uuid}")
        channel = request.channel_name or presented.get("api_params", {}).get("channel")
        runtime.logs.write(names.RESPONSES, {
            "uuid": request.uuid, "predictor": presented.get("predictor"), "date_log": _now(),
            "response": {"offers_accepted": [{"offer_name": name, "offer": name} for name in accepted],
                         "channel_name": channel},
            "response_log": {k: v for k, v in presented.items() if k != "_id"},
        })
        return {"uuid": request.uuid, "offers_accepted": len(accepted), "logged": True}

    # --- PyTorch sidecar (SPEC §8) ----------------------------------------------------------------
    @app.post("/pytorch/invocations", response_model=PytorchPredictions, tags=["pytorch"],
              responses={404: {"description": "unknown model"}})
    def pytorch_invocations(request: PytorchInvocation):
        """Embed feature rows with a stored run's user or item tower."""
        try:
            tower, run_id = parse_model_id(request.model_id)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        rows = [instance.model_dump(exclude_none=True) for instance in request.instances]
        towers = [row.pop("tower", "user") for row in rows]
        if any(t != tower for t in towers):
            raise HTTPException(422, f"model {request.model_id} is the {tower} tower: every instance must have "
                                     f"tower {tower!r} (got {sorted(set(towers))})")
        key = "customer_id" if tower == "user" else "offer"
        missing = [i for i, row in enumerate(rows) if key not in row]
        if missing:
            raise HTTPException(422, f"instances {missing[:10]} have no {key} (the {tower} tower's key)")
        try:
            vectors = runtime.towers.embed(run_id, tower, rows)
        except LookupError:
            raise HTTPException(404, f"unknown model {request.model_id}: run {run_id} has no stored towers") from None
        predictions = [{"prediction": v, "embedding": v} for v in vectors.astype(float).tolist()]
        return {"predictions": predictions, "final_result": predictions, "framework": "pytorch"}

    @app.get("/pytorch/models", tags=["pytorch"])
    def pytorch_models(limit: int = Query(100, ge=1, le=1000)):
        """The stored runs' towers, newest first."""
        live = runtime.live.current.run_id if runtime.live.current else None
        models = []
        for run in store.collection(names.RUNS).find({}, {"_id": 0}).sort("updated_at", -1).limit(limit):
            for tower in ("user", "item"):
                models.append({"model_id": run.get(f"{tower}_model_id"), "run_id": run["run_id"], "tower": tower,
                               "predictor": run.get("predictor"), "embedding_dim": run.get("embedding_dim"),
                               "updated_at": run.get("updated_at"), "live": run["run_id"] == live})
        return {"models": models, "framework": "pytorch"}

    @app.get("/pytorch/health", tags=["pytorch"])
    def pytorch_health():
        store.client.admin.command("ping")
        return {"status": "ok", "framework": "pytorch", "models_loaded": runtime.towers.loaded}

    @app.post("/pytorch/train", tags=["pytorch"], status_code=202,
              responses={503: {"description": "no Dagster webserver configured or reachable"}})
    def pytorch_train(request: PytorchTrain):
        """Launch a training run (Dagster's `retrain_job`); the run id and model id are known at once."""
        source = f"{request.data.source.database}.{request.data.source.collection}"
        if source != names.FLATTEN:
            raise HTTPException(422, f"data.source must be {names.FLATTEN} (the flatten collection), not {source}")
        parameters = {"validation_split": request.data.train_test_split, "seed": request.data.random_state,
                      **request.hyperparameters}
        if request.data.categorical_columns:
            parameters.setdefault("categorical_columns", request.data.categorical_columns)
        launched = _launch_training(parameters)
        run_id = launched["run_id"]
        return {"run_id": run_id, "status": "STARTED", "model_id": f"two_tower_user_{run_id}",
                "item_model_id": f"two_tower_item_{run_id}", "metrics": {"user_auc": None, "item_auc": None},
                "rows_total": None, "job_id": launched["job_id"]}

    def _jobs() -> workbench.DagsterJobs:
        if runtime.jobs is None:
            raise HTTPException(503, "no Dagster webserver configured: start `twotower serve` with --dagster-url "
                                     "(or TWOTOWER_DAGSTER_URL) pointing at `dagster dev`")
        return runtime.jobs

    def _launch_training(parameters: dict) -> dict:
        from twotower_pipeline.defs.jobs import RetrainConfig
        from twotower_pipeline.runs import new_run_id
        import pydantic

        parameters = {"run_id": new_run_id(), **parameters}
        unknown = sorted(set(parameters) - set(RetrainConfig.model_fields))
        if unknown:
            raise HTTPException(422, f"unknown training parameters {unknown}: the parameters are "
                                     f"{sorted(RetrainConfig.model_fields)}")
        try:
            config = RetrainConfig(**parameters)
        except (pydantic.ValidationError, ValueError) as error:
            raise HTTPException(422, _validation_text(error)) from None
        run_config = config.model_dump(exclude_none=True)  # the run id was checked by the config
        try:
            job_id = _jobs().launch("train", "retrain_job", run_config, run_id=run_config["run_id"], request=run_config)
        except workbench.LaunchError as error:
            raise HTTPException(503, str(error)) from None
        return {"job_id": job_id, "run_id": run_config["run_id"]}

    # --- workbench (SPEC §9) ----------------------------------------------------------------------
    prefix = "/api/v1/algorithms/two-tower"

    @app.get(f"{prefix}/health", tags=["workbench"])
    def health():
        store.client.admin.command("ping")
        scorer = runtime.live.current
        return {"status": "ok", "mongodb": "ok", "live_run_id": scorer.run_id if scorer else None,
                "offers": len(scorer) if scorer else 0, "skipped_offers": len(scorer.skipped) if scorer else 0,
                "requests_without_vector": runtime.counts["no_vector"],
                "log_documents_written": runtime.logs.written if runtime.logs else 0,
                "log_documents_pending": runtime.logs.pending if runtime.logs else 0,
                "dagster": runtime.jobs.url if runtime.jobs else None}

    @app.get(f"{prefix}/predictors", tags=["workbench"])
    def list_predictors():
        return {"predictors": workbench.predictors(store)}

    @app.get(f"{prefix}/predictor-date-bounds", tags=["workbench"], responses={404: {"description": "no rows"}})
    def date_bounds(predictor: Annotated[str, Query(min_length=1, max_length=200)]):
        bounds = workbench.predictor_date_bounds(store, predictor)
        if not bounds["rows"]:
            raise HTTPException(404, f"predictor {predictor!r} has no rows in {names.FLATTEN}")
        return bounds

    @app.post(f"{prefix}/train", tags=["workbench"], status_code=202)
    def train(parameters: dict[Id, Any]):
        """Launch `retrain_job` with SPEC §4 parameters (flat: predictor, from_date, to_date, epochs, ...)."""
        return _launch_training(parameters)

    @app.post(f"{prefix}/batch-score", tags=["workbench"], status_code=202)
    def batch_score(request: BatchScoreRequest):
        """Launch the batch scoring of a gated run (`score_fanout_job`, published when every shard is in)."""
        try:
            embeddings.check_run_id(request.run_id)
            offline.require_gate(store, request.run_id)
        except (ValueError, offline.GateError) as error:
            raise HTTPException(409 if isinstance(error, offline.GateError) else 422, str(error)) from None
        shard_config = {"run_id": request.run_id, "top_k": request.top_k, "max_users": request.max_users}
        run_config = {"ops": {"score_shard": {"config": shard_config}, "scored": {"config": {"publish": True}}}}
        try:
            job_id = _jobs().launch("batch_score", "score_fanout_job", run_config, run_id=request.run_id,
                                    request=request.model_dump())
        except workbench.LaunchError as error:
            raise HTTPException(503, str(error)) from None
        return {"job_id": job_id, "run_id": request.run_id}

    @app.post(f"{prefix}/concept-test", tags=["workbench"])
    def concept_test(request: ConceptTestRequest):
        return offline.concept_test(store, request.run_id, request.customer_id, request.offers)

    @app.get("/api/v1/jobs/{job_id}", tags=["workbench"], responses={404: {"description": "unknown job"}})
    def job_status(job_id: Annotated[str, Path(pattern=DAGSTER_RUN_ID.pattern)]):
        try:
            answer = _jobs().status(job_id)
        except workbench.LaunchError as error:
            raise HTTPException(503, str(error)) from None
        if answer is None:
            raise HTTPException(404, f"unknown job {job_id}")
        return answer

    app.add_middleware(Guard, settings=settings)
    return app


def _validation_text(error) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors())
    return str(error)
