"""The runtime serves from memory, against the real server: no request reads the database; a
publish swaps customers and offers together while requests are answered, never a mix; a refresh's
customers are served at once; past the memory budget the vectors are memory-mapped; exploration
and exclusions per campaign; `/response` retries are stored once; `/health`."""

import datetime as dt
import threading
import time

import numpy as np
import pytest
from pymongo import monitoring

from twotower_pipeline import offline, publishing
from twotower_pipeline.serving.app import create_app
from twotower_pipeline.serving.settings import CampaignSettings
from twotower_pipeline.store import embeddings, names
from twotower_pipeline.store.client import MongoStore

from twotower_pipeline_tests.serving_client import keyed_client, keyed_settings


def _client(store, tmp_path, **settings):
    return keyed_client(create_app(store, keyed_settings(
        reload_s=3600, journal_dir=str(tmp_path / "journal"), vector_cache_dir=str(tmp_path / "vectors"),
        **settings)))


def _ask(client, predictor, customer, **fields):
    body = {"campaign": predictor, "customer": customer, "numberoffers": 5, **fields}
    reply = client.post("/invocations", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _drained(store, location, expected, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while store.collection(location).count_documents({}) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return store.collection(location).count_documents({})


@pytest.fixture(scope="module")
def served(published_run):
    store, _, traffic = published_run
    customers, _ = offline.run_vectors(store, "run_a", "user")
    return store, traffic.logs.predictor, sorted(customers)


def _cosines(store, run_id, customer):
    """{offer: cosine} of a customer with one run's kept vectors (numpy, not the service)."""
    users = dict(zip(*offline.run_vectors(store, run_id, "user")))
    offers, vectors = offline.run_vectors(store, run_id, "item")
    user = users[customer] / np.linalg.norm(users[customer])
    return dict(zip(offers, (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ user))


class _Reads(monitoring.CommandListener):
    """Every command the driver sends to one database prefix, by name."""

    def __init__(self, prefix):
        self.prefix, self.seen, self.lock = prefix, [], threading.Lock()

    def started(self, event):
        if event.database_name.startswith(self.prefix):
            with self.lock:
                self.seen.append((event.command_name, event.database_name))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_a_request_reads_no_database(served, tmp_path, mongo_uri):
    store, predictor, customers = served
    reads = _Reads(store.database_prefix)
    monitoring.register(reads)  # clients made from now on report to it: the service gets its own below
    own = MongoStore(f"{mongo_uri}{'&' if '?' in mongo_uri else '?'}appname=no-reads-test", store.database_prefix)
    with _client(own, tmp_path) as client:
        time.sleep(0.2)
        with reads.lock:
            reads.seen.clear()
        answers = [_ask(client, predictor, customer) for customer in customers[:50]]
        time.sleep(0.5)  # the shipper's inserts land meanwhile: the only commands allowed
        with reads.lock:
            during = list(reads.seen)
    assert len(answers) == 50
    assert [c for c in during if c[0] not in ("insert",)] == [], during
    assert ("insert", f"{store.database_prefix}logging") in during  # the listener hears this client
    assert all(db.endswith("logging") for _, db in during)
    cosines = _cosines(store, "run_a", customers[0])
    assert [i["result"]["offer"] for i in answers[0]["final_result"]] == sorted(cosines, key=lambda o: -cosines[o])[:5]


def test_a_publish_swaps_customers_and_offers_together_while_requests_are_answered(served, tmp_path):
    """A second run (other vectors for the same customers and offers) is published while a thread
    keeps asking: each answer ranks one run's customer against that same run's offers, and the
    logged run id says which; then a rollback puts run_a back."""
    store, predictor, customers = served
    publisher = embeddings.Publisher(store, publishing.DATABASE)
    offers, _ = offline.run_vectors(store, "run_a", "item")
    rng = np.random.default_rng(11)
    for tower, keys in (("user", customers), ("item", offers)):
        vectors = rng.normal(size=(len(keys), 16))
        publisher.write_run(tower, "run_b", keys, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    store.collection(names.RUNS).insert_one({"run_id": "run_b", "predictor": predictor})
    asked = customers[:8]
    expected = {run: {c: _cosines(store, run, c) for c in asked} for run in ("run_a", "run_b")}
    answers, stop = [], threading.Event()
    with _client(store, tmp_path) as client:
        runtime = client.app.state.runtime

        def keep_asking():
            while not stop.is_set():
                customer = asked[len(answers) % len(asked)]
                answers.append((customer, _ask(client, predictor, customer)))

        asking = threading.Thread(target=keep_asking)
        asking.start()
        try:
            time.sleep(0.3)
            publisher.publish("run_b")
            assert runtime.live.check() and runtime.live.served.run_id == "run_b"
            time.sleep(0.3)
            publisher.rollback()
            assert runtime.live.check() and runtime.live.served.run_id == "run_a"
            time.sleep(0.3)
        finally:
            stop.set()
            asking.join()
        assert runtime.live.reloads == 3
    logged = {d["uuid"]: d["run_id"] for d in store.collection(names.PRESENTED).find(
        {"uuid": {"$in": [a["uuid"] for _, a in answers]}}, {"uuid": 1, "run_id": 1})}
    assert len(logged) == len(answers) > 20
    runs = []
    for customer, answer in answers:
        run = logged[answer["uuid"]]
        cosines = expected[run][customer]
        shown = [(i["result"]["offer"], i["result"]["score"]) for i in answer["final_result"]]
        assert [o for o, _ in shown] == sorted(cosines, key=lambda o: -cosines[o])[:5]
        assert np.allclose([s for _, s in shown], [cosines[o] for o, _ in shown], atol=1e-5)
        runs.append(run)
    assert runs[0] == "run_a" and "run_b" in runs and runs[-1] == "run_a"


def test_a_refreshed_customer_is_served_from_memory_at_the_next_check(served, tmp_path):
    store, predictor, _ = served
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    store.collection(names.CUSTOMER_FEATURES).insert_one(
        {"customer_id": "arrived_today", "segment": "segment_a", "age": 41, "region": "west",
         "updated_at": dt.datetime.now(dt.timezone.utc)})
    with _client(store, tmp_path) as client:
        runtime = client.app.state.runtime
        missing = client.post("/invocations", json={"campaign": predictor, "customer": "arrived_today"})
        assert missing.status_code == 404 and "no vector" in missing.json()["detail"]
        publishing.refresh_live_run(store, "run_a", since, dt.datetime.now(dt.timezone.utc))
        assert runtime.live.check()
        answer = _ask(client, predictor, "arrived_today")
        held = runtime.live.served.customers.get("arrived_today")
    keys, vectors = embeddings.Publisher(store, publishing.DATABASE).refreshed_vectors("user", "run_a")
    assert np.allclose(held, vectors[keys.index("arrived_today")], atol=1e-6)
    logged = store.collection(names.PRESENTED).find_one({"uuid": answer["uuid"]})
    assert logged["vector_source"] == "stored"


def test_past_the_memory_budget_the_customer_vectors_are_memory_mapped(served, tmp_path):
    store, predictor, customers = served
    with _client(store, tmp_path, memory_budget_bytes=1024) as client:
        answers = {c: _ask(client, predictor, c) for c in customers[:5]}
        health = client.get("/health").json()
        folder = client.app.state.runtime.live.served.customers.mapped
        assert folder.parent == tmp_path / "vectors" and (folder / "vectors.npy").exists()
    counts = embeddings.Publisher(store, publishing.DATABASE).run_counts("run_a")  # its own and refreshed
    assert health["live_run"]["memory_mapped"] and health["live_run"]["customers"] == counts["user"]
    for customer, answer in answers.items():
        cosines = _cosines(store, "run_a", customer)
        assert [i["result"]["offer"] for i in answer["final_result"]] == \
            sorted(cosines, key=lambda o: -cosines[o])[:5]


def test_a_campaign_with_epsilon_explores_and_logs_each_offers_propensity(served, tmp_path):
    store, predictor, customers = served
    policy = {predictor: CampaignSettings(epsilon=0.5), "greedy_campaign": CampaignSettings()}
    with _client(store, tmp_path, campaigns=policy, explore_seed=5) as client:
        answers = [_ask(client, predictor, customers[i % 20]) for i in range(200)]
        greedy = _ask(client, "greedy_campaign", customers[0])
        offers = len(client.app.state.runtime.live.served.scorer)
    explored = [a for a in answers if a["explore"] == 1]
    assert 70 <= len(explored) <= 130 and greedy["explore"] == 0
    documents = {d["uuid"]: d for d in store.collection(names.PRESENTED).find(
        {"uuid": {"$in": [a["uuid"] for a in answers] + [greedy["uuid"]]}})}
    for answer in answers:
        logged = documents[answer["uuid"]]
        assert logged["explore"] == answer["explore"] and logged["epsilon"] == 0.5
        assert logged["candidates"] == offers
        cosines = _cosines(store, "run_a", logged["api_params"]["customer"])
        best = sorted(cosines, key=lambda o: -cosines[o])[:5]
        for rank, item in enumerate(logged["final_result"]):
            offer = item["result"]["offer"]
            assert item["result"]["propensity"] == pytest.approx(0.5 * (best[rank] == offer) + 0.5 / offers)
            assert item["result"]["score"] == pytest.approx(cosines[offer], abs=1e-5)
    assert [i["result"]["propensity"] for i in documents[greedy["uuid"]]["final_result"]] == [1.0] * 5


def test_a_campaign_can_leave_out_offers_the_customer_already_accepted(served, tmp_path):
    store, predictor, _ = served
    flatten = store.collection(names.FLATTEN)
    accepted = {}
    for row in flatten.find({"predictor": predictor, "accepted": 1}, {"customer_id": 1, "offer": 1}):
        accepted.setdefault(row["customer_id"], set()).add(row["offer"])
    customer = max(accepted, key=lambda c: len(accepted[c]))
    policy = {predictor: CampaignSettings(exclude_accepted=True)}
    with _client(store, tmp_path, campaigns=policy) as client:
        first = _ask(client, predictor, customer, numberoffers=8)
        shown = [i["result"]["offer"] for i in first["final_result"]]
        took = client.post("/response", json={"uuid": first["uuid"], "offers_accepted": [{"offer_name": shown[0]}]})
        assert took.status_code == 200
        second = _ask(client, predictor, customer, numberoffers=8)
    cosines = _cosines(store, "run_a", customer)
    allowed = [o for o in sorted(cosines, key=lambda o: -cosines[o]) if o not in accepted[customer]]
    assert shown == allowed[:8] and not set(shown) & accepted[customer]
    assert [i["result"]["offer"] for i in second["final_result"]] == [o for o in allowed if o != shown[0]][:8]
    logged = store.collection(names.PRESENTED).find_one({"uuid": second["uuid"]})
    assert logged["excluded_accepted"] == len(accepted[customer]) + 1


def test_a_retried_response_is_stored_once_and_health_reports_the_journal(served, tmp_path):
    store, predictor, customers = served
    responses = store.collection(names.RESPONSES)
    with _client(store, tmp_path) as client:
        answer = _ask(client, predictor, customers[3])
        offers = [i["result"]["offer"] for i in answer["final_result"]]
        body = {"uuid": answer["uuid"], "offers_accepted": [{"offer_name": offers[0]}], "channel_name": "app"}
        assert [client.post("/response", json=body).status_code for _ in range(3)] == [200] * 3
        later = {**body, "offers_accepted": [{"offer_name": offers[1]}]}
        assert client.post("/response", json=later).status_code == 200
        health = client.get("/health")
        runtime = client.app.state.runtime
        deadline = time.monotonic() + 30
        while runtime.journal.stats()["documents_pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        report = health.json()
        counts = embeddings.Publisher(store, publishing.DATABASE).run_counts("run_a")
        assert report["live_run"]["run_id"] == "run_a" and report["live_run"]["customers"] == counts["user"]
        assert {"bytes", "documents_pending", "oldest_pending_age_s", "last_error", "shipper_alive"} <= \
            set(report["journal"])
        runtime.journal.close()  # the shipper stops: the service must say it is failing
        dead = client.get("/health")
        assert dead.status_code == 503 and "shipper" in " ".join(dead.json()["problems"])
    stored = list(responses.find({"uuid": answer["uuid"]}))
    assert sorted(d["response"]["offers_accepted"][0]["offer_name"] for d in stored) == sorted(offers[:2])
