"""The publish and refresh sensors' ticks (`build_sensor_context`) against the real server and a
real Dagster instance, each run they request executed; the schedules' evaluations."""

import datetime as dt

import dagster as dg
import numpy as np
import pytest

from twotower_pipeline import offline, publishing
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.automation import publish_sensor, refresh_sensor
from twotower_pipeline.defs.jobs import RETRAIN_DAYS_ENV, RETRAIN_PREDICTOR_ENV, daily_flatten_schedule, \
    weekly_retrain_schedule
from twotower_pipeline.definitions import defs
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.store import embeddings, names

ASSETS = list(defs.assets)
FAST = {"epochs": 3, "batch_size": 128, "embedding_dim": 16, "hidden": 32}
OPEN_GATE = {"min_ndcg_gain_over_popularity": -1.0, "min_auc": 0.0}
CLOSED_GATE = {"min_ndcg_gain_over_popularity": 5.0}
JOB_ASSETS = {"publish_job": ["runtime_embeddings"], "rollback_job": ["runtime_embeddings"],
              "refresh_job": ["runtime_embeddings"],
              "score_job": ["batch_recommendations"], "publish_scores_job": ["published_recommendations"]}


def _train_and_gate(resources, instance, run_id: str, gate: dict, seed: int = 42):
    """What retrain_job does after the frame (the frame is the fixture's)."""
    result = dg.materialize(
        ASSETS, resources=resources, instance=instance,
        selection=["two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics"],
        raise_on_error=False,
        run_config={"ops": {"two_tower_model": {"config": {**FAST, "run_id": run_id, "seed": seed}},
                            "concept_test_metrics": {"config": gate}}})
    assert result.success is (gate is OPEN_GATE)
    verdict = offline.offline_metrics(resources["mongo"].store(), run_id)
    assert verdict["gate"]["passed"] is (gate is OPEN_GATE)


class Ticks:
    """Evaluates the sensor as the daemon would, cursor carried from tick to tick, and executes what
    it requests in the same instance (with the requests' tags, partition and config)."""

    def __init__(self, instance, mongo, resources, sensor=publish_sensor):
        self.instance, self.mongo, self.resources, self.cursor = instance, mongo, resources, None
        self.sensor = sensor

    def tick(self, mongo=None):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"mongo": mongo or self.mongo})
        result = self.sensor(context)
        self.cursor = context.cursor
        if isinstance(result, dg.SkipReason):
            return [], result.skip_message
        return list(result.run_requests), None

    def execute(self, request: dg.RunRequest) -> bool:
        return dg.materialize(ASSETS, resources=self.resources, instance=self.instance,
                              selection=JOB_ASSETS[request.job_name], tags=request.tags,
                              partition_key=request.partition_key, run_config=request.run_config,
                              raise_on_error=False).success


def _live(store) -> tuple:
    return (publishing.live_run_id(store),
            offline.scores_publisher(store, score_shards.get_partition_keys()).live_run_id())


def test_a_gated_run_goes_live_once_with_its_recommendations_and_a_rollback_sticks(trained_slice, store, mongo):
    resources, traffic = trained_slice
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, mongo, resources)
        requests, why = ticks.tick()
        assert requests == [] and why == "no new run passed the publish gate"

        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        [publish], _ = ticks.tick()
        assert (publish.job_name, publish.run_key) == ("publish_job", "run_a:embeddings")
        assert publish.run_config == {"ops": {"runtime_embeddings": {"config": {"run_id": "run_a"}}}}
        assert ticks.execute(publish)
        assert _live(store) == ("run_a", None)
        run = store.collection(names.RUNS).find_one({"run_id": "run_a"})
        assert run["live"] is True and run["published_at"] is not None

        shards, why = ticks.tick()
        assert sorted(r.partition_key for r in shards) == score_shards.get_partition_keys()
        assert {r.job_name for r in shards} == {"score_job"} and len({r.run_key for r in shards}) == len(shards)
        assert all(ticks.execute(r) for r in shards[:-1])
        # the shard without a run is asked for again, under the same run key (the daemon launches it once)
        again, why = ticks.tick()
        assert [r.run_key for r in again] == [shards[-1].run_key] and why is None
        assert ticks.execute(shards[-1])
        [scores], _ = ticks.tick()
        assert scores.job_name == "publish_scores_job" and ticks.execute(scores)
        assert _live(store) == ("run_a", "run_a")
        n_scored = store.collection(f"{offline.DATABASE}.{names.SCORES}").count_documents({"run_id": "run_a"})
        assert n_scored == min(5000, len(traffic.logs.customer_features))
        assert ticks.tick() == ([], "run run_a is live with its batch recommendations")
        assert ticks.tick() == ([], "no new run passed the publish gate")

        # a run that fails the gate is named and never published
        _train_and_gate(resources, instance, "run_b", CLOSED_GATE, seed=3)
        assert ticks.tick() == ([], "no new run passed the publish gate; failed the gate: run_b")
        assert _live(store) == ("run_a", "run_a")

        # the next passing run goes live; rolled back, it is not published again
        _train_and_gate(resources, instance, "run_c", OPEN_GATE, seed=5)
        [publish], _ = ticks.tick()
        assert publish.run_key == "run_c:embeddings" and ticks.execute(publish)
        assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["runtime_embeddings"],
                              run_config={"ops": {"runtime_embeddings": {"config": {"rollback": True}}}}).success
        assert publishing.live_run_id(store) == "run_a"
        assert store.collection(names.RUNS).find_one({"run_id": "run_c"})["live"] is False
        assert ticks.tick() == ([], "run run_c was published, then replaced by run_a: not publishing it again")
        assert ticks.tick() == ([], "no new run passed the publish gate")
        assert embeddings.Publisher(store).verify().problems() == []


def test_a_failed_publish_stops_the_chain_and_says_which_run_to_look_at(trained_slice, store, mongo):
    resources, _ = trained_slice
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, mongo, resources)
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        [publish], _ = ticks.tick()
        # the run's own vectors vanish before the publish runs: it fails, nothing changes
        store.database("logging").drop_collection(
            embeddings.Publisher(store).run_location("item", "run_a").partition(".")[2])
        assert not ticks.execute(publish)
        requests, why = ticks.tick()
        assert requests == [] and why.startswith("publishing run run_a failed (Dagster run ")
        assert "launch publish_job to retry" in why
        assert publishing.live_run_id(store) is None


def test_an_unreachable_server_fails_the_tick_without_the_password_and_the_next_tick_recovers(
        trained_slice, mongo):
    resources, _ = trained_slice
    unreachable = MongoResource(uri="mongodb://operator:s3cret-pw@127.0.0.1:9/?serverSelectionTimeoutMS=300")
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, mongo, resources)
        with pytest.raises(RuntimeError) as failed:
            ticks.tick(mongo=unreachable)
        assert "the publish sensor cannot read MongoDB" in str(failed.value)
        assert "s3cret-pw" not in str(failed.value) and "operator" not in str(failed.value)
        with pytest.raises(RuntimeError, match="the refresh sensor cannot read MongoDB") as failed:
            Ticks(instance, mongo, resources, sensor=refresh_sensor).tick(mongo=unreachable)
        assert "s3cret-pw" not in str(failed.value)
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        [publish], _ = ticks.tick()
        assert publish.run_key == "run_a:embeddings"


def _publish(resources, instance, run_id):
    assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["runtime_embeddings"],
                          run_config={"ops": {"runtime_embeddings": {"config": {"run_id": run_id}}}}).success


def _vector(collection, key_field, key):
    return np.array(collection.find_one({key_field: key})["embedding"])


def test_new_and_changed_customers_and_offers_join_the_live_run_and_stay_with_it(trained_slice, store, mongo):
    resources, traffic = trained_slice
    users, items = store.collection(publishing.USER_EMBEDDINGS), store.collection(publishing.ITEM_EMBEDDINGS)
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, mongo, resources, sensor=refresh_sensor)
        assert ticks.tick() == ([], "nothing is published yet: no live run to refresh")
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        _publish(resources, instance, "run_a")
        requests, why = ticks.tick()
        assert requests == [] and why.startswith("no customer or offer changed since ") and "run_a" in why
        n_users, n_items = users.count_documents({}), items.count_documents({})
        before = _vector(users, "customer_id", "sim_c001")

        # between retrains: one customer's features change, a customer and an offer arrive
        now = dt.datetime.now(dt.timezone.utc)
        customers, offers = store.collection(names.CUSTOMER_FEATURES), store.collection(names.OFFER_MATRIX)
        customers.update_one({"customer_id": "sim_c001"}, {"$set": {"segment": "segment_e", "age": 71,
                                                                    "region": "north", "updated_at": now}})
        customers.insert_one({"customer_id": "late_1", "segment": "segment_a", "age": 29, "region": "west",
                              "updated_at": now})
        offers.insert_one({"offer_name": "late_offer", "offer_id": 99, "category": "category_a", "popularity": 0.1,
                           "price": 9.5, "cost": 4.0, "static_offers": False, "updated_at": now})
        [refresh], _ = ticks.tick()
        config = refresh.run_config["ops"]["runtime_embeddings"]["config"]
        assert refresh.job_name == "refresh_job" and config["run_id"] == "run_a"
        assert ticks.tick()[0] == [refresh]  # not launched yet: the same request, the same run key
        assert ticks.execute(refresh)
        assert (users.count_documents({}), items.count_documents({})) == (n_users + 1, n_items + 1)
        assert users.find_one({"customer_id": "late_1"})["run_id"] == "run_a"
        assert items.find_one({"offer": "late_offer"})["run_id"] == "run_a"
        assert users.count_documents({"run_id": {"$ne": "run_a"}}) == 0
        assert not np.allclose(before, _vector(users, "customer_id", "sim_c001"))
        publisher = embeddings.Publisher(store)
        assert publisher.verify().problems() == []
        assert publisher.run_counts("run_a") == {"user": n_users + 1, "item": n_items + 1}
        requests, why = ticks.tick()
        assert requests == [] and f"since {config['refresh_until']}" in why

        # the refreshed vectors belong to run_a: replaced by run_b and rolled back, they come back
        refreshed = _vector(users, "customer_id", "late_1")
        _train_and_gate(resources, instance, "run_b", OPEN_GATE, seed=3)
        _publish(resources, instance, "run_b")
        assert users.find_one({"customer_id": "late_1"})["run_id"] == "run_b"  # in the features: embedded
        assert ticks.tick()[0] == []  # nothing changed since run_b was trained
        # a refresh of run_a while run_b is live is refused, and nothing changes
        refused = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["runtime_embeddings"],
                                 run_config=refresh.run_config, raise_on_error=False)
        assert not refused.success and users.count_documents({"run_id": "run_b"}) == n_users + 1
        assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["runtime_embeddings"],
                              run_config={"ops": {"runtime_embeddings": {"config": {"rollback": True}}}}).success
        assert np.allclose(refreshed, _vector(users, "customer_id", "late_1"))
        assert users.find_one({"customer_id": "late_1"})["run_id"] == "run_a"
        assert publisher.verify().problems() == []


def test_a_refresh_cut_short_after_it_was_kept_is_finished_by_the_next_publisher_call(
        trained_slice, store, mongo, monkeypatch):
    resources, _ = trained_slice
    users = store.collection(publishing.USER_EMBEDDINGS)
    with dg.instance_for_test() as instance:
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        _publish(resources, instance, "run_a")
        n_users = users.count_documents({})
        since = dt.datetime.now(dt.timezone.utc)
        store.collection(names.CUSTOMER_FEATURES).insert_one(
            {"customer_id": "late_2", "segment": "segment_b", "age": 41, "region": "east",
             "updated_at": since + dt.timedelta(seconds=1)})

        # the process dies after the vectors were kept with the run, before the live upsert
        def killed(*args, **kwargs):
            raise RuntimeError("killed during the refresh")

        monkeypatch.setattr(embeddings.Publisher, "_apply_refreshed", killed)
        with pytest.raises(RuntimeError, match="killed during the refresh"):
            publishing.refresh_live_run(store, "run_a", since, since + dt.timedelta(seconds=5))
        monkeypatch.undo()
        publisher = embeddings.Publisher(store)
        assert users.count_documents({}) == n_users and publisher.status()["state"] == "refreshing"
        assert publisher.verify(read_vectors=False).problems() == [
            f"user vectors: {n_users} documents, expected {n_users + 1}"]
        # and a live document lost meanwhile: re-applying the refresh is not enough, the pair is rebuilt
        users.delete_one({"customer_id": "sim_c002"})
        assert publisher.recover() == "an interrupted refresh of run run_a was finished"
        assert users.count_documents({}) == n_users + 1 and publisher.status()["state"] == "live"
        assert users.count_documents({"customer_id": {"$in": ["sim_c002", "late_2"]}, "run_id": "run_a"}) == 2
        assert publisher.verify().problems() == []


def test_the_weekly_retrain_names_its_window_and_skips_without_a_predictor(monkeypatch):
    monday = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.timezone.utc)
    monkeypatch.delenv(RETRAIN_PREDICTOR_ENV, raising=False)
    skipped = weekly_retrain_schedule(dg.build_schedule_context(scheduled_execution_time=monday))
    assert isinstance(skipped, dg.SkipReason) and RETRAIN_PREDICTOR_ENV in skipped.skip_message

    monkeypatch.setenv(RETRAIN_PREDICTOR_ENV, "ml100k")
    monkeypatch.setenv(RETRAIN_DAYS_ENV, "28")
    request = weekly_retrain_schedule(dg.build_schedule_context(scheduled_execution_time=monday))
    assert request.run_config == {"predictor": "ml100k", "from_date": "2026-11-02", "to_date": "2026-11-30"}
    assert request.run_key == "retrain:ml100k:2026-11-30"
    # what the schedule asks for is a valid launch of retrain_job
    instance = dg.DagsterInstance.ephemeral()
    run = instance.create_run_for_job(defs.resolve_job_def("retrain_job"), run_config=request.run_config)
    assert run.run_config == request.run_config

    monkeypatch.setenv(RETRAIN_DAYS_ENV, "a month")
    skipped = weekly_retrain_schedule(dg.build_schedule_context(scheduled_execution_time=monday))
    assert isinstance(skipped, dg.SkipReason) and "'a month' is not a whole number" in skipped.skip_message
    monkeypatch.delenv(RETRAIN_DAYS_ENV)
    everything = weekly_retrain_schedule(dg.build_schedule_context(scheduled_execution_time=monday))
    assert everything.run_config == {"predictor": "ml100k", "to_date": "2026-11-30"}


def test_the_nightly_flatten_asks_for_the_day_that_just_ended():
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 3, 6, 0, 30, tzinfo=dt.timezone.utc),
        repository_def=defs.get_repository_def())
    [request] = daily_flatten_schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-03-05"
