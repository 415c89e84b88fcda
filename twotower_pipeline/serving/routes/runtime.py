"""The runtime's endpoints (SPEC §7): `/invocations` ranks the live run's offers for a customer and
logs the presented document; `/response` logs which of them the customer accepted."""

from __future__ import annotations

import uuid as uuid_lib

from fastapi import APIRouter, HTTPException

from twotower_pipeline.serving.live import NothingLive
from twotower_pipeline.serving.schemas import InvocationRequest, InvocationResponse, ResponseAnswer, ResponseRequest
from twotower_pipeline.serving.state import ServedRuntime, now
from twotower_pipeline.store import names

router = APIRouter(tags=["runtime"])


@router.post("/invocations", response_model=InvocationResponse,
             responses={404: {"description": "unknown campaign, or a customer without a vector"},
                        503: {"description": "nothing is live yet"}})
def invocations(request: InvocationRequest, runtime: ServedRuntime):
    """Rank the offer matrix for one customer with the live run; log the presented document."""
    try:
        scorer = runtime.live.scorer
    except NothingLive as error:
        raise HTTPException(503, str(error)) from None
    served = {runtime.live.predictor, *runtime.settings.campaigns} - {None}
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
        "uuid": request_id, "predictor": request.campaign, "date_log": now(), "run_id": scorer.run_id,
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


@router.post("/response", response_model=ResponseAnswer,
             responses={404: {"description": "unknown uuid"}, 422: {"description": "an offer that was not shown"}})
def response(request: ResponseRequest, runtime: ServedRuntime):
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
        "uuid": request.uuid, "predictor": presented.get("predictor"), "date_log": now(),
        "response": {"offers_accepted": [{"offer_name": name, "offer": name} for name in accepted],
                     "channel_name": channel},
        "response_log": {k: v for k, v in presented.items() if k != "_id"},
    })
    return {"uuid": request.uuid, "offers_accepted": len(accepted), "logged": True}
