"""The sensors that keep the runtime's embeddings current.

`publish_sensor`: a run that passed the publish gate goes live, then its batch recommendations.

Each tick reads a handful of small documents: the newest gate verdicts since its cursor (an indexed
`created_at` in `ecosystem_meta.two_tower_offline_metrics`), the publish journals and the commit
records of the pending run's score shards. It moves one run through three steps, each a run
requested once (run keys): `publish_job` (the runtime's embeddings), `score_job` for every shard
not yet committed, `publish_scores_job` (`two_tower_scores`). A step's run that failed stops the
chain with a `SkipReason` that names it; a run rolled back or replaced after it went live is never
published again by the sensor.

`refresh_sensor`: between retrains, the customers and offers whose documents changed (`updated_at`,
indexed) since its cursor are embedded with the live run's towers and upserted into its live
collections (`refresh_job`), never two runs mixed. A tick counts the changes on the server and
reads nothing else; the window of a refresh run is fixed when it is requested, and the cursor moves
past it once that run succeeded (a failed one is retried, three times at most).
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pymongo.errors

from twotower_pipeline import experiments, offline, publishing
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.jobs import publish_job, publish_scores_job, refresh_job, score_job
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import names
from twotower_pipeline.store.client import redact_text
from twotower_pipeline.store.slices import SlicedCollection

STEP_TAG = "twotower/publish_step"   # "<run_id>:embeddings" | "<run_id>:scores:<shard>" | "<run_id>:scores"
RUN_TAG = "twotower/run_id"
REFRESH_TAG = "twotower/refresh"   # "<run_id>:<until>:<attempt>"
MAX_ATTEMPTS = 3                   # tries of one refresh window
FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _step_runs(instance: dg.DagsterInstance, step: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={STEP_TAG: step}), limit=1))


def _request(job: dg.JobDefinition, run_id: str, step: str, op: str, **kwargs) -> dg.RunRequest:
    return dg.RunRequest(run_key=step, job_name=job.name, tags={STEP_TAG: step, RUN_TAG: run_id},
                         run_config={"ops": {op: {"config": {"run_id": run_id}}}}, **kwargs)


def newest_gate_verdicts(store, since: str | None) -> tuple[str | None, list[dict]]:
    """(newest `created_at` seen, the verdicts recorded after `since`, newest first)."""
    collection = store.collection(names.OFFLINE_METRICS)  # indexed on created_at where it is written
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
        challenged = [e.name for e in experiments.running(store) if e.challenger_run_id == run_id]
        if challenged:  # an experiment decides: it stops the run or promotes it
            return None, f"run {run_id} is the challenger of experiment {challenged[0]}: not publishing it"
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
        raise _cannot_read("publish sensor", error, mongo) from None
    context.update_cursor(json.dumps({"gate_at": seen, "pending": pending if requests is not None else None}))
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason(why)


def _cannot_read(sensor: str, error: Exception, mongo: MongoResource) -> RuntimeError:
    return RuntimeError(f"the {sensor} cannot read MongoDB: " + redact_text(str(error), mongo.uri))


def refresh_start(store, run_id: str) -> str:
    """Where a new live run's refresh starts: when its towers were trained (vectors embedded after
    that saw every change before it; a change in between is embedded again, harmlessly)."""
    document = store.collection(names.RUNS).find_one({"run_id": run_id}, {"updated_at": 1, "published_at": 1}) or {}
    start = document.get("updated_at") or document.get("published_at") or dt.datetime.now(dt.timezone.utc)
    return start.isoformat()


@dg.sensor(
    job=refresh_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Between retrains: embeds new and changed customers and offers (their `updated_at`) with the live "
    "run's towers and upserts them into the live collections.",
)
def refresh_sensor(context: dg.SensorEvaluationContext, mongo: MongoResource):
    state = json.loads(context.cursor) if context.cursor else {}
    try:
        store = mongo.store()
        live = publishing.live_run_id(store)
        if live is None:
            return dg.SkipReason("nothing is published yet: no live run to refresh")
        if state.get("run_id") != live:  # a new live run: once, the index every later tick reads
            publishing.ensure_change_index(store)
            state = {"run_id": live, "since": refresh_start(store, live)}
        requests, why = _refresh_step(context, store, state)
    except pymongo.errors.PyMongoError as error:
        raise _cannot_read("refresh sensor", error, mongo) from None
    context.update_cursor(json.dumps(state))
    return dg.SensorResult(run_requests=requests) if requests else dg.SkipReason(why)


def _refresh_step(context: dg.SensorEvaluationContext, store, state: dict):
    """(run requests, why none) for the cursor `state` {run_id, since, until?, attempt?, failed?};
    updates `state` in place."""
    live, until = state["run_id"], state.get("until")
    if until:
        tag = f"{live}:{until}:{state.get('attempt', 0)}"
        runs = list(context.instance.get_runs(filters=dg.RunsFilter(tags={REFRESH_TAG: tag}), limit=1))
        if runs and runs[0].status == dg.DagsterRunStatus.SUCCESS:
            state.update(since=until, until=None, attempt=0)
        elif runs and runs[0].status in FAILED:
            if state.get("attempt", 0) + 1 >= MAX_ATTEMPTS:
                state.update(until=None, attempt=0, failed=until)
                return [], (f"refreshing the changes up to {until} failed {MAX_ATTEMPTS} times (last: Dagster run "
                            f"{runs[0].run_id}); launch refresh_job for that window, or wait for the next change")
            state["attempt"] = state.get("attempt", 0) + 1
            return [_refresh_request(state)], None
        elif runs:
            return [], f"refreshing the changes up to {until} (Dagster run {runs[0].run_id})"
        else:
            return [_refresh_request(state)], None  # requested, not launched yet: the same run key again
    since = dt.datetime.fromisoformat(state["since"])
    changes = publishing.changes_since(store, since)
    newest = max((at for _, at in changes.values() if at is not None), default=None)
    if newest is None or (state.get("failed") and newest.isoformat() <= state["failed"]):
        what = f" (the refresh up to {state['failed']} failed; see the earlier ticks)" if state.get("failed") else ""
        return [], f"no customer or offer changed since {state['since']} (live run {live}){what}"
    state.update(until=newest.isoformat(), attempt=0, failed=None)
    counts = ", ".join(f"{n} {tower}" for tower, (n, _) in changes.items() if n)
    context.log.info(f"run {live}: {counts} changed since {state['since']}")
    return [_refresh_request(state)], None


def _refresh_request(state: dict) -> dg.RunRequest:
    tag = f"{state['run_id']}:{state['until']}:{state.get('attempt', 0)}"
    return dg.RunRequest(run_key=f"refresh:{tag}", job_name=refresh_job.name,
                         tags={REFRESH_TAG: tag, RUN_TAG: state["run_id"]},
                         run_config={"ops": {"runtime_embeddings": {"config": {
                             "run_id": state["run_id"], "refresh_since": state["since"],
                             "refresh_until": state["until"]}}}})
