"""Jobs named for what operators do, and the schedules that run them: flatten last night's logs,
retrain every week, publish a run that passed the gate (the publish sensor does it), score and
publish batch recommendations, roll back."""

import datetime as dt
import os

import dagster as dg
import pymongo.errors

from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.assets.runtime_logs import ecosystemruntime_flatten, ecosystemruntime_flatten_undated
from twotower_pipeline.defs.assets.training import TwoTowerConfig
from twotower_pipeline.defs.assets.training_data import TrainingFrameConfig
from twotower_pipeline.defs.partitions import daily_partitions
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import names
from twotower_pipeline.store.client import redact_text
from twotower_pipeline.store.slices import SlicedCollection

#: The weekly retrain's predictor (no predictor: the schedule skips, saying so) and window in days
#: (unset: every day flattened so far).
RETRAIN_PREDICTOR_ENV = "TWOTOWER_RETRAIN_PREDICTOR"
RETRAIN_DAYS_ENV = "TWOTOWER_RETRAIN_DAYS"

flatten_job = dg.define_asset_job(
    "flatten_job",
    selection=dg.AssetSelection.assets(ecosystemruntime_flatten, ecosystemruntime_flatten_undated),
    partitions_def=daily_partitions,
    description="Flatten the runtime logs of the selected days (a range runs as one run), and set aside "
    "the documents no day can hold (no readable date_log).",
)


# Runs shortly after midnight UTC for the day that just ended; late responses are picked up by
# re-materialising a day (the slice is rewritten, never appended to).
@dg.schedule(job=flatten_job, cron_schedule="30 0 * * *", execution_timezone="UTC", name="flatten_job_schedule",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every night at 00:30 UTC: flatten the day that just ended.")
def daily_flatten_schedule(context: dg.ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.astimezone(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"flatten:{day}", partition_key=day)


class RetrainConfig(TwoTowerConfig, TrainingFrameConfig):
    """A retrain's launchpad: the training slice (predictor, window) and the training parameters,
    all checked when the run is launched."""

    def frame_config(self) -> TrainingFrameConfig:
        return TrainingFrameConfig(**self.model_dump(include=set(TrainingFrameConfig.model_fields)))

    def training_config(self) -> TwoTowerConfig:
        return TwoTowerConfig(**self.model_dump(include=set(TwoTowerConfig.model_fields)))


@dg.config_mapping
def retrain_parameters(config: RetrainConfig) -> dg.RunConfig:
    """A value out of range is refused with its allowed range before any run exists (an asset's
    own config is checked only once its step starts)."""
    return dg.RunConfig(ops={"training_frame": config.frame_config(), "two_tower_model": config.training_config()})


retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets("training_frame", "two_tower_model", "user_embeddings", "item_embeddings",
                                       "concept_test_metrics"),
    config=retrain_parameters,
    description="Build the training frame for a predictor and window, train the towers, keep both towers' "
    "vectors and score the run against the baselines through the publish gate. A run that passes is published "
    "by `publish_sensor` (or `publish_job`), with its batch recommendations.",
)

publish_job = dg.define_asset_job(
    "publish_job",
    selection=dg.AssetSelection.assets("runtime_embeddings"),
    description="Switch the runtime's embedding collections to a run that passed the publish gate, both towers "
    "as one unit, verified (launchpad: `run_id`; empty: the latest trained run).",
)


refresh_job = dg.define_asset_job(
    "refresh_job",
    selection=dg.AssetSelection.assets("runtime_embeddings"),
    description="Between retrains: embed the customers and offers changed in a time window (their `updated_at`) "
    "with the live run's towers and upsert them into its live collections (launchpad: run_id, refresh_since, "
    "refresh_until; `refresh_sensor` launches it).",
)


@dg.config_mapping(config_schema={})
def rollback_only(_config) -> dict:
    """Nothing to choose: the run to put back is the journal's previous one."""
    return {"ops": {"runtime_embeddings": {"config": {"rollback": True}}}}


rollback_job = dg.define_asset_job(
    "rollback_job",
    selection=dg.AssetSelection.assets("runtime_embeddings"),
    config=rollback_only,
    description="Put back the run that was live before the current one: both towers together, verified "
    "(`twotower rollback-embeddings` does the same from a shell).",
)

score_job = dg.define_asset_job(
    "score_job",
    selection=dg.AssetSelection.assets("batch_recommendations"),
    partitions_def=score_shards,
    description="Top-K recommendations of a gated run for the selected customer shards (one run per shard in a "
    "backfill, so workers score shards in parallel).",
)

publish_scores_job = dg.define_asset_job(
    "publish_scores_job",
    selection=dg.AssetSelection.assets("published_recommendations"),
    description="Switch `two_tower_scores` to a gated run's recommendations once every shard is scored.",
)


online_metrics_job = dg.define_asset_job(
    "online_metrics_job",
    selection=dg.AssetSelection.assets("online_metrics"),
    partitions_def=daily_partitions,
    description="Accept rates per campaign, run and arm of the selected days, and each experiment's verdict "
    "of those days.",
)


#: Days back the hourly online-metrics schedule looks for a flatten committed late.
ONLINE_METRICS_DAYS_BACK = 7


@dg.schedule(job=online_metrics_job, cron_schedule="15 * * * *", execution_timezone="UTC",
             name="online_metrics_schedule", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every hour: each of the last 7 days, once its flatten has been committed after the "
             "day's end (the nightly flatten runs at 00:30 UTC); a day once.")
def daily_online_metrics_schedule(context: dg.ScheduleEvaluationContext, mongo: MongoResource):
    today = context.scheduled_execution_time.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0,
                                                                                 microsecond=0)
    try:
        flattened = SlicedCollection(mongo.store(), names.FLATTEN).committed_slices()
    except pymongo.errors.PyMongoError as error:
        raise RuntimeError("the online metrics schedule cannot read MongoDB: "
                           + redact_text(str(error), mongo.uri)) from None
    requests, waiting = [], []
    for back in range(ONLINE_METRICS_DAYS_BACK, 0, -1):
        end = today - dt.timedelta(days=back - 1)
        day = (end - dt.timedelta(days=1)).date().isoformat()
        committed_at = (flattened.get(day) or {}).get("committed_at")
        if committed_at is not None and committed_at.tzinfo is None:
            committed_at = committed_at.replace(tzinfo=dt.timezone.utc)
        if committed_at is not None and committed_at >= end:
            requests.append(dg.RunRequest(run_key=f"online_metrics:{day}", partition_key=day))
        elif back == 1:
            waiting.append(day)
    if requests:
        return requests  # days already computed are dropped by their run keys
    return dg.SkipReason(f"waiting for the flatten of {waiting[0]} after the day's end (flatten_job_schedule, or "
                         f"materialise logging/ecosystemruntime_flatten for {waiting[0]})" if waiting else
                         "no flatten of the last days was committed after the day's end")


@dg.schedule(job=retrain_job, cron_schedule="0 2 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description=f"Every Monday 02:00 UTC: retrain on the predictor named by {RETRAIN_PREDICTOR_ENV}, "
             f"on the last {RETRAIN_DAYS_ENV} days (unset: all days) up to the day before.")
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    predictor = os.environ.get(RETRAIN_PREDICTOR_ENV, "").strip()
    if not predictor:
        return dg.SkipReason(f"no predictor to retrain: set {RETRAIN_PREDICTOR_ENV} (e.g. ml100k) where the "
                             "daemon runs")
    end = context.scheduled_execution_time.astimezone(dt.timezone.utc).date()
    config = {"predictor": predictor, "to_date": end.isoformat()}
    days = os.environ.get(RETRAIN_DAYS_ENV, "").strip()
    if days:
        if not days.isdigit() or int(days) < 1:
            return dg.SkipReason(f"{RETRAIN_DAYS_ENV}={days!r} is not a whole number of days (1 or more)")
        config["from_date"] = (end - dt.timedelta(days=int(days))).isoformat()
    return dg.RunRequest(run_key=f"retrain:{predictor}:{end.isoformat()}", run_config=config,
                         tags={"twotower/predictor": predictor})
