"""The workbench API (SPEC §9) and the sidecar's `POST /pytorch/train` (§8): what reads the
pipeline's state and what launches Dagster runs (training, batch scoring).

A launch is checked first (422/409), then its `Idempotency-Key` reserved, then the cap on runs not
finished checked (429) and the run launched; the service names every run (a client's `run_id`
could overwrite a stored run's towers under the live run's vectors)."""

from __future__ import annotations

from typing import Annotated, Callable, Optional

from fastapi import APIRouter, Header, HTTPException, Path, Query, Response

from twotower_pipeline import experiments, offline
from twotower_pipeline.parameters import RetrainParameters
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.schemas import (JOB_ID, BatchScoreRequest, ConceptTestRequest, ExperimentStart,
                                               ExperimentStop, PytorchTrain, TrainParameters)
from twotower_pipeline.serving.state import Runtime, ServedRuntime
from twotower_pipeline.store import embeddings, names

PREFIX = "/api/v1/algorithms/two-tower"
router = APIRouter(tags=["workbench"])
#: Seconds a client is asked to wait when the cap on runs is reached (a run takes minutes).
RETRY_AFTER_S = 30
IdempotencyKey = Annotated[Optional[str], Header(
    alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
    description="A retried request with the same key (and body) gets the first answer and starts nothing.")]
LAUNCH_ANSWERS = {409: {"description": "the run is not gated, or the key's first request is still launching"},
                  422: {"description": "a parameter out of range, a `run_id`, or a key reused for another request"},
                  429: {"description": "max_concurrent_launches runs launched here are not finished (Retry-After)"},
                  503: {"description": "no Dagster webserver configured or reachable"}}


def _jobs(runtime: Runtime) -> workbench.DagsterJobs:
    if runtime.jobs is None:
        raise HTTPException(503, "no Dagster webserver configured: start `twotower serve` with --dagster-url "
                                 "(or TWOTOWER_DAGSTER_URL) pointing at `dagster dev`")
    return runtime.jobs


def _training_config(parameters: dict) -> dict:
    """The retrain's run config without its run id, checked against the one declaration of the
    parameters (the job's launchpad reads the same)."""
    if "run_id" in parameters:
        raise HTTPException(422, "run_id: the service names runs (a new run id for each training, in the answer); "
                                 "leave run_id out")
    try:
        return RetrainParameters(**parameters).model_dump(exclude_none=True)
    except ValueError as error:
        raise HTTPException(422, str(error)) from None


def _launch(runtime: Runtime, submit: Callable[[workbench.DagsterJobs, int], str]) -> str:
    """The job id of a run or backfill launched now, or the HTTP error saying why not."""
    try:
        return submit(_jobs(runtime), runtime.settings.max_concurrent_launches)
    except workbench.TooManyLaunches as error:
        raise HTTPException(429, str(error), headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except workbench.LaunchError as error:
        raise HTTPException(503, str(error)) from None


def _once(runtime: Runtime, response: Response, key: Optional[str], kind: str, body, launch: Callable[[], dict]):
    """`launch()`'s answer, or the first answer of the request that used `key` before."""
    try:
        answer, replayed = _jobs(runtime).launch_once(key, workbench.fingerprint(kind, body), launch)
    except workbench.KeyReused as error:
        raise HTTPException(422, str(error)) from None
    except workbench.KeyPending as error:
        raise HTTPException(409, str(error), headers={"Retry-After": "1"}) from None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return answer


def _train_once(runtime: Runtime, response: Response, key: Optional[str], kind: str, body, parameters: dict,
                answer: Callable[[str, str], dict]) -> dict:
    from twotower_pipeline.runs import new_run_id

    run_config = _training_config(parameters)

    def launch() -> dict:
        config = {**run_config, "run_id": new_run_id()}
        job_id = _launch(runtime, lambda jobs, cap: jobs.launch("train", "retrain_job", config, run_id=config["run_id"],
                                                                request=config, max_active=cap))
        return answer(job_id, config["run_id"])

    return _once(runtime, response, key, kind, body, launch)


@router.post("/pytorch/train", tags=["pytorch"], status_code=202, responses=LAUNCH_ANSWERS)
def pytorch_train(request: PytorchTrain, runtime: ServedRuntime, response: Response,
                  idempotency_key: IdempotencyKey = None):
    """Launch a training run (Dagster's `retrain_job`); the run id and model id are known at once."""
    source = f"{request.data.source.database}.{request.data.source.collection}"
    if source != names.FLATTEN:
        raise HTTPException(422, f"data.source must be {names.FLATTEN} (the flatten collection), not {source}")
    parameters = {"validation_split": request.data.train_test_split, "seed": request.data.random_state,
                  **request.hyperparameters}
    if request.data.categorical_columns:
        parameters.setdefault("categorical_columns", request.data.categorical_columns)

    def answer(job_id: str, run_id: str) -> dict:
        return {"run_id": run_id, "status": "STARTED", "model_id": f"two_tower_user_{run_id}",
                "item_model_id": f"two_tower_item_{run_id}", "metrics": {"user_auc": None, "item_auc": None},
                "rows_total": None, "job_id": job_id}

    return _train_once(runtime, response, idempotency_key, "pytorch_train", request.model_dump(mode="json"),
                       parameters, answer)


@router.get(f"{PREFIX}/health")
def health(runtime: ServedRuntime):
    runtime.store.client.admin.command("ping")
    served = runtime.live.current
    journal = runtime.journal.stats()
    return {"status": "ok", "mongodb": "ok", "live_run_id": served.run_id if served else None,
            "offers": len(served.scorer) if served else 0,
            "skipped_offers": len(served.scorer.skipped) if served else 0,
            "customers": len(served.customers) if served else 0,
            "requests_without_vector": runtime.counts["no_vector"],
            "log_documents_shipped": journal["shipped"], "log_documents_pending": journal["documents_pending"],
            "dagster": runtime.jobs.url if runtime.jobs else None}


@router.get(f"{PREFIX}/predictors")
def list_predictors(runtime: ServedRuntime):
    return {"predictors": workbench.predictors(runtime.store)}


@router.get(f"{PREFIX}/predictor-date-bounds", responses={404: {"description": "no rows"}})
def date_bounds(predictor: Annotated[str, Query(min_length=1, max_length=200)], runtime: ServedRuntime):
    bounds = workbench.predictor_date_bounds(runtime.store, predictor)
    if not bounds["rows"]:
        raise HTTPException(404, f"predictor {predictor!r} has no rows in {names.FLATTEN}")
    return bounds


@router.post(f"{PREFIX}/train", status_code=202, responses=LAUNCH_ANSWERS)
def train(parameters: TrainParameters, runtime: ServedRuntime, response: Response,
          idempotency_key: IdempotencyKey = None):
    """Launch `retrain_job` with SPEC §4 parameters (flat: predictor, from_date, to_date, epochs, ...);
    the service names the run."""
    return _train_once(runtime, response, idempotency_key, "train", parameters.root, parameters.root,
                       lambda job_id, run_id: {"job_id": job_id, "run_id": run_id})


@router.post(f"{PREFIX}/batch-score", status_code=202, responses=LAUNCH_ANSWERS)
def batch_score(request: BatchScoreRequest, runtime: ServedRuntime, response: Response,
                idempotency_key: IdempotencyKey = None):
    """Launch the batch scoring of a gated run: an asset backfill of `batch_recommendations` (a run
    per customer shard) and `published_recommendations` (once every shard is in, through its check)."""
    try:
        embeddings.check_run_id(request.run_id)
        offline.require_gate(runtime.store, request.run_id)
    except (ValueError, offline.GateError) as error:
        raise HTTPException(409 if isinstance(error, offline.GateError) else 422, str(error)) from None
    shard_config = {"run_id": request.run_id, "top_k": request.top_k, "max_users": request.max_users}
    run_config = {"ops": {"batch_recommendations": {"config": shard_config},
                          "published_recommendations": {"config": {"run_id": request.run_id}}}}
    body = request.model_dump()

    def launch() -> dict:
        job_id = _launch(runtime, lambda jobs, cap: jobs.launch_backfill(
            "batch_score", ["batch_recommendations", "published_recommendations"], run_config,
            run_id=request.run_id, request=body, max_active=cap))
        return {"job_id": job_id, "run_id": request.run_id}

    return _once(runtime, response, idempotency_key, "batch_score", body, launch)


@router.get(f"{PREFIX}/experiments")
def list_experiments(runtime: ServedRuntime, campaign: Annotated[Optional[str], Query(max_length=200)] = None):
    """The newest experiments (running, stopped, promoted) with their verdicts by day."""
    return {"experiments": experiments.records(runtime.store, campaign=campaign)}


def _running_experiment(runtime: Runtime, name: str) -> dict:
    try:
        record = experiments.get(runtime.store, name)
    except experiments.ExperimentError as error:
        raise HTTPException(404, str(error)) from None
    if record["state"] != experiments.RUNNING:
        raise HTTPException(409, f"experiment {name!r} is {record['state']}, not {experiments.RUNNING}")
    return record


def _launch_experiment(runtime: Runtime, response: Response, key: Optional[str], kind: str, job_name: str,
                       run_config: dict, run_id: str, body: dict) -> dict:
    def launch() -> dict:
        job_id = _launch(runtime, lambda jobs, cap: jobs.launch(kind, job_name, run_config, run_id=run_id,
                                                                request=body, max_active=cap))
        return {"job_id": job_id, "experiment": body["experiment"]}

    return _once(runtime, response, key, kind, body, launch)


@router.post(f"{PREFIX}/experiments", status_code=202, responses=LAUNCH_ANSWERS)
def start_experiment(request: ExperimentStart, runtime: ServedRuntime, response: Response,
                     idempotency_key: IdempotencyKey = None):
    """Launch `start_experiment_job`: the challenger (a gated run, not live) on `share` of the
    campaign's customers; refused at once when the run is not gated or the campaign runs one."""
    try:
        offline.require_gate(runtime.store, request.challenger_run_id)
    except offline.GateError as error:
        raise HTTPException(409, str(error)) from None
    holder = experiments.campaign_holder(runtime.store, request.campaign)
    if holder is not None:
        raise HTTPException(409, f"campaign {request.campaign!r} already runs experiment {holder!r}")
    body = request.model_dump()
    return _launch_experiment(runtime, response, idempotency_key, "experiment_start", "start_experiment_job",
                              {"ops": {"start_experiment": {"config": body}}}, request.challenger_run_id, body)


@router.post(f"{PREFIX}/experiments/{{name}}/stop", status_code=202, responses=LAUNCH_ANSWERS)
def stop_experiment(name: Annotated[str, Path(max_length=80)], request: ExperimentStop, runtime: ServedRuntime,
                    response: Response, idempotency_key: IdempotencyKey = None):
    """Launch `stop_experiment_job`: every customer gets the live run again; the reason is recorded."""
    record = _running_experiment(runtime, name)
    body = {"experiment": name, "reason": request.reason}
    return _launch_experiment(runtime, response, idempotency_key, "experiment_stop", "stop_experiment_job",
                              {"ops": {"stop_experiment": {"config": body}}}, record["challenger_run_id"], body)


@router.post(f"{PREFIX}/experiments/{{name}}/promote", status_code=202, responses=LAUNCH_ANSWERS)
def promote_experiment(name: Annotated[str, Path(max_length=80)], runtime: ServedRuntime, response: Response,
                       idempotency_key: IdempotencyKey = None):
    """Launch `promote_experiment_job`: the challenger is published (the publish path) and the
    experiment ends."""
    record = _running_experiment(runtime, name)
    body = {"experiment": name}
    return _launch_experiment(runtime, response, idempotency_key, "experiment_promote", "promote_experiment_job",
                              {"experiment": name}, record["challenger_run_id"], body)


@router.post(f"{PREFIX}/concept-test")
def concept_test(request: ConceptTestRequest, runtime: ServedRuntime):
    return offline.concept_test(runtime.store, request.run_id, request.customer_id, request.offers)


@router.get("/api/v1/jobs/{job_id}", responses={404: {"description": "unknown job"}})
def job_status(job_id: Annotated[str, Path(pattern=JOB_ID.pattern)], runtime: ServedRuntime):
    try:
        answer = _jobs(runtime).status(job_id)
    except workbench.LaunchError as error:
        raise HTTPException(503, str(error)) from None
    if answer is None:
        raise HTTPException(404, f"unknown job {job_id}")
    return answer
