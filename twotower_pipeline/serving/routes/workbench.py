"""The workbench API (SPEC §9) and the sidecar's `POST /pytorch/train` (§8): what reads the
pipeline's state and what launches Dagster runs (training, batch scoring)."""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, HTTPException, Path, Query

from twotower_pipeline import offline
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.schemas import (DAGSTER_RUN_ID, BatchScoreRequest, ConceptTestRequest, Id,
                                               PytorchTrain, validation_text)
from twotower_pipeline.serving.state import Runtime, ServedRuntime
from twotower_pipeline.store import embeddings, names

PREFIX = "/api/v1/algorithms/two-tower"
router = APIRouter(tags=["workbench"])


def _jobs(runtime: Runtime) -> workbench.DagsterJobs:
    if runtime.jobs is None:
        raise HTTPException(503, "no Dagster webserver configured: start `twotower serve` with --dagster-url "
                                 "(or TWOTOWER_DAGSTER_URL) pointing at `dagster dev`")
    return runtime.jobs


def _launch_training(runtime: Runtime, parameters: dict) -> dict:
    from twotower_pipeline.defs.jobs import RetrainConfig
    from twotower_pipeline.runs import new_run_id

    parameters = {"run_id": new_run_id(), **parameters}
    unknown = sorted(set(parameters) - set(RetrainConfig.model_fields))
    if unknown:
        raise HTTPException(422, f"unknown training parameters {unknown}: the parameters are "
                                 f"{sorted(RetrainConfig.model_fields)}")
    try:
        config = RetrainConfig(**parameters)
    except (pydantic.ValidationError, ValueError) as error:
        raise HTTPException(422, validation_text(error)) from None
    run_config = config.model_dump(exclude_none=True)  # the run id was checked by the config
    try:
        job_id = _jobs(runtime).launch("train", "retrain_job", run_config, run_id=run_config["run_id"],
                                       request=run_config)
    except workbench.LaunchError as error:
        raise HTTPException(503, str(error)) from None
    return {"job_id": job_id, "run_id": run_config["run_id"]}


@router.post("/pytorch/train", tags=["pytorch"], status_code=202,
             responses={503: {"description": "no Dagster webserver configured or reachable"}})
def pytorch_train(request: PytorchTrain, runtime: ServedRuntime):
    """Launch a training run (Dagster's `retrain_job`); the run id and model id are known at once."""
    source = f"{request.data.source.database}.{request.data.source.collection}"
    if source != names.FLATTEN:
        raise HTTPException(422, f"data.source must be {names.FLATTEN} (the flatten collection), not {source}")
    parameters = {"validation_split": request.data.train_test_split, "seed": request.data.random_state,
                  **request.hyperparameters}
    if request.data.categorical_columns:
        parameters.setdefault("categorical_columns", request.data.categorical_columns)
    launched = _launch_training(runtime, parameters)
    run_id = launched["run_id"]
    return {"run_id": run_id, "status": "STARTED", "model_id": f"two_tower_user_{run_id}",
            "item_model_id": f"two_tower_item_{run_id}", "metrics": {"user_auc": None, "item_auc": None},
            "rows_total": None, "job_id": launched["job_id"]}


@router.get(f"{PREFIX}/health")
def health(runtime: ServedRuntime):
    runtime.store.client.admin.command("ping")
    scorer = runtime.live.current
    return {"status": "ok", "mongodb": "ok", "live_run_id": scorer.run_id if scorer else None,
            "offers": len(scorer) if scorer else 0, "skipped_offers": len(scorer.skipped) if scorer else 0,
            "requests_without_vector": runtime.counts["no_vector"],
            "log_documents_written": runtime.logs.written if runtime.logs else 0,
            "log_documents_pending": runtime.logs.pending if runtime.logs else 0,
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


@router.post(f"{PREFIX}/train", status_code=202)
def train(parameters: dict[Id, Any], runtime: ServedRuntime):
    """Launch `retrain_job` with SPEC §4 parameters (flat: predictor, from_date, to_date, epochs, ...)."""
    return _launch_training(runtime, parameters)


@router.post(f"{PREFIX}/batch-score", status_code=202)
def batch_score(request: BatchScoreRequest, runtime: ServedRuntime):
    """Launch the batch scoring of a gated run (`score_fanout_job`, published when every shard is in)."""
    try:
        embeddings.check_run_id(request.run_id)
        offline.require_gate(runtime.store, request.run_id)
    except (ValueError, offline.GateError) as error:
        raise HTTPException(409 if isinstance(error, offline.GateError) else 422, str(error)) from None
    shard_config = {"run_id": request.run_id, "top_k": request.top_k, "max_users": request.max_users}
    run_config = {"ops": {"score_shard": {"config": shard_config}, "scored": {"config": {"publish": True}}}}
    try:
        job_id = _jobs(runtime).launch("batch_score", "score_fanout_job", run_config, run_id=request.run_id,
                                       request=request.model_dump())
    except workbench.LaunchError as error:
        raise HTTPException(503, str(error)) from None
    return {"job_id": job_id, "run_id": request.run_id}


@router.post(f"{PREFIX}/concept-test")
def concept_test(request: ConceptTestRequest, runtime: ServedRuntime):
    return offline.concept_test(runtime.store, request.run_id, request.customer_id, request.offers)


@router.get("/api/v1/jobs/{job_id}", responses={404: {"description": "unknown job"}})
def job_status(job_id: Annotated[str, Path(pattern=DAGSTER_RUN_ID.pattern)], runtime: ServedRuntime):
    try:
        answer = _jobs(runtime).status(job_id)
    except workbench.LaunchError as error:
        raise HTTPException(503, str(error)) from None
    if answer is None:
        raise HTTPException(404, f"unknown job {job_id}")
    return answer
