"""The whole Definitions: the asset graph as reviewed, and `dg check defs` passing."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from twotower_pipeline.definitions import defs
from twotower_pipeline.defs.assets.training import TwoTowerConfig
from twotower_pipeline.defs.executors import CELERY_BROKER_ENV
from twotower_pipeline.defs.jobs import RetrainConfig
from twotower_pipeline.model import TrainingParams
from twotower_pipeline.parameters import TrainingWindow

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# An accidental change to the graph shows here in review.
EXPECTED_ASSETS = {
    "logging/ecosystemruntime": (None, []),
    "logging/ecosystemruntime_response": (None, []),
    "recommender_demos/offer_matrix": (None, []),
    "recommender_demos/customer_features": (None, []),
    "logging/ecosystemruntime_flatten": ("daily", ["logging/ecosystemruntime", "logging/ecosystemruntime_response"]),
    "logging/ecosystemruntime_flatten_quarantine": (
        "daily",
        ["logging/ecosystemruntime", "logging/ecosystemruntime_response"],
    ),
    "logging/ecosystemruntime_flatten_undated": (
        None,
        ["logging/ecosystemruntime", "logging/ecosystemruntime_response"],
    ),
    "training_frame": (
        None,
        ["logging/ecosystemruntime_flatten", "recommender_demos/customer_features", "recommender_demos/offer_matrix"],
    ),
    "two_tower_model": (None, ["training_frame"]),
    "user_embeddings": (None, ["recommender_demos/customer_features", "training_frame", "two_tower_model"]),
    "item_embeddings": (None, ["recommender_demos/offer_matrix", "training_frame", "two_tower_model"]),
    "concept_test_metrics": (None, ["item_embeddings", "training_frame", "two_tower_model", "user_embeddings"]),
    "runtime_embeddings": (None, ["concept_test_metrics", "item_embeddings", "two_tower_model", "user_embeddings"]),
    "batch_recommendations": ("other", ["concept_test_metrics", "recommender_demos/offer_matrix", "training_frame",
                                        "two_tower_model"]),
    "published_recommendations": (None, ["batch_recommendations", "two_tower_model"]),
    "online_metrics": ("daily", ["logging/ecosystemruntime_flatten"]),
}
EXPECTED_CHECKS = {
    "logging/ecosystemruntime_flatten": {
        "schema",
        "no_null_keys",
        "has_accepts",
        "rejected_share_below_threshold",
    },
    "logging/ecosystemruntime_flatten_undated": {"no_undated_documents"},
    "training_frame": {"schema", "no_null_keys", "has_accepts", "enough_accepted_rows",
                       "unique_exposures"},
    "user_embeddings": {"unit_vectors_of_embedding_dim", "one_vector_per_key", "counts_match_sources"},
    "item_embeddings": {"unit_vectors_of_embedding_dim", "one_vector_per_key", "counts_match_sources"},
    "online_metrics": {"challenger_not_worse"},
    "runtime_embeddings": {"same_run_in_both", "counts_match_run", "unit_vectors_of_embedding_dim",
                           "one_vector_per_key"},
    "concept_test_metrics": {"publish_gate"},
    "published_recommendations": {"one_run_every_shard"},
}


def test_asset_graph_snapshot():
    graph = defs.resolve_asset_graph()
    snapshot = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        partitions = node.partitions_def
        kind = (
            None
            if partitions is None
            else ("daily" if isinstance(partitions, dg.DailyPartitionsDefinition) else "other")
        )
        snapshot[key.to_user_string()] = (kind, sorted(k.to_user_string() for k in node.parent_keys))
    assert snapshot == EXPECTED_ASSETS
    checks: dict = {}
    for check_key in graph.asset_check_keys:
        checks.setdefault(check_key.asset_key.to_user_string(), set()).add(check_key.name)
    assert checks == EXPECTED_CHECKS


def test_every_asset_shows_its_group_owner_kind_and_description_in_the_ui():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name != "default" and node.owners == ["team:recommendations"], key
        assert node.kinds and node.description, key


def test_jobs_and_schedules_are_defined():
    def nodes(job):
        return {n.name for n in defs.resolve_job_def(job).nodes}
    assert defs.resolve_job_def("flatten_job").partitions_def is not None
    assert nodes("flatten_job") == {"ecosystemruntime_flatten", "logging__ecosystemruntime_flatten_undated"}
    assert nodes("retrain_job") == {"training_frame", "two_tower_model", "user_embeddings", "item_embeddings",
                                    "concept_test_metrics"}
    assert nodes("publish_job") == nodes("rollback_job") == nodes("refresh_job") == {"runtime_embeddings"}
    scoring = defs.resolve_job_def("score_job")
    assert nodes("score_job") == {"batch_recommendations"}
    assert scoring.partitions_def.get_partition_keys() == [f"shard_{i:02d}_of_04" for i in range(4)]
    assert nodes("publish_scores_job") == {"published_recommendations"}
    assert defs.resolve_sensor_def("orphaned_runs_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    for sensor in ("publish_sensor", "refresh_sensor", "experiment_sensor"):
        assert defs.resolve_sensor_def(sensor).default_status == dg.DefaultSensorStatus.STOPPED
    assert nodes("online_metrics_job") == {"online_metrics"}
    assert nodes("start_experiment_job") == {"start_experiment"}
    assert nodes("stop_experiment_job") == {"stop_experiment"}
    assert nodes("promote_experiment_job") == {"runtime_embeddings"}
    metrics = defs.resolve_schedule_def("online_metrics_schedule")
    assert (metrics.cron_schedule, metrics.job_name, metrics.default_status) == (
        "15 * * * *", "online_metrics_job", dg.DefaultScheduleStatus.STOPPED)
    nightly = defs.resolve_schedule_def("flatten_job_schedule")
    assert nightly.cron_schedule == "30 0 * * *"
    weekly = defs.resolve_schedule_def("weekly_retrain_schedule")
    assert (weekly.cron_schedule, weekly.job_name) == ("0 2 * * 1", "retrain_job")
    assert nightly.default_status == weekly.default_status == dg.DefaultScheduleStatus.STOPPED


def test_dg_check_defs_passes():
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_steps_fork_from_a_server_that_imported_the_definitions_and_nothing_else():
    """The executor's forkserver imports the definitions once and forks every step from it: that is
    only safe while importing them starts no thread and opens no connection."""
    if not os.environ.get(CELERY_BROKER_ENV):  # with a broker every job's steps go to Celery workers
        for job in ("retrain_job", "score_job", "flatten_job"):
            assert defs.resolve_job_def(job).executor_def.name == "multiprocess_forkserver", job
    probe = ("import socket, threading\n"
             "opened = []\n"
             "socket.socket.connect = lambda self, address: opened.append(address)\n"
             "import twotower_pipeline.definitions\n"
             "print(threading.active_count(), opened)\n")
    env = {k: v for k, v in os.environ.items() if k != CELERY_BROKER_ENV}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "1 []"


def test_the_launchpads_offer_every_training_parameter_from_its_one_declaration():
    declared = TrainingParams.model_fields
    launchpad = defs.resolve_job_def("retrain_job").run_config_schema.config_type.fields
    for name, field in declared.items():  # each with the declared default, description and range text
        assert launchpad[name].default_value == field.get_default(call_default_factory=True), name
        assert launchpad[name].description == field.description, name
    assert set(launchpad) == set(declared) | set(TrainingWindow.model_fields) | {"run_id"}
    assert [v.config_value for v in launchpad["loss"].config_type.enum_values] == ["auto", "softmax", "mixed",
                                                                                   "pointwise"]
    with pytest.raises(ValueError, match="embedding_dim=512 is out of range; allowed 4..256"):
        RetrainConfig(predictor="p", embedding_dim=512)
    with pytest.raises(ValueError, match="metric_k=0 is out of range; allowed 1..1000"):
        TwoTowerConfig(metric_k=0)
    assert RetrainConfig(predictor="p", logq_correction=False).training_config().params().logq_correction is False


def test_the_web_process_validates_training_requests_without_the_dagster_definitions():
    probe = ("import sys\n"
             "from fastapi import HTTPException\n"
             "from twotower_pipeline.serving.routes.workbench import _training_config\n"
             "config = _training_config({'predictor': 'p', 'n_catalogue_negatives': 64})\n"
             "try:\n"
             "    _training_config({'predictor': 'p', 'validation_metric': 'f1'})\n"
             "except HTTPException as error:\n"
             "    print(error.status_code, error.detail)\n"
             "print(config['n_catalogue_negatives'], sorted(m for m in sys.modules if m.startswith(\n"
             "    ('dagster', 'twotower_pipeline.defs', 'twotower_pipeline.definitions'))))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    refused, accepted = result.stdout.strip().split("\n")
    assert refused.startswith("422 validation_metric='f1' is not one of ['auto', 'ndcg@k'"), refused
    assert accepted == "64 []"
