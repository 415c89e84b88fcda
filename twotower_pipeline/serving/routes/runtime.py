"""The runtime's endpoints (SPEC §7): `/invocations` ranks the live run's offers for a customer
and logs the presented document; `/response` logs which of them the customer accepted; `/health`
says whether the service can answer and its logs reach MongoDB."""

from __future__ import annotations

import uuid as uuid_lib

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from twotower_pipeline.serving.live import NothingLive
from twotower_pipeline.serving.schemas import InvocationRequest, InvocationResponse, ResponseAnswer, ResponseRequest
from twotower_pipeline.serving.state import ServedRuntime, now

router = APIRouter(tags=["runtime"])


@router.post("/invocations", response_model=InvocationResponse,
             responses={404: {"description": "unknown campaign, or a customer without a vector"},
                        503: {"description": "nothing is live yet, or the log journal is full"}})
async def invocations(request: InvocationRequest, runtime: ServedRuntime):
    """Rank the offer matrix for one customer with the live run (or, for the customers a running
    experiment assigns to it, the challenger run); log the presented document with the run,
    experiment and arm (journaled before the answer: an answered request is never lost). On the event loop: what it
    does is memory and one append; the sidecar and a synced journal go to the thread pool."""
    try:
        served = runtime.live.served
    except NothingLive as error:
        raise HTTPException(503, str(error)) from None
    campaigns = runtime.campaigns(served)
    if request.campaign not in campaigns:
        raise HTTPException(404, f"unknown campaign {request.campaign!r}: this runtime serves {sorted(campaigns)}")
    served, experiment, arm = runtime.assigned(served, request.campaign, request.customer)
    vector, source = runtime.held_vector(served, request), "stored"
    if vector is None and runtime.settings.sidecar:
        try:
            vector, source = await run_in_threadpool(runtime.embedded_vector, served, request), "sidecar"
        except LookupError:  # the local sidecar found no stored towers of the live run
            raise HTTPException(404, f"run {served.run_id} has no stored towers to embed customer "
                                     f"{request.customer!r} with") from None
    if vector is None:
        runtime.counts["no_vector"] += 1
        raise HTTPException(404, f"customer {request.customer!r} has no vector in run {served.run_id} and no "
                                 "sidecar is configured: the offers cannot be ranked")
    policy = runtime.policy(request.campaign)
    excluded = runtime.accepted_by(request.campaign, request.customer) if policy.exclude_accepted else None
    shown = runtime.explorer.present(served.scorer, vector, request.numberoffers, epsilon=policy.epsilon,
                                     eligible=request.eligible_offers, excluded=excluded)
    ranked, details = shown.ranked, served.scorer.details
    request_id = str(uuid_lib.uuid4())
    final_result = [{"rank": position, "result": {"offer": offer, "offer_name": offer, "score": score}}
                    for position, (offer, score) in enumerate(zip(ranked.offers, ranked.scores), start=1)]
    document = {
        "_id": request_id, "uuid": request_id, "predictor": request.campaign, "date_log": now(),
        "run_id": served.run_id, "experiment": experiment, "arm": arm,
        "api_params": {"customer": request.customer, "channel": request.channel, "campaign": request.campaign,
                       "subcampaign": request.subcampaign, "numberoffers": request.numberoffers,
                       "userid": request.userid},
        "params": [{"key": "customer", "value": request.customer}],
        "in_params": dict(request.in_params),
        "vector_source": source,
        "final_result": [{"rank": item["rank"], "result": {
            **item["result"], "final_score": item["result"]["score"], **details.get(item["result"]["offer"], {}),
            "propensity": propensity}} for item, propensity in zip(final_result, shown.propensities)],
        "explore": int(shown.explore), "epsilon": policy.epsilon, "candidates": ranked.candidates,
        "excluded_accepted": len(excluded or ()),
    }
    await _blocking_if_synced(runtime, runtime.log_presented, document)
    # built here in the documented shape (`response_model` is the schema): FastAPI's validation of
    # the answer would cost more than the ranking
    return JSONResponse({"final_result": final_result, "explore": int(shown.explore), "uuid": request_id})


@router.post("/response", response_model=ResponseAnswer,
             responses={404: {"description": "unknown uuid"}, 422: {"description": "an offer that was not shown"}})
async def response(request: ResponseRequest, runtime: ServedRuntime):
    """Log which of a presented request's offers the customer accepted; the same response sent
    twice (a client's retry) is stored once."""
    presented = runtime.recent_presented(request.uuid) or \
        await run_in_threadpool(runtime.stored_presented, request.uuid)
    if presented is None:
        raise HTTPException(404, f"unknown uuid {request.uuid!r}: no presented request has it")
    shown = {item["result"]["offer_name"] for item in presented.get("final_result", [])}
    accepted = [offer.offer_name for offer in request.offers_accepted]
    not_shown = [name for name in accepted if name not in shown]
    if not_shown:
        raise HTTPException(422, f"offers {not_shown} were not presented in request {request.uuid}")
    channel = request.channel_name or presented.get("api_params", {}).get("channel")
    await _blocking_if_synced(runtime, runtime.log_response, presented, accepted, channel)
    return {"uuid": request.uuid, "offers_accepted": len(accepted), "logged": True}


async def _blocking_if_synced(runtime, append, *args) -> None:
    """A journal append: an os.write, done here; with fsync it waits for the disk, in the thread pool."""
    if runtime.settings.journal_fsync:
        await run_in_threadpool(append, *args)
    else:
        append(*args)


@router.get("/health", responses={503: {"description": "the log shipper is down or the journal is full"}})
def health(runtime: ServedRuntime):
    """The live run, the log journal (size, oldest unshipped document, the shipper's last error)."""
    healthy, report = runtime.health()
    return report if healthy else JSONResponse(jsonable_encoder(report), status_code=503)
