"""kill -9 of `twotower serve` and of the MongoDB server under it while clients keep asking,
against an embedded server of this module's own (the cases kill it). Every request and response
that got a 200 must be in MongoDB exactly once afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from twotower_pipeline.store import names
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.embedded import EmbeddedMongo

from twotower_pipeline_tests.conftest import drop_prefix, publish_small_run

pytestmark = pytest.mark.faults
#: A client of a killed server gives up after 3 s instead of 20.
QUICK = "?directConnection=true&serverSelectionTimeoutMS=3000"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A server of this module's own with run_a published (trained once for both cases)."""
    server = EmbeddedMongo(tmp_path_factory.mktemp("serving-fault-mongo"))
    uri = server.uri() + QUICK
    prefix = f"f{uuid.uuid4().hex[:10]}_"
    state = {"server": server, "uri": uri, "prefix": prefix}
    state["store"] = publish_small_run(uri, prefix)[0]
    yield state
    _restart(state)
    drop_prefix(state["store"])
    server.stop()


@pytest.fixture
def logs(env):
    """Each case counts its own logs: the runtime collections start empty."""
    for location in (names.PRESENTED, names.RESPONSES):
        env["store"].collection(location).delete_many({})
    return env


def _restart(env) -> None:
    """Start the module's server again if it was killed (on its old port when that is free)."""
    env["uri"] = env["server"].uri() + QUICK
    env["store"] = MongoStore(env["uri"], env["prefix"])


class _Traffic:
    """Clients asking the runtime from threads: /invocations, and a /response for every third
    answer; what was acknowledged (a 200) is recorded, whatever happened to other requests."""

    def __init__(self, post, predictor, customers, threads=3):
        self.post, self.predictor, self.customers = post, predictor, customers
        self.presented, self.responses, self.attempts, self.failures = [], [], 0, 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._ask, args=(i,)) for i in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _ask(self, worker):
        i = worker
        while not self.stop.is_set():
            customer = self.customers[i % len(self.customers)]
            i += len(self.threads)
            with self.lock:
                self.attempts += 1
            try:
                status, body = self.post("/invocations", {"campaign": self.predictor, "customer": customer,
                                                          "numberoffers": 3})
                if status == 200:
                    with self.lock:
                        self.presented.append(body["uuid"])
                    if i % 3 == 0:
                        offer = body["final_result"][0]["result"]["offer_name"]
                        status, _ = self.post("/response", {"uuid": body["uuid"], "offers_accepted": [
                            {"offer_name": offer}]})
                        if status == 200:
                            with self.lock:
                                self.responses.append(body["uuid"])
                else:
                    with self.lock:
                        self.failures += 1
            except Exception:  # a connection refused or cut by the kill: not acknowledged
                with self.lock:
                    self.failures += 1
                time.sleep(0.05)


def _logged_exactly_once(store, traffic: _Traffic) -> None:
    """Every acknowledged request and response is in MongoDB once; nothing is there twice."""
    presented = [d["uuid"] for d in store.collection(names.PRESENTED).find({"run_id": "run_a"}, {"uuid": 1})]
    assert len(presented) == len(set(presented))
    assert set(traffic.presented) <= set(presented), len(set(traffic.presented) - set(presented))
    assert len(presented) <= traffic.attempts
    responses = [d["uuid"] for d in store.collection(names.RESPONSES).find({}, {"uuid": 1})]
    assert len(responses) == len(set(responses)) and set(traffic.responses) <= set(responses)


def _customers(store) -> tuple[str, list[str]]:
    predictor = store.collection(names.RUNS).find_one({"run_id": "run_a"})["predictor"]
    return predictor, sorted(d["customer_id"] for d in store.collection(names.CUSTOMER_FEATURES).find())[:40]


def test_the_runtime_answers_while_the_server_is_down_and_logs_each_answered_request_once(logs, tmp_path):
    """kill -9 of the server under `twotower serve`'s app while clients keep asking: requests are
    answered from memory throughout and journaled; the journal ships what piled up once the server
    is back; exact counts at the end."""
    from twotower_pipeline.serving.app import create_app
    from twotower_pipeline_tests.serving_client import keyed_client, keyed_settings

    env = logs
    predictor, customers = _customers(env["store"])
    app = create_app(env["store"], keyed_settings(reload_s=3600, journal_dir=str(tmp_path / "journal")))
    with keyed_client(app) as client:
        def post(path, body):
            reply = client.post(path, json=body)
            return reply.status_code, reply.json()

        journal = app.state.runtime.journal
        with _Traffic(post, predictor, customers) as traffic:
            time.sleep(1.0)
            env["server"].kill()
            answered_before = len(traffic.presented)
            time.sleep(4.0)  # the shipper's insert fails (server selection: 3 s) and it retries
            answered_while_down = len(traffic.presented) - answered_before
            outage = client.get("/health").json()["journal"]
            before = env["uri"]
            _restart(env)  # the same port: the shipper's client finds it again
            assert env["uri"] == before, (before, env["uri"])
            time.sleep(1.0)
        assert answered_while_down > 20 and traffic.failures == 0  # answered throughout, from memory
        assert outage["documents_pending"] > 0 and outage["last_error"]
        assert "mongodb://" not in outage["last_error"]
        deadline = time.monotonic() + 60
        while journal.stats()["documents_pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert journal.stats()["documents_pending"] == 0
    _logged_exactly_once(env["store"], traffic)
    assert len(traffic.presented) == env["store"].collection(names.PRESENTED).count_documents({"run_id": "run_a"})


def test_a_service_killed_mid_load_loses_no_acknowledged_log(logs, tmp_path):
    """kill -9 of `twotower serve` itself while clients keep asking: after a restart on the same
    journal, every request and response that got a 200 is in MongoDB exactly once."""
    import httpx

    env = logs
    predictor, customers = _customers(env["store"])
    keys = {"TWOTOWER_RUNTIME_KEY": "fault-runtime-key", "TWOTOWER_WORKBENCH_KEY": "fault-workbench-key"}
    service_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}, **keys,
                   "MONGODB_URI": env["uri"], "TWOTOWER_DATABASE_PREFIX": env["prefix"],
                   "TWOTOWER_JOURNAL_DIR": str(tmp_path / "journal"), "TWOTOWER_RELOAD_SECONDS": "3600"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": keys["TWOTOWER_RUNTIME_KEY"]}

    def start():
        process = subprocess.Popen([str(Path(sys.executable).parent / "twotower"), "serve", "--port", str(port)],
                                   env=service_env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=open(tmp_path / "serve.log", "ab"), start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("twotower serve did not start: " + (tmp_path / "serve.log").read_text()[-3000:])

    served = start()
    clients = threading.local()

    def post(path, body):
        if not hasattr(clients, "client"):
            clients.client = httpx.Client(base_url=base, headers=headers, timeout=10)
        reply = clients.client.post(path, json=body)
        return reply.status_code, reply.json()

    try:
        with _Traffic(post, predictor, customers) as traffic:
            time.sleep(2.0)
            os.killpg(served.pid, signal.SIGKILL)
            served.wait(30)
            time.sleep(0.5)
        assert len(traffic.presented) > 50 and traffic.responses
        served = start()  # the same journal: what the killed process acknowledged is shipped now
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/health", timeout=5).json()["journal"]["documents_pending"] == 0:
                break
            time.sleep(0.2)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(60)
    _logged_exactly_once(env["store"], traffic)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
