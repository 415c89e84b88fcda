"""The one place that composes the project: assets, checks, jobs, schedules and resources."""

import dagster as dg

from twotower_pipeline.defs.assets import offline_scoring, online_metrics, runtime_logs, training, training_data
from twotower_pipeline.defs.automation import publish_sensor, refresh_sensor
from twotower_pipeline.defs.executors import step_executor
from twotower_pipeline.defs.experiments import (
    experiment_sensor,
    promote_experiment_job,
    start_experiment_job,
    stop_experiment_job,
)
from twotower_pipeline.defs.io_managers import GridFSArtefactIOManager, MongoFrameIOManager
from twotower_pipeline.defs.jobs import (
    daily_flatten_schedule,
    daily_online_metrics_schedule,
    flatten_job,
    online_metrics_job,
    publish_job,
    publish_scores_job,
    refresh_job,
    retrain_job,
    rollback_job,
    score_job,
    weekly_retrain_schedule,
)
from twotower_pipeline.defs.resources import mongo_from_environment
from twotower_pipeline.defs.run_health import orphaned_runs_sensor


def build_resources(mongo=None) -> dict:
    """Resources for a MongoDB resource (default: chosen from the environment)."""
    mongo = mongo or mongo_from_environment()
    return {
        "mongo": mongo,
        "mongo_frame_io_manager": MongoFrameIOManager(mongo=mongo),
        "artefact_io_manager": GridFSArtefactIOManager(mongo=mongo),
    }


defs = dg.Definitions(
    # the runtime's collections and the feature sources are specs (written outside the pipeline):
    # declared, so the UI shows their group, owner, kind and description
    assets=[*dg.load_assets_from_modules([runtime_logs, training_data, training, offline_scoring, online_metrics]),
            runtime_logs.presented_logs, runtime_logs.response_logs, runtime_logs.offer_matrix,
            runtime_logs.customer_features],
    jobs=[flatten_job, retrain_job, publish_job, rollback_job, refresh_job, score_job, publish_scores_job,
          online_metrics_job, start_experiment_job, stop_experiment_job, promote_experiment_job],
    schedules=[daily_flatten_schedule, daily_online_metrics_schedule, weekly_retrain_schedule],
    sensors=[publish_sensor, refresh_sensor, experiment_sensor, orphaned_runs_sensor],
    resources=build_resources(),
    executor=step_executor(),
)
