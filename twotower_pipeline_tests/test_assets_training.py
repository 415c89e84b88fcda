"""Training and embedding export, materialised on a small simulated slice against the real server."""

import threading

import dagster as dg
import numpy as np
import pymongo
import pytest

from twotower_pipeline import publishing
from twotower_pipeline.cli import main as cli_main
from twotower_pipeline.defs.assets.training import TwoTowerConfig
from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.store import embeddings, names

ASSETS = list(defs.assets)
FAST = {"epochs": 3, "batch_size": 128, "embedding_dim": 16, "hidden": 32}
RUN_FIELDS = {"run_id", "database", "flatten_collection", "user_column", "item_column", "predictor", "embedding_dim",
              "epochs", "stopping_rounds", "user_model_id", "item_model_id", "user_auc", "item_auc", "n_rows",
              "updated_at"}


TRAIN_AND_PUBLISH = ["two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics",
                     "runtime_embeddings"]
#: These tests are about publishing, not about model quality: a 3-epoch run passes this gate.
OPEN_GATE = {"concept_test_metrics": {"config": {"min_ndcg_gain_over_popularity": -1.0, "min_auc": 0.0}}}


def _train_and_export(resources, run_id, **config):
    return dg.materialize(
        ASSETS, resources=resources, selection=TRAIN_AND_PUBLISH,
        run_config={"ops": {"two_tower_model": {"config": {**FAST, "run_id": run_id, **config}}, **OPEN_GATE}},
    )


def _live_runs(store) -> dict:
    return {name: {d["run_id"] for d in store.collection(location).find({}, {"run_id": 1})}
            for name, location in (("users", publishing.USER_EMBEDDINGS), ("items", publishing.ITEM_EMBEDDINGS))}


def test_training_writes_the_run_document_and_both_embedding_collections(trained_slice, store):
    resources, traffic = trained_slice
    result = _train_and_export(resources, "run_a")
    assert result.success
    run = store.collection(names.RUNS).find_one({"run_id": "run_a"}, {"_id": 0})
    assert set(run) == RUN_FIELDS | {"live", "published_at"}  # the documented fields, and which run is served
    assert run["live"] is True
    assert run["user_model_id"] == "two_tower_user_run_a" and run["item_model_id"] == "two_tower_item_run_a"
    assert run["embedding_dim"] == 16 and run["predictor"] == traffic.logs.predictor
    assert 0.5 < run["user_auc"] <= 1.0 and 0.5 < run["item_auc"] <= 1.0  # planted structure is learnt
    metadata = result.asset_materializations_for_node("two_tower_model")[0].metadata
    assert metadata["run_id"].value == "run_a" and metadata["epochs_run"].value <= 3
    assert "data:image/png;base64," in metadata["training_curve"].value

    users = list(store.collection(publishing.USER_EMBEDDINGS).find({}, {"_id": 0}))
    items = list(store.collection(publishing.ITEM_EMBEDDINGS).find({}, {"_id": 0}))
    assert len(users) == len(traffic.logs.customer_features) and len(items) == len(traffic.logs.offer_matrix)
    assert set(users[0]) == {"run_id", "customer_id", "embedding"} and set(items[0]) == {"run_id", "offer", "embedding"}
    vectors = np.array([u["embedding"] for u in users])
    assert vectors.shape[1] == 16 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert {u["run_id"] for u in users} == {"run_a"}
    assert store.collection(publishing.USER_EMBEDDINGS).index_information()["customer_id_1"]["unique"]
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert len(checks) == 11 and all(checks.values()) and checks[("concept_test_metrics", "publish_gate")]
    # the run's own vectors are kept beside the live ones, for rollback
    kept = embeddings.Publisher(store).run_counts("run_a")
    assert kept == {"user": len(users), "item": len(items)}
    published = result.asset_materializations_for_node("runtime_embeddings")[0].metadata
    assert published["run_id"].value == "run_a" and published["previous_run_id"].value == "none"


def test_a_retrain_swaps_whole_runs_keeps_the_previous_and_rolls_back_both(
    trained_slice, store, mongo_uri, database_prefix, monkeypatch, capsys
):
    resources, _ = trained_slice
    assert _train_and_export(resources, "run_a").success
    assert _train_and_export(resources, "run_b", seed=3).success
    publisher = embeddings.Publisher(store)
    assert publisher.status()["live_run_id"] == "run_b" and publisher.status()["previous_run_id"] == "run_a"
    assert _live_runs(store) == {"users": {"run_b"}, "items": {"run_b"}}
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    assert cli_main(["rollback-embeddings"]) == 0
    assert "serves run run_a again" in capsys.readouterr().out
    assert _live_runs(store) == {"users": {"run_a"}, "items": {"run_a"}}
    assert publisher.status()["previous_run_id"] == "run_b"
    assert publisher.verify().problems() == []
    assert cli_main(["embeddings-status"]) == 0
    assert "live run run_a" in capsys.readouterr().out
    # the sources it restores from are the runs' own collections, untouched by either publish
    assert publisher.run_counts("run_b") == publisher.run_counts("run_a")


def test_a_reader_during_publish_sees_one_run_and_a_failed_swap_is_rolled_forward(trained_slice, store, monkeypatch):
    resources, _ = trained_slice
    assert _train_and_export(resources, "run_a").success
    live = store.collection(publishing.ITEM_EMBEDDINGS)
    seen: list[set] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append({d["run_id"] for d in live.find({}, {"run_id": 1})})

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert _train_and_export(resources, "run_b", seed=3).success
    finally:
        stop.set()
        thread.join()
    assert seen and all(len(runs) == 1 for runs in seen)
    assert {"run_b"} in seen

    # the swap fails at its last moment, before the first rename: the runtime keeps serving run_b
    rename = pymongo.collection.Collection.rename

    def killed(self, *args, **kwargs):
        raise RuntimeError("killed during publish")

    monkeypatch.setattr(pymongo.collection.Collection, "rename", killed)
    failed = dg.materialize(
        ASSETS, resources=resources, selection=TRAIN_AND_PUBLISH, raise_on_error=False,
        run_config={"ops": {"two_tower_model": {"config": {**FAST, "run_id": "run_c"}}, **OPEN_GATE}},
    )
    assert not failed.success
    assert _live_runs(store) == {"users": {"run_b"}, "items": {"run_b"}}
    publisher = embeddings.Publisher(store)
    assert publisher.status()["state"] == "publishing" and publisher.status()["target_run_id"] == "run_c"
    # the next publisher finishes what the journal says was started: run_c's sources are whole
    monkeypatch.setattr(pymongo.collection.Collection, "rename", rename)
    assert publisher.recover() == "an interrupted publish of run_c was rolled forward to run_c"
    assert _live_runs(store) == {"users": {"run_c"}, "items": {"run_c"}}
    assert publisher.status()["previous_run_id"] == "run_b"
    assert [n for n in store.database("logging").list_collection_names() if "__staging_" in n] == []


def test_a_pair_that_fails_verification_after_the_swap_is_replaced_by_the_last_verified_one(trained_slice, store):
    resources, _ = trained_slice
    assert _train_and_export(resources, "run_a").success
    publisher = embeddings.Publisher(store)
    assert dg.materialize(ASSETS, resources=resources, selection=TRAIN_AND_PUBLISH[:3], run_config={
        "ops": {"two_tower_model": {"config": {**FAST, "run_id": "run_b"}}}}).success
    # a vector of run_b's own collection goes bad after it was kept (counts still match)
    kept = store.collection(publisher.run_location("item", "run_b"))
    kept.update_one({}, {"$set": {"embedding": [2.0] + [0.0] * 15}})
    failed = dg.materialize(ASSETS, resources=resources,
                            selection=["two_tower_model", "concept_test_metrics", "runtime_embeddings"],
                            raise_on_error=False, run_config={"ops": {"two_tower_model": {"config": {
                                **FAST, "run_id": "run_b"}}, **OPEN_GATE}})
    assert not failed.success
    checks = {e.check_name: e.passed for e in failed.get_asset_check_evaluations()}
    assert checks["unit_vectors_of_embedding_dim"] is False and checks["same_run_in_both"] is True
    assert _live_runs(store) == {"users": {"run_a"}, "items": {"run_a"}}  # the last verified pair is back
    assert publisher.status()["live_run_id"] == "run_a"
    assert publisher.status()["history"][-1]["event"] == "restored after a failed publish"
    assert publisher.verify().problems() == []


def test_training_parameters_are_checked_before_the_frame_is_read(mongo):
    # no training frame exists: a bad parameter must be what stops the run, not the missing frame
    result = dg.materialize(ASSETS, resources=build_resources(mongo), selection=["two_tower_model"],
                            raise_on_error=False,
                            run_config={"ops": {"two_tower_model": {"config": {"embedding_dim": 0}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = str(failure.step_failure_data.error)
    assert "embedding_dim=0 is out of range" in message and "training_frame" not in message


def test_bad_training_parameters_are_refused_with_their_range():
    with pytest.raises(Exception, match=r"embedding_dim=512 is out of range; allowed 4\.\.256"):
        TwoTowerConfig(embedding_dim=512)
    with pytest.raises(Exception, match="epochs"):
        TwoTowerConfig(epochs=2.5)
    with pytest.raises(Exception, match="run_id"):
        TwoTowerConfig(run_id="a/b")


@pytest.mark.parametrize("bad, message", [({"embedding_dim": 0}, "embedding_dim=0 is out of range; allowed 4..256"),
                                          ({"epochs": -1}, "epochs=-1 is out of range")])
def test_the_retrain_job_refuses_bad_parameters_before_any_run_exists(bad, message):
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("retrain_job")
    with pytest.raises(dg.DagsterConfigMappingFunctionError) as refused:
        instance.create_run_for_job(job, run_config={"predictor": "p", **bad})
    assert message in str(refused.value.__cause__)
    assert instance.get_runs() == []


def test_export_cli_publishes_a_stored_run(trained_slice, store, mongo_uri, database_prefix, monkeypatch, capsys):
    resources, _ = trained_slice
    assert _train_and_export(resources, "run_a").success
    assert _train_and_export(resources, "run_b", seed=3).success
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    assert cli_main(["export-embeddings", "--run-id", "run_a"]) == 0
    assert _live_runs(store) == {"users": {"run_a"}, "items": {"run_a"}}
    assert cli_main(["export-embeddings", "--run-id", "nope"]) == 2
    assert "no artefact named 'two_tower_model' with run_id='nope'" in capsys.readouterr().err


def test_vectors_that_break_the_contract_are_named_before_publishing(store):
    good = np.eye(4)[:3]
    assert embeddings.vector_problems(["a", "b", "c"], good, 4) == []
    bad = good.copy()
    bad[0, 0] = np.nan
    bad[1] *= 2.0
    problems = embeddings.vector_problems(["a", "b", "b"], bad, 4)
    assert problems == ["1 vectors are not finite", "1 vectors are not unit length", "1 duplicate keys"]
    assert embeddings.vector_problems(["a", "b", "c"], good, 8) == ["vectors of shape (3, 4), expected (n, 8)"]
    assert embeddings.vector_problems(["a", "b"], good) == ["2 keys but 3 vectors"]
    # the check is where vectors are written: a caller that skips the export's path is refused too
    publisher = embeddings.Publisher(store)
    not_finite = good.copy()
    not_finite[2, 1] = np.inf
    with pytest.raises(ValueError, match="not keeping the item vectors of run run_x: 1 vectors are not finite"):
        publisher.write_run("item", "run_x", ["a", "b", "c"], not_finite)
    with pytest.raises(ValueError, match="expected \\(n, 8\\)"):
        publisher.write_run("item", "run_x", ["a", "b", "c"], good, embedding_dim=8)
    assert not store.database("logging").list_collection_names(filter={"name": {"$regex": "run_x"}})
