"""Offline scoring materialised on a small simulated slice against the real server: the metrics and
the gate, the concept test, batch recommendations and their whole-run swap."""

import json

import dagster as dg
import numpy as np
import pytest

from twotower_pipeline import offline, publishing
from twotower_pipeline.cli import main as cli_main
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.model import metrics
from twotower_pipeline.store import artefacts, embeddings, names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.test_assets_training import ASSETS, FAST, OPEN_GATE, TRAIN_AND_PUBLISH, _live_runs

SHARDS = score_shards.get_partition_keys()
ALL_SHARDS = {"dagster/asset_partition_range_start": SHARDS[0], "dagster/asset_partition_range_end": SHARDS[-1]}
SCORES = f"logging.{names.SCORES}"


def _train(resources, instance, run_id, gate=OPEN_GATE, **config):
    return dg.materialize(ASSETS, resources=resources, instance=instance, selection=TRAIN_AND_PUBLISH,
                          raise_on_error=False, run_config={
                              "ops": {"two_tower_model": {"config": {**FAST, "run_id": run_id, **config}}, **gate}})


def _score(resources, instance, tags=ALL_SHARDS, publish=True, **config):
    selection = ["batch_recommendations"] + (["published_recommendations"] if publish else [])
    run_config = {"ops": {"batch_recommendations": {"config": config}}} if config else None
    return dg.materialize(ASSETS, resources=resources, instance=instance, selection=selection, tags=tags,
                          run_config=run_config, raise_on_error=False)


def _failure(result) -> str:
    return "\n".join(str(e.step_failure_data.error) for e in result.all_events
                     if e.event_type == dg.DagsterEventType.STEP_FAILURE)


def _live_score_runs(store) -> set:
    return {d["run_id"] for d in store.collection(SCORES).find({}, {"run_id": 1})}


def test_the_metrics_show_the_run_against_baselines_and_the_probe_customers(trained_slice, store):
    resources, _ = trained_slice
    with dg.DagsterInstance.ephemeral() as instance:
        result = _train(resources, instance, "run_a")
    assert result.success
    metadata = result.asset_materializations_for_node("concept_test_metrics")[0].metadata
    table = metadata["model_vs_baselines"].value
    assert all(f"| {name} |" in table for name in ("**two_tower**", "popularity", "random", "ease"))
    assert "Gate: **passed**" in table and "data:image/png;base64," in metadata["metrics_plot"].value
    assert metadata["probe_customers"].value.count("\n| sim_c") == 5  # five probes, each with its top offers
    record = offline.offline_metrics(store, "run_a")
    names_ = [f"{m}@{k}" for m in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage") for k in metrics.KS]
    for model in ("two_tower", "popularity", "random", "ease"):
        figures = record["metrics"][model]
        assert all(np.isfinite(figures[n]) for n in [*names_, "mrr", "auc", "user_auc", "item_auc"]), model
    assert record["metrics"]["random"]["ndcg@10"] < record["metrics"]["popularity"]["ndcg@10"]
    # the simulated logs carry no propensities: the replay says so and estimates nothing
    assert metadata["replay"].value.startswith("No estimate: no logged propensities")
    assert record["replay"]["available"] is False and record["replay"]["without_propensity"] > 0
    # with propensities logged, the run's own vectors replay the held-out exposures
    frame = SlicedCollection(store, names.TRAINING_FRAME).read(columns=["customer_id", "offer", "accepted", "rank"])
    frame["propensity"] = np.where(np.arange(len(frame)) % 2 == 0, 0.5, np.nan)
    replayed = offline.replay(store, "run_a", frame, seed=1)
    assert replayed["available"] and replayed["without_propensity"] == len(frame) // 2
    assert replayed["rounds"] + replayed["without_vector"] == len(frame) - len(frame) // 2
    ips = replayed["estimates"]["ips"]
    assert ips["matching"] > 0 and ips["low"] <= ips["value"] <= ips["high"]
    assert offline.replay_gate(replayed, replayed, 0.0) == (True, None)
    worse = {**replayed, "estimates": {**replayed["estimates"], "snips": {
        **replayed["estimates"]["snips"], "value": replayed["estimates"]["snips"]["value"] - 0.2}}}
    passes, why = offline.replay_gate(worse, replayed, 0.1)
    assert not passes and "below the live run's" in why
    not_compared = "replay not compared: " + record["replay"]["reason"]
    assert offline.replay_gate(record["replay"], replayed, 0.1) == (True, not_compared)
    assert record["gate"]["passed"] and record["split"]["holdout"] == "customer"
    frame = SlicedCollection(store, names.TRAINING_FRAME).read()
    per_customer = frame.groupby("customer_id").size()
    assert record["split"]["held_out_exposures"] == int(np.floor(per_customer * 0.2 + 0.5).sum())


def test_a_run_that_fails_the_gate_is_neither_published_nor_scored(trained_slice, store, mongo_uri, database_prefix,
                                                                   monkeypatch, capsys):
    resources, _ = trained_slice
    with dg.DagsterInstance.ephemeral() as instance:
        assert _train(resources, instance, "run_a").success
        assert _score(resources, instance).success
        before = store.collection(SCORES).count_documents({})
        strict = {"concept_test_metrics": {"config": {"min_ndcg_gain_over_popularity": 1.0}}}
        failed = _train(resources, instance, "run_b", gate=strict, seed=3)
        assert not failed.success
        [gate] = [e for e in failed.get_asset_check_evaluations() if e.check_name == "publish_gate"]
        assert not gate.passed and "does not beat popularity" in gate.metadata["reasons"].value
        assert failed.asset_materializations_for_node("runtime_embeddings") == []
        assert _live_runs(store) == {"users": {"run_a"}, "items": {"run_a"}}  # the runtime keeps run_a
        assert offline.offline_metrics(store, "run_b")["gate"]["passed"] is False
        # run_b is now the newest model: scoring it is refused, and the live scores stay run_a's
        scored = _score(resources, instance)
        assert not scored.success and "run run_b did not pass the publish gate" in _failure(scored)
        assert _live_score_runs(store) == {"run_a"} and store.collection(SCORES).count_documents({}) == before
        assert f"{names.SCORES}__run_run_b" not in store.database("logging").list_collection_names()
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    assert cli_main(["export-embeddings", "--run-id", "run_b"]) == 2
    assert "run run_b did not pass the publish gate" in capsys.readouterr().err
    assert _live_runs(store) == {"users": {"run_a"}, "items": {"run_a"}}


def test_the_concept_test_ranks_offers_and_names_what_is_unknown(trained_slice, store, mongo_uri, database_prefix,
                                                                 monkeypatch, capsys):
    resources, traffic = trained_slice
    with dg.DagsterInstance.ephemeral() as instance:
        assert _train(resources, instance, "run_a").success
    customer = str(traffic.logs.customer_features["customer_id"].iloc[0])
    offers = [str(o) for o in traffic.logs.offer_matrix["offer_name"].iloc[:4]]
    answer = offline.concept_test(store, "run_a", customer, offers)
    assert answer["success"] and answer["run_id"] == "run_a" and answer["customer_id"] == customer
    assert sorted(r["offer"] for r in answer["ranked"]) == sorted(offers)
    scores = [r["score"] for r in answer["ranked"]]
    assert scores == sorted(scores, reverse=True)
    user = store.collection(publishing.USER_EMBEDDINGS).find_one({"customer_id": customer})["embedding"]
    items = {d["offer"]: d["embedding"] for d in store.collection(publishing.ITEM_EMBEDDINGS).find()}
    assert scores[0] == pytest.approx(float(np.dot(user, items[answer["ranked"][0]["offer"]])), abs=1e-5)
    partly = offline.concept_test(store, "run_a", customer, [*offers[:2], "no_such_offer"])
    assert not partly["success"] and "no_such_offer" in partly["detail"] and len(partly["ranked"]) == 2
    for run_id, customer_id, reason in (("run_a", "nobody", "unknown customer nobody"),
                                        ("run_zz", customer, "unknown run run_zz"),
                                        ("run_a", {"$gt": ""}, "must be a non-empty string"),
                                        ("../x", customer, "is not a run id")):
        refused = offline.concept_test(store, run_id, customer_id, offers)
        assert refused["success"] is False and reason in refused["detail"] and refused["ranked"] == []
    whole = offline.concept_test(store, "run_a", customer)
    assert len(whole["ranked"]) == len(traffic.logs.offer_matrix) and "whole catalogue" in whole["detail"]
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    assert cli_main(["concept-test", "--run-id", "run_a", "--customer-id", customer, "--offers", *offers]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ranked"] == json.loads(json.dumps(answer["ranked"]))


def test_batch_recommendations_follow_the_contract_and_the_eligibility_rules(trained_slice, store):
    resources, traffic = trained_slice
    catalogue = sorted(str(o) for o in traffic.logs.offer_matrix["offer_name"])
    with dg.DagsterInstance.ephemeral() as instance:
        assert _train(resources, instance, "run_a").success
        result = _score(resources, instance, top_k=5, max_users=50, exclude_offers=[catalogue[0]],
                        offer_filter=json.dumps({"offer_name": {"$ne": catalogue[1]}}))
    assert result.success, _failure(result)
    documents = list(store.collection(SCORES).find({}, {"_id": 0}))
    assert len(documents) == 50  # max_users caps the customers over all shards
    assert store.collection(SCORES).index_information()["customer_id_1"]["unique"]
    frame = SlicedCollection(store, names.TRAINING_FRAME).read()
    accepted = frame[frame["accepted"] == 1].groupby("customer_id")["offer"].agg(set)
    users = {d["customer_id"]: np.array(d["embedding"]) for d in store.collection(publishing.USER_EMBEDDINGS).find()}
    items = {d["offer"]: np.array(d["embedding"]) for d in store.collection(publishing.ITEM_EMBEDDINGS).find()}
    for document in documents:
        assert set(document) == {"run_id", "customer_id", "ranked", "created_at"} and document["run_id"] == "run_a"
        eligible = [o for o in catalogue[2:] if o not in accepted.get(document["customer_id"], set())]
        cosine = {o: float(users[document["customer_id"]] @ items[o]) for o in eligible}
        best = sorted(eligible, key=lambda o: -cosine[o])[:5]
        assert [r["offer"] for r in document["ranked"]] == best
        assert [r["score"] for r in document["ranked"]] == pytest.approx([cosine[o] for o in best], abs=1e-5)


def test_scores_are_swapped_whole_per_run_once_every_shard_is_scored(trained_slice, store):
    resources, _ = trained_slice
    with dg.DagsterInstance.ephemeral() as instance:
        assert _train(resources, instance, "run_a").success
        assert _score(resources, instance).success
        first = store.collection(SCORES).count_documents({})
        assert _train(resources, instance, "run_b", seed=3).success
        one_shard = dg.materialize(ASSETS, resources=resources, instance=instance,
                                   selection=["batch_recommendations"], partition_key=SHARDS[0])
        assert one_shard.success
        early = dg.materialize(ASSETS, resources=resources, instance=instance,
                               selection=["published_recommendations"], raise_on_error=False)
        assert not early.success and f"lacks slices {SHARDS[1:]}" in _failure(early)
        assert _live_score_runs(store) == {"run_a"} and store.collection(SCORES).count_documents({}) == first
        rest = {"dagster/asset_partition_range_start": SHARDS[1], "dagster/asset_partition_range_end": SHARDS[-1]}
        assert _score(resources, instance, tags=rest).success
    assert _live_score_runs(store) == {"run_b"} and store.collection(SCORES).count_documents({}) == first
    journal = store.collection("ecosystem_meta.two_tower_publish").find_one({"_id": f"logging.{names.SCORES}"})
    assert journal["live_run_id"] == "run_b" and journal["previous_run_id"] == "run_a"


def test_offline_scoring_refuses_a_training_frame_rebuilt_after_the_run(trained_slice, store):
    resources, traffic = trained_slice
    with dg.DagsterInstance.ephemeral() as instance:
        assert _train(resources, instance, "run_a").success
        assert dg.materialize(ASSETS, resources=resources, instance=instance, selection=["training_frame"],
                              run_config={"ops": {"training_frame": {"config": {
                                  "predictor": traffic.logs.predictor}}}}).success
        again = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["concept_test_metrics"],
                               raise_on_error=False)
    assert not again.success and "training frame was rebuilt after run run_a trained" in _failure(again)


def test_a_runs_vectors_come_from_its_snapshot_or_without_it_from_its_collection(store):
    publisher = embeddings.Publisher(store, offline.DATABASE)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"c{i:02d}" for i in range(30)]
    publisher.write_run("user", "run_a", keys, vectors)
    assert publisher.run_snapshot("user", "run_a") is not None
    from_snapshot = offline.run_vectors(store, "run_a", "user")
    location = publisher.run_location("user", "run_a")
    artefacts.delete_artefact(store, embeddings.snapshot_name(location))  # e.g. killed between the two writes
    from_collection = offline.run_vectors(store, "run_a", "user")
    for found_keys, found in (from_snapshot, from_collection):
        order = np.argsort(found_keys)
        assert [found_keys[i] for i in order] == keys
        np.testing.assert_allclose(found[order], vectors, atol=1e-6)
    # a snapshot of an earlier write of the run is never taken for the committed one
    publisher.write_run("user", "run_a", keys, vectors[::-1].copy())
    stale = embeddings.VectorSnapshot(keys, vectors.astype(np.float32), "an-earlier-write")
    artefacts.replace_artefact(store, embeddings.snapshot_name(location), stale)
    assert publisher.run_snapshot("user", "run_a") is None
    found_keys, found = offline.run_vectors(store, "run_a", "user", keys=keys[:3])
    np.testing.assert_allclose(found[np.argsort(found_keys)], vectors[::-1][:3], atol=1e-6)
    with pytest.raises(LookupError, match="has no item vectors kept"):
        offline.run_vectors(store, "run_a", "item")
