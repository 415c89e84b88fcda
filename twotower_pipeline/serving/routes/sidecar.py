"""The PyTorch serving sidecar's endpoints (SPEC §8): a stored run's towers embed feature rows."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query

from twotower_pipeline.serving.schemas import PytorchInvocation, PytorchPredictions
from twotower_pipeline.serving.state import ServedRuntime
from twotower_pipeline.serving.towers import parse_model_id
from twotower_pipeline.store import names

router = APIRouter(prefix="/pytorch", tags=["pytorch"])


@router.post("/invocations", response_model=PytorchPredictions, responses={404: {"description": "unknown model"}})
def pytorch_invocations(request: PytorchInvocation, runtime: ServedRuntime):
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


@router.get("/models")
def pytorch_models(runtime: ServedRuntime, limit: int = Query(100, ge=1, le=1000)):
    """The stored runs' towers, newest first."""
    live = runtime.live.current.run_id if runtime.live.current else None
    models = []
    for run in runtime.store.collection(names.RUNS).find({}, {"_id": 0}).sort("updated_at", -1).limit(limit):
        for tower in ("user", "item"):
            models.append({"model_id": run.get(f"{tower}_model_id"), "run_id": run["run_id"], "tower": tower,
                           "predictor": run.get("predictor"), "embedding_dim": run.get("embedding_dim"),
                           "updated_at": run.get("updated_at"), "live": run["run_id"] == live})
    return {"models": models, "framework": "pytorch"}


@router.get("/health")
def pytorch_health(runtime: ServedRuntime):
    runtime.store.client.admin.command("ping")
    return {"status": "ok", "framework": "pytorch", "models_loaded": runtime.towers.loaded}
