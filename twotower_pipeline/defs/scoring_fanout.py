"""Batch scoring fanned out inside one run: a step per customer shard, so the run's executor puts
the shards on several processes (the multiprocess executor, the default) or several machines (the
Celery executor, `dagster-celery`, when TWOTOWER_CELERY_BROKER names a broker). Each step scores
its shard with the same code as the `batch_recommendations` asset and records a materialisation of
that shard of the asset, so the asset's partitions in the UI show what the fan-out wrote."""

import os
from typing import Optional

import dagster as dg
from pydantic import Field

from twotower_pipeline import offline, publishing
from twotower_pipeline.defs.assets.offline_scoring import BatchScoringConfig, score_and_keep, score_shards
from twotower_pipeline.defs.executors import fanout_executor
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.slices import SlicedCollection

SCORED_COLUMNS = ["customer_id", "offer", "accepted"]


class FanoutConfig(BatchScoringConfig):
    run_id: Optional[str] = Field(default=None, description="The gated run to score (empty: the live run).")


@dg.op(out=dg.DynamicOut(str), description="One output per customer shard.")
def customer_shards():
    for shard in score_shards.get_partition_keys():
        yield dg.DynamicOutput(shard, mapping_key=shard)


@dg.op(description="Scores one customer shard with the run and commits it whole.")
def score_shard(context: dg.OpExecutionContext, config: FanoutConfig, mongo: MongoResource, shard: str) -> dict:
    store = mongo.store()
    run_id = config.run_id or publishing.live_run_id(store)
    if run_id is None:
        raise dg.Failure(description="no run_id given and nothing is live: name the gated run to score")
    training_frame = SlicedCollection(store, names.TRAINING_FRAME).read(columns=SCORED_COLUMNS) \
        if config.exclude_accepted else None
    metadata = score_and_keep(context, config, store, run_id, [shard], training_frame)
    context.log_event(dg.AssetMaterialization(asset_key="batch_recommendations", partition=shard, metadata={
        **metadata, "pid": os.getpid(), "fanout_run": context.run_id}))
    return {"shard": shard, "run_id": run_id, "customers": metadata["dagster/row_count"], "pid": os.getpid()}


class PublishScoresConfig(dg.Config):
    publish: bool = Field(default=False, description="Also switch `two_tower_scores` to these scores once every "
                          "shard is committed (otherwise publish_scores_job, or the publish sensor, does it).")


@dg.op(description="What the shards wrote, together; published when the config says so.")
def scored(context: dg.OpExecutionContext, config: PublishScoresConfig, mongo: MongoResource,
           shards: list[dict]) -> dict:
    total = sum(s["customers"] for s in shards)
    run_id = shards[0]["run_id"]
    context.log.info(f"run {run_id}: {total} customers scored in {len(shards)} shards, "
                     f"{len({s['pid'] for s in shards})} processes")
    summary = {"run_id": run_id, "customers": total, "shards": len(shards), "published": False}
    if config.publish:
        try:
            outcome = offline.publish_scores(mongo.store(), run_id, score_shards.get_partition_keys(),
                                             owner={"dagster_run_id": context.run_id})
        except (offline.GateError, embeddings.PublishError) as error:
            raise dg.Failure(description=str(error)) from None
        documents = outcome["report"].documents["scores"]
        context.log_event(dg.AssetMaterialization(asset_key="published_recommendations", metadata={
            "run_id": run_id, "dagster/row_count": documents, "fanout_run": context.run_id}))
        summary.update(published=True, documents=documents)
    return summary


@dg.job(executor_def=fanout_executor(), description="Batch recommendations of a gated run, a step per customer "
        "shard in one run (processes, or Celery workers with TWOTOWER_CELERY_BROKER); then publish_scores_job.")
def score_fanout_job():
    scored(customer_shards().map(score_shard).collect())
