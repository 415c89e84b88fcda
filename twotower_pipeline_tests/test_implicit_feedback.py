"""A bring-your-own file of accepts only (implicit feedback) through the pipeline the UI runs:
import -> runtime logs -> flatten -> training frame -> train -> gate -> publish, materialised in
process and launched from a real `dagster dev` over its GraphQL API; and a file where nothing is
accepted, refused by the training frame's blocking check."""

import dagster as dg
import numpy as np
import pandas as pd

from twotower_pipeline import offline, publishing
from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.ingest.importer import load_exposures_file
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.store import embeddings, names
from twotower_pipeline_tests.test_assets_training import TRAIN_AND_PUBLISH
from twotower_pipeline_tests.test_webserver import LAUNCH, STATUS, _graphql, _wait, dagster_dev

ASSETS = list(defs.assets)
RANGE = {"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"}
FLATTEN = [dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
           dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]
N_CUSTOMERS, N_OFFERS, N_GROUPS, PER_CUSTOMER = 160, 40, 4, 8


def _file(path, accepted: int) -> str:
    """Customers of segment g accepted PER_CUSTOMER of the 10 offers of group g, over three days."""
    rng = np.random.default_rng(5)
    rows = []
    for c in range(N_CUSTOMERS):
        group = c % N_GROUPS
        for k, o in enumerate(rng.choice(np.arange(group * 10, group * 10 + 10), PER_CUSTOMER, replace=False)):
            when = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=int(rng.integers(0, 72)), seconds=k)
            rows.append({"customer_id": f"c{c:03d}", "offer": f"offer_{o:02d}", "accepted": accepted,
                         "timestamp": when.isoformat().replace("+00:00", "Z"), "segment": f"s{group}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _load_and_frame(mongo, store, path):
    write_runtime_logs(store, load_exposures_file(path, predictor="accepts_only"))
    resources = build_resources(mongo)
    assert dg.materialize(ASSETS, resources=resources, tags=RANGE, selection=FLATTEN).success
    return resources


def test_a_file_of_accepts_only_trains_passes_the_gate_and_is_published(tmp_path, mongo, store):
    resources = _load_and_frame(mongo, store, _file(tmp_path / "accepts.csv", accepted=1))
    framed = dg.materialize(ASSETS, resources=resources, selection=["training_frame"], run_config={
        "ops": {"training_frame": {"config": {"predictor": "accepts_only"}}}})
    [check] = [e for e in framed.get_asset_check_evaluations() if e.check_name == "has_accepts"]
    assert check.passed and check.metadata["feedback"].value.startswith("implicit")
    assert check.metadata["accept_rate"].value == 1.0

    # the default gate (beat popularity by 0.01 NDCG@10, AUC above 0.5), not an opened one
    trained = dg.materialize(ASSETS, resources=resources, selection=TRAIN_AND_PUBLISH, run_config={
        "ops": {"two_tower_model": {"config": {"run_id": "implicit_run", "epochs": 12, "batch_size": 128}}}})
    assert trained.success
    [model] = [m for m in trained.asset_materializations_for_node("two_tower_model")]
    parameters = model.metadata["parameters"].value
    assert parameters["loss"] == "softmax" and parameters["user_history"] == "on"
    record = offline.offline_metrics(store, "implicit_run")
    assert record["gate"]["passed"], record["gate"]
    two_tower, popularity = record["metrics"]["two_tower"], record["metrics"]["popularity"]
    assert two_tower["ndcg@10"] > popularity["ndcg@10"] + 0.1
    users = store.collection(publishing.USER_EMBEDDINGS)
    assert users.count_documents({"run_id": "implicit_run"}) == N_CUSTOMERS
    assert store.collection(publishing.ITEM_EMBEDDINGS).count_documents({"run_id": "implicit_run"}) == N_OFFERS
    assert store.collection(names.RUNS).count_documents({"run_id": "implicit_run"}) == 1


def test_a_file_where_nothing_is_accepted_is_refused_before_training(tmp_path, mongo, store):
    resources = _load_and_frame(mongo, store, _file(tmp_path / "declines.csv", accepted=0))
    result = dg.materialize(ASSETS, resources=resources, raise_on_error=False,
                            selection=["training_frame", "two_tower_model"], run_config={"ops": {
                                "training_frame": {"config": {"predictor": "accepts_only"}},
                                "two_tower_model": {"config": {"run_id": "never", "epochs": 2}}}})
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "has_accepts"]
    assert not check.passed and check.metadata["feedback"].value == "none"
    assert "nothing to learn" in check.description
    assert not result.asset_materializations_for_node("two_tower_model")
    assert store.collection(names.RUNS).count_documents({}) == 0


def test_a_file_of_accepts_only_trains_from_the_ui_and_goes_live(tmp_path, mongo_uri, database_prefix, store):
    """The operator's path: the file loaded, then three jobs launched from the UI (flatten the
    range; retrain: build the frame and train with the launchpad's parameters, through the gate;
    publish the run); the run is live afterwards and the run documents say so."""
    write_runtime_logs(store, load_exposures_file(_file(tmp_path / "accepts.csv", accepted=1),
                                                  predictor="accepts_only"))
    with dagster_dev(tmp_path, mongo_uri, database_prefix) as (port, name):
        def launch(job: str, run_config: dict, tags: dict | None = None) -> str:
            params = {"selector": {"repositoryLocationName": name, "repositoryName": "__repository__",
                                   "jobName": job},
                      "runConfigData": run_config, "mode": "default",
                      "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}
            launched = _graphql(port, LAUNCH, {"params": params})["data"]["launchPipelineExecution"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]

            def ended():
                status = _graphql(port, STATUS, {"id": run_id})["data"]["runOrError"]["status"]
                return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

            assert _wait(ended, timeout=300) == "SUCCESS", job
            return run_id

        launch("flatten_job", {}, RANGE)
        launch("retrain_job", {"predictor": "accepts_only", "run_id": "ui_implicit", "epochs": 12, "batch_size": 128})
        launch("publish_job", {"ops": {"runtime_embeddings": {"config": {"run_id": "ui_implicit"}}}})
    assert embeddings.Publisher(store).status()["live_run_id"] == "ui_implicit"
    assert store.collection(publishing.USER_EMBEDDINGS).count_documents({"run_id": "ui_implicit"}) == N_CUSTOMERS
    assert offline.offline_metrics(store, "ui_implicit")["gate"]["passed"]
    assert store.collection(names.RUNS).find_one({"run_id": "ui_implicit"})["live"] is True
