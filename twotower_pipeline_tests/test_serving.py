"""The serving side against the real server: the similarity scorer on its own, then the runtime,
sidecar and workbench endpoints of `create_app` (in-process ASGI client) over one published run.

Every documented request and response field is pinned; rankings are checked against numpy on the
vectors read back from the live collections; every client mistake is a 4xx with its reason.
"""

import datetime as dt

import numpy as np
import pytest

from twotower_pipeline import publishing
from twotower_pipeline.serving.app import create_app
from twotower_pipeline.serving.scorer import SimilarityScorer
from twotower_pipeline.store import names

from twotower_pipeline_tests.conftest import FAST
from twotower_pipeline_tests.serving_client import keyed_client, keyed_settings


# --- the scorer on its own ---------------------------------------------------------------------------
def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_scorer_ranks_by_cosine_or_dot_like_numpy_and_skips_offers_without_a_vector():
    rng = np.random.default_rng(3)
    offers = [f"o{i}" for i in range(300)]
    vectors = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(0.5, 2.0, size=(300, 1))
    user = rng.normal(size=16).astype(np.float32)
    catalogue = ["new_offer", *offers[::-1], "retired"]
    cosine = SimilarityScorer("r1", offers, vectors, catalogue=catalogue)
    assert cosine.skipped == ["new_offer", "retired"] and len(cosine) == 300
    ranked = cosine.rank(user * 7.0, 10)  # the customer vector's length does not matter for cosine
    expected = _unit(vectors) @ (user / np.linalg.norm(user))
    order = np.argsort(-expected, kind="stable")[:10]
    assert ranked.offers == [offers[i] for i in order]
    assert np.allclose(ranked.scores, expected[order], atol=1e-5)

    dot = SimilarityScorer("r1", offers, vectors, metric="dot").rank(user, 5)
    raw = vectors @ user
    assert dot.offers == [offers[i] for i in np.argsort(-raw, kind="stable")[:5]]
    assert np.allclose(dot.scores, np.sort(raw)[::-1][:5], rtol=1e-5)

    eligible = cosine.rank(user, 10, eligible=["o5", "o17", "o5", "nope", "new_offer"])
    assert sorted(eligible.offers) == ["o17", "o5"] and eligible.unknown_eligible == ("nope", "new_offer")
    assert eligible.scores == sorted(eligible.scores, reverse=True) and eligible.ineligible == 298
    assert cosine.rank(user, 1000).offers.__len__() == 300
    assert cosine.rank(user, 5, eligible=[]).offers == []


def test_the_scorer_refuses_vectors_it_cannot_rank_by():
    scorer = SimilarityScorer("r1", ["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="length 3"):
        scorer.rank(np.ones(3), 1)
    with pytest.raises(ValueError, match="zero"):
        scorer.rank(np.zeros(2), 1)
    with pytest.raises(ValueError, match="not finite"):
        scorer.rank(np.array([np.nan, 1.0]), 1)
    with pytest.raises(ValueError, match="duplicate"):
        SimilarityScorer("r1", ["a", "a"], np.eye(2, dtype=np.float32))
    ties = SimilarityScorer("r1", ["x", "y", "z"], np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32))
    assert ties.rank(np.array([1.0, 0.0]), 3).offers == ["x", "z", "y"]  # ties keep the catalogue order


# --- one published run for the endpoints -------------------------------------------------------------
@pytest.fixture(scope="module")
def served(published_run):
    return published_run


def _client(store, **settings):
    """Sends each group's key (test_serving_security checks the keys themselves)."""
    return keyed_client(create_app(store, keyed_settings(reload_s=3600, **settings)))


def _live_vectors(store):
    users = {d["customer_id"]: np.array(d["embedding"]) for d in store.collection(publishing.USER_EMBEDDINGS).find()}
    items = {d["offer"]: np.array(d["embedding"]) for d in store.collection(publishing.ITEM_EMBEDDINGS).find()}
    return users, items


def _invocation(traffic, customer="sim_c001", **fields):
    return {"campaign": traffic.logs.predictor, "subcampaign": "s1", "channel": "app", "customer": customer,
            "numberoffers": 4, "userid": "u1", "in_params": {}, **fields}


def test_invocations_rank_the_live_offers_and_log_the_documented_presented_document(served):
    store, _, traffic = served
    users, items = _live_vectors(store)
    with _client(store) as client:
        reply = client.post("/invocations", json=_invocation(traffic))
        spelled = client.post("/invocations", json={**_invocation(traffic, customer="sim_c002"),
                                                    "sub-campaign": "s2", "subcampaign": None})
    assert reply.status_code == 200 and spelled.status_code == 200, (reply.text, spelled.text)
    body = reply.json()
    assert set(body) == {"final_result", "explore", "uuid"} and body["explore"] == 0
    assert [item["rank"] for item in body["final_result"]] == [1, 2, 3, 4]
    assert all(set(item["result"]) == {"offer", "offer_name", "score"} for item in body["final_result"])
    names_, cosines = zip(*sorted(((o, float(v @ users["sim_c001"])) for o, v in items.items()),
                                  key=lambda pair: -pair[1]))
    assert [item["result"]["offer"] for item in body["final_result"]] == list(names_[:4])
    assert np.allclose([item["result"]["score"] for item in body["final_result"]], cosines[:4], atol=1e-5)

    # the client closed: the writer flushed; the document is the one the flatten reads
    logged = store.collection(names.PRESENTED).find_one({"uuid": body["uuid"]})
    assert logged["predictor"] == traffic.logs.predictor and logged["run_id"] == "run_a"
    assert logged["api_params"]["customer"] == "sim_c001" and logged["api_params"]["channel"] == "app"
    assert logged["params"] == [{"key": "customer", "value": "sim_c001"}]
    assert abs(logged["date_log"] - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    offer_matrix = {d["offer_name"]: d for d in store.collection(names.OFFER_MATRIX).find()}
    for shown, sent in zip(logged["final_result"], body["final_result"]):
        assert shown["rank"] == sent["rank"] and shown["result"]["offer"] == sent["result"]["offer"]
        assert shown["result"]["final_score"] == sent["result"]["score"]
        assert shown["result"]["price"] == offer_matrix[sent["result"]["offer"]]["price"]
    second = store.collection(names.PRESENTED).find_one({"uuid": spelled.json()["uuid"]})
    assert second["api_params"]["subcampaign"] == "s2"


def test_responses_are_logged_against_their_presented_request(served):
    store, _, traffic = served
    with _client(store) as client:
        shown = client.post("/invocations", json=_invocation(traffic, customer="sim_c003")).json()
        offer = shown["final_result"][1]["result"]["offer_name"]
        accepted = client.post("/response", json={"uuid": shown["uuid"], "offers_accepted": [{"offer_name": offer}],
                                                  "channel_name": "app"})
        unknown = client.post("/response", json={"uuid": "no-such-request", "offers_accepted": []})
        not_shown = client.post("/response", json={"uuid": shown["uuid"],
                                                   "offers_accepted": [{"offer_name": "never_shown"}]})
    assert accepted.status_code == 200
    assert accepted.json() == {"uuid": shown["uuid"], "offers_accepted": 1, "logged": True}
    assert unknown.status_code == 404 and "no-such-request" in unknown.json()["detail"]
    assert not_shown.status_code == 422 and "never_shown" in not_shown.json()["detail"]
    [logged] = store.collection(names.RESPONSES).find({"uuid": shown["uuid"]})
    assert logged["response"] == {"offers_accepted": [{"offer_name": offer, "offer": offer}], "channel_name": "app"}
    assert logged["predictor"] == traffic.logs.predictor
    assert logged["response_log"]["uuid"] == shown["uuid"] and len(logged["response_log"]["final_result"]) == 4


@pytest.mark.parametrize("change, status, reason", [
    ({"customer": {"$gt": ""}}, 422, "customer"),
    ({"customer": ""}, 422, "customer"),
    ({"customer": 17}, 422, "customer"),
    ({"numberoffers": 0}, 422, "numberoffers"),
    ({"numberoffers": 101}, 422, "numberoffers"),
    ({"numberoffers": "4"}, 422, "numberoffers"),
    ({"campaign": "unknown_campaign"}, 404, "unknown campaign"),
    ({"numberOffers": 3}, 422, "numberOffers"),
    ({"in_params": {"$where": "1"}}, 422, "in_params"),
    ({"in_params": {"weather": {"$ne": 1}}}, 422, "in_params"),
    ({"customer": "never_seen_customer"}, 404, "no vector"),
])
def test_client_mistakes_are_refused_with_the_reason(served, change, status, reason):
    store, _, traffic = served
    before = store.collection(names.PRESENTED).count_documents({})
    with _client(store) as client:
        reply = client.post("/invocations", json={**_invocation(traffic), **change})
    assert reply.status_code == status and reason in reply.text, reply.text
    assert store.collection(names.PRESENTED).count_documents({}) == before  # nothing logged


def test_bodies_are_capped_and_an_api_key_is_asked_for_when_set(served):
    store, _, traffic = served
    with _client(store, max_body_bytes=2000) as client:
        big = client.post("/invocations", json={**_invocation(traffic), "userid": "x" * 5000})
        streamed = client.post("/invocations", content=iter([b"{" + b" " * 3000 + b"}"]),
                               headers={"content-type": "application/json"})
        broken = client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
    assert big.status_code == 413 and streamed.status_code == 413 and broken.status_code == 422
    with _client(store, runtime_key="s3cret-key") as client:
        assert client.post("/invocations", json=_invocation(traffic)).status_code == 401
        assert client.post("/invocations", json=_invocation(traffic),
                           headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/invocations", json=_invocation(traffic),
                           headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_a_customer_without_a_vector_is_embedded_by_the_sidecar(served):
    """(That two runs are never mixed, a publish swapping customers and offers together, is
    test_serving_live's.)"""
    store, resources, traffic = served
    store.collection(names.CUSTOMER_FEATURES).insert_one(
        {"customer_id": "walk_in", "segment": "segment_a", "age": 33, "region": "west"})
    with _client(store, sidecar="local") as client:
        reply = client.post("/invocations", json=_invocation(traffic, customer="walk_in"))
        model = client.post("/pytorch/invocations", json={
            "model_id": "two_tower_user_run_a", "instances": [{"customer_id": "walk_in"}]}).json()
    assert reply.status_code == 200, reply.text
    logged = store.collection(names.PRESENTED).find_one({"uuid": reply.json()["uuid"]})
    assert logged["vector_source"] == "sidecar"
    _, items = _live_vectors(store)
    walk_in = np.array(model["predictions"][0]["embedding"])
    best = max(items, key=lambda o: float(items[o] @ walk_in))
    assert reply.json()["final_result"][0]["result"]["offer"] == best


def test_the_runtime_reloads_the_offers_when_the_refresh_publishes_new_ones(served):
    store, _, traffic = served
    offers = store.collection(names.OFFER_MATRIX)
    with _client(store) as client:
        runtime = client.app.state.runtime
        assert "late_offer" not in runtime.live.served.scorer.offers and not runtime.live.check()
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        offers.insert_one({"offer_name": "late_offer", "offer_id": 99, "category": "category_a", "popularity": 0.1,
                           "price": 9.5, "cost": 4.0, "static_offers": False,
                           "updated_at": dt.datetime.now(dt.timezone.utc)})
        runtime.live.check()
        assert "late_offer" in runtime.live.served.scorer.skipped  # in the matrix, no vector yet: skipped
        publishing.refresh_live_run(store, "run_a", since, dt.datetime.now(dt.timezone.utc))
        assert runtime.live.check() and "late_offer" in runtime.live.served.scorer.offers
        reply = client.post("/invocations", json=_invocation(traffic, eligible_offers=["late_offer", "missing"]))
    assert [item["result"]["offer"] for item in reply.json()["final_result"]] == ["late_offer"]


def test_the_sidecar_embeds_with_the_stored_towers_the_same_vectors_as_the_export(served):
    store, _, _ = served
    users, items = _live_vectors(store)
    with _client(store) as client:
        user = client.post("/pytorch/invocations", json={"model_id": "two_tower_user_run_a", "instances": [
            {"customer_id": "sim_c001", "price": 0.0, "rank": 1.0, "score": 0.0}, {"customer_id": "sim_c002"}]})
        item = client.post("/pytorch/invocations", json={"model_id": "two_tower_item_run_a",
                                                         "instances": [{"offer": "sim_offer_01", "tower": "item"}]})
        unknown = client.post("/pytorch/invocations", json={"model_id": "two_tower_user_run_zz",
                                                            "instances": [{"customer_id": "sim_c001"}]})
        malformed = client.post("/pytorch/invocations", json={"model_id": "resnet50", "instances": [{}]})
        mixed = client.post("/pytorch/invocations", json={"model_id": "two_tower_user_run_a", "instances": [
            {"customer_id": "sim_c001", "tower": "item"}]})
        models = client.get("/pytorch/models").json()
        health = client.get("/pytorch/health").json()
    assert user.status_code == 200 and user.json()["framework"] == "pytorch"
    predictions = user.json()["predictions"]
    assert user.json()["final_result"] == predictions and len(predictions) == 2
    assert np.allclose(predictions[0]["embedding"], users["sim_c001"], atol=1e-5)
    assert np.allclose(predictions[1]["embedding"], users["sim_c002"], atol=1e-5)
    assert np.allclose(item.json()["predictions"][0]["embedding"], items["sim_offer_01"], atol=1e-5)
    assert unknown.status_code == 404 and "run_zz" in unknown.json()["detail"]
    assert malformed.status_code == 422 and mixed.status_code == 422
    run_a = [m for m in models["models"] if m["run_id"] == "run_a"]
    assert {m["model_id"] for m in run_a} == {"two_tower_user_run_a", "two_tower_item_run_a"}
    assert all(m["live"] and m["embedding_dim"] == FAST["embedding_dim"] for m in run_a)
    assert health["status"] == "ok" and health["models_loaded"] == 1


def test_the_workbench_reads_predictors_bounds_and_concept_tests_and_says_when_dagster_is_not_configured(served):
    store, _, traffic = served
    predictor = traffic.logs.predictor
    flatten = store.collection(names.FLATTEN)
    with _client(store) as client:
        predictors = client.get("/api/v1/algorithms/two-tower/predictors").json()
        bounds = client.get("/api/v1/algorithms/two-tower/predictor-date-bounds", params={"predictor": predictor})
        none = client.get("/api/v1/algorithms/two-tower/predictor-date-bounds", params={"predictor": "nobody"})
        concept = client.post("/api/v1/algorithms/two-tower/concept-test",
                              json={"run_id": "run_a", "customer_id": "sim_c001",
                                    "offers": ["sim_offer_01", "sim_offer_02"]})
        # a run id that cannot name a collection ('..') is refused with the reason, never a storage error
        dotted = client.post("/api/v1/algorithms/two-tower/concept-test",
                             json={"run_id": "run..a", "customer_id": "sim_c001"})
        health = client.get("/api/v1/algorithms/two-tower/health").json()
        train = client.post("/api/v1/algorithms/two-tower/train", json={"predictor": predictor})
        typo = client.post("/api/v1/algorithms/two-tower/train", json={"predictor": predictor, "epochz": 3})
        job = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
        bad_job = client.get("/api/v1/jobs/$where")
    assert predictors == {"predictors": [predictor]}
    first = flatten.find_one(sort=[("datetime", 1)])["datetime"]
    last = flatten.find_one(sort=[("datetime", -1)])["datetime"]
    assert bounds.status_code == 200 and bounds.json()["rows"] == flatten.count_documents({"predictor": predictor})
    assert dt.datetime.fromisoformat(bounds.json()["min_date"]) == first
    assert dt.datetime.fromisoformat(bounds.json()["max_date"]) == last
    assert none.status_code == 404
    answer = concept.json()
    assert answer["success"] and [r["offer"] for r in answer["ranked"]] != [] and len(answer["ranked"]) == 2
    assert answer["ranked"][0]["score"] >= answer["ranked"][1]["score"]
    assert dotted.status_code == 200 and not dotted.json()["success"] and "'..'" in dotted.json()["detail"]
    assert health["live_run_id"] == "run_a" and health["status"] == "ok"
    assert typo.status_code == 422 and "epochz" in typo.json()["detail"]
    assert train.status_code == 503 and "--dagster-url" in train.json()["detail"]
    assert job.status_code == 503 and bad_job.status_code == 422


# --- a request's context in the customer vector ------------------------------------------------------
@pytest.fixture(scope="module")
def weather_run(mongo_uri, tmp_path_factory):
    """A predictor whose accepts depend on the request's weather (`context_weather`), imported from
    a file, trained (run_w), gated and published."""
    import uuid

    import dagster as dg
    import pandas as pd

    from twotower_pipeline.definitions import build_resources, defs
    from twotower_pipeline.defs.resources import MongoResource
    from twotower_pipeline.ingest.importer import load_exposures_file
    from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
    from twotower_pipeline.store.client import MongoStore

    rng = np.random.default_rng(5)
    rows = []
    for request in range(3000):
        weather = rng.choice(["rainy", "sunny"])
        for offer in rng.permutation(["umbrella", "sunglasses", "coffee", "tea"])[:3]:
            liked = (offer, weather) in {("umbrella", "rainy"), ("sunglasses", "sunny")}
            rows.append({"customer_id": f"w{request % 80:02d}", "offer": offer, "request_id": f"r{request}",
                         "accepted": int(rng.random() < (0.8 if liked else 0.1)), "context_weather": weather,
                         "timestamp": f"2024-02-0{1 + request % 3}T10:{request % 60:02d}:00Z"})
    path = tmp_path_factory.mktemp("weather") / "weather.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    store = MongoStore(mongo_uri, prefix)
    resources = build_resources(MongoResource(uri=mongo_uri, database_prefix=prefix))
    write_runtime_logs(store, load_exposures_file(path, predictor="weather"))
    assets = list(defs.assets)
    tags = {"dagster/asset_partition_range_start": "2024-02-01", "dagster/asset_partition_range_end": "2024-02-03"}
    assert dg.materialize(assets, resources=resources, tags=tags, selection=[
        dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
        dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]).success
    assert dg.materialize(assets, resources=resources, selection=[
        "training_frame", "two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics"],
        run_config={"ops": {"training_frame": {"config": {"predictor": "weather"}},
                            "two_tower_model": {"config": {**FAST, "epochs": 10, "run_id": "run_w"}},
                            "concept_test_metrics": {"config": {"min_ndcg_gain_over_popularity": -1.0,
                                                                "min_auc": 0.0}}}}).success
    assert dg.materialize(assets, resources=resources, selection=["runtime_embeddings"],
                          run_config={"ops": {"runtime_embeddings": {"config": {"run_id": "run_w"}}}}).success
    yield store
    for name in store.client.list_database_names():
        if name.startswith(prefix):
            store.client.drop_database(name)


def test_the_request_context_moves_the_customer_vector_through_the_sidecar_and_is_logged(weather_run):
    store = weather_run
    customers = [f"w{i:02d}" for i in range(20)]
    with _client(store, sidecar="local") as client:
        def top(customer, weather):
            reply = client.post("/invocations", json={"campaign": "weather", "customer": customer, "numberoffers": 4,
                                                      "in_params": {"weather": weather}})
            assert reply.status_code == 200, reply.text
            return [item["result"]["offer"] for item in reply.json()["final_result"]]

        rainy = [top(c, "rainy") for c in customers]
        sunny = [top(c, "sunny") for c in customers]
        plain = client.post("/invocations", json={"campaign": "weather", "customer": "w00", "numberoffers": 4})
        remote_rows = client.post("/pytorch/invocations", json={"model_id": "two_tower_user_run_w", "instances": [
            {"customer_id": "w00", "context_weather": "rainy"}, {"customer_id": "w00"}]}).json()["predictions"]
    # each customer's rainy ranking puts the umbrella above the sunglasses, the sunny one the reverse
    assert sum(r.index("umbrella") < r.index("sunglasses") for r in rainy) >= 18
    assert sum(s.index("sunglasses") < s.index("umbrella") for s in sunny) >= 18
    logged = store.collection(names.PRESENTED).find_one({"api_params.customer": "w00", "in_params.weather": "rainy",
                                                         "run_id": "run_w"})
    assert logged["vector_source"] == "sidecar" and logged["in_params"] == {"weather": "rainy"}
    # no context: the stored (exported) vector, which the sidecar gives for a row without context too
    stored = store.collection(publishing.USER_EMBEDDINGS).find_one({"customer_id": "w00"})["embedding"]
    plain_logged = store.collection(names.PRESENTED).find_one({"uuid": plain.json()["uuid"]})
    assert plain_logged["vector_source"] == "stored"
    assert np.allclose(remote_rows[1]["embedding"], stored, atol=1e-5)
    assert not np.allclose(remote_rows[0]["embedding"], stored, atol=1e-3)
