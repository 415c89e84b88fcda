"""The publish sensor: a run that passed the publish gate goes live, then its batch recommendations.

Each tick reads a handful of small documents: the newest gate verdicts since its cursor (an indexed
`created_at` in `ecosystem_meta.two_tower_offline_metrics`), the publish journals and the commit
records of the pending run's score shards. It moves one run through three steps, each a run
requested once (run keys): `publish_job` (the runtime's embeddings), `score_job` for every shard
not yet committed, `publish_scores_job` (`two_tower_scores`). A step's run that failed stops the
chain with a `SkipReason` that names it; a run rolled back or replaced after it went live is never
published again by the sensor.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pymongo.errors

from twotower_pipeline import offline, publishing
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.jobs import publish_job, publish_scores_job, score_job
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import names
from twotower_pipeline.store.client import redact_text
from twotower_pipeline.store.slices import SlicedCollection

STEP_TAG = "twotower/publish_step"   # "<run_id>:embeddings" | "<run_id>:scores:<shard>" | "<run_id>:scores"
RUN_TAG = "twotower/run_id"
FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _step_runs(instance: dg.DagsterInstance, step: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={STEP_TAG: step}), limit=1))


def _request(job: dg.JobDefinition, run_id: str, step: str, op: str, **kwargs) -> dg.RunRequest:
    return dg.RunRequest(run_key=step, job_name=job.name, tags={STEP_TAG: step, RUN_TAG: run_id},
                         run_config={"ops": {op: {"config": {"run_id": run_id}}}}, **kwargs)


def newest_gate_verdicts(store, since: str | None) -> tuple[str | None, list[dict]]:
    """(newest `created_at` seen, the verdicts recorded after `since`, newest first)."""
    collection = store.collection(names.OFFLINE_METRICS)
    collection.create_index("created_at")
    query = {"created_at": {"$gt": dt.datetime.fromisoformat(since)}} if since else {}
    verdicts = list(collection.find(query, {"run_id": 1, "gate": 1, "created_at": 1, "_id": 0})
                    .sort("created_at", -1).limit(50))
    return (verdicts[0]["created_at"].isoformat() if verdicts else since), verdicts


def next_step(context: dg.SensorEvaluationContext, store, run_id: str):
    """The run requests that move `run_id` on, or (None, why it stops here)."""
    instance = context.instance
    step = f"{run_id}:embeddings"
    live = publishing.live_run_id(store)
    if live != run_id:
        runs = _step_runs(instance, step)
        if not runs:
            return [_request(publish_job, run_id, step, "runtime_embeddings")], None
        if runs[0].status in FAILED:
            return None, f"publishing run {run_id} failed (Dagster run {runs[0].run_id}); launch publish_job to retry"
        if runs[0].status == dg.DagsterRunStatus.SUCCESS:
            return None, f"run {run_id} was published, then replaced by {live}: not publishing it again"
        return [], f"run {run_id} is being published (Dagster run {runs[0].run_id})"
    shards = score_shards.get_partition_keys()
    scores = offline.scores_publisher(store, shards)
    if scores.live_run_id() == run_id:
        return None, f"run {run_id} is live with its batch recommendations"
    committed = SlicedCollection(store, scores.run_location("scores", run_id)).committed_slices()
    missing = [shard for shard in shards if shard not in committed]
    if missing:
        requests = []
        for shard in missing:
            shard_step = f"{run_id}:scores:{shard}"
            runs = _step_runs(instance, shard_step)
            if not runs:
                requests.append(_request(score_job, run_id, shard_step, "batch_recommendations", partition_key=shard))
            elif runs[0].status in FAILED:
                return None, (f"scoring {shard} of run {run_id} failed (Dagster run {runs[0].run_id}); "
                              "launch score_job for that shard to retry")
        return requests, (None if requests else f"run {run_id} is live; scoring {len(missing)} shard(s)")
    step = f"{run_id}:scores"
    runs = _step_runs(instance, step)
    if not runs:
        return [_request(publish_scores_job, run_id, step, "published_recommendations")], None
    if runs[0].status in FAILED:
        return None, f"publishing the scores of run {run_id} failed (Dagster run {runs[0].run_id})"
    return [], f"the scores of run {run_id} are being published"


@dg.sensor(
    jobs=[publish_job, score_job, publish_scores_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Publishes each run that passes the publish gate (once per run), then scores every customer "
    "shard with it and publishes its batch recommendations.",
)
def publish_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource):
    state = json.loads(context.cursor) if context.cursor else {}
    try:
        store = mongo.store()
        seen, verdicts = newest_gate_verdicts(store, state.get("gate_at"))
        passed = [v for v in verdicts if (v.get("gate") or {}).get("passed")]
        failed = [v["run_id"] for v in verdicts if not (v.get("gate") or {}).get("passed")]
        pending = passed[0]["run_id"] if passed else state.get("pending")
        if pending is None:
            context.update_cursor(json.dumps({"gate_at": seen, "pending": None}))
            note = f"; failed the gate: {', '.join(failed)}" if failed else ""
            return dg.SkipReason(f"no new run passed the publish gate{note}")
        requests, why = next_step(context, store, pending)
    except pymongo.errors.PyMongoError as error:
        raise RuntimeError("the publish sensor cannot read MongoDB: "
                           + redact_text(str(error), mongo.uri)) from None
    context.update_cursor(json.dumps({"gate_at": seen, "pending": pending if requests is not None else None}))
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason(why)
