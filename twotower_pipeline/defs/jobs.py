"""Jobs and schedules: flatten yesterday's logs every night; build the training frame, train, score and
publish on demand."""

import dagster as dg

from twotower_pipeline.defs.assets.runtime_logs import ecosystemruntime_flatten, ecosystemruntime_flatten_undated
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.assets.training import TwoTowerConfig
from twotower_pipeline.defs.assets.training_data import training_frame
from twotower_pipeline.defs.partitions import daily_partitions

flatten_runtime_logs_job = dg.define_asset_job(
    "flatten_runtime_logs",
    selection=dg.AssetSelection.assets(ecosystemruntime_flatten, ecosystemruntime_flatten_undated),
    partitions_def=daily_partitions,
    description="Flatten the runtime logs of the selected days (a range runs as one run), and set aside "
    "the documents no day can hold (no readable date_log).",
)

training_frame_job = dg.define_asset_job(
    "build_training_frame",
    selection=dg.AssetSelection.assets(training_frame),
    description="Build the training frame for one predictor and window (set them in the launchpad).",
)

# Runs shortly after midnight UTC for the day that just ended; late responses are picked up by
# re-materialising a day (the slice is rewritten, never appended to).
daily_flatten_schedule = dg.build_schedule_from_partitioned_job(
    flatten_runtime_logs_job,
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)


@dg.config_mapping
def training_parameters(config: TwoTowerConfig) -> dg.RunConfig:
    """The launchpad's training parameters, checked when the run is launched: a value out of range
    is refused with its allowed range before any run exists (an asset's own config is checked only
    once its step starts)."""
    return dg.RunConfig(ops={"two_tower_model": config})


train_two_tower_job = dg.define_asset_job(
    "train_two_tower",
    selection=dg.AssetSelection.assets("two_tower_model", "user_embeddings", "item_embeddings",
                                       "concept_test_metrics", "runtime_embeddings"),
    config=training_parameters,
    description="Train the towers on the current training frame, keep both towers' vectors, score the run "
    "against the baselines and, if it passes the publish gate, publish it to the runtime's collections as one unit.",
)

score_customers_job = dg.define_asset_job(
    "score_customers",
    selection=dg.AssetSelection.assets("batch_recommendations"),
    partitions_def=score_shards,
    description="Top-K recommendations of the gated run for the selected customer shards (one run per shard in a "
    "backfill, so workers score shards in parallel).",
)

publish_recommendations_job = dg.define_asset_job(
    "publish_recommendations",
    selection=dg.AssetSelection.assets("published_recommendations"),
    description="Switch `two_tower_scores` to the gated run's recommendations once every shard is scored.",
)
