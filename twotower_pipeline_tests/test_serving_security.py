"""`twotower serve` closed by default, against the real server: a key per group of endpoints (the
runtime's, the workbench's), the Host allowlist (DNS rebinding), the keys file `twotower serve`
generates, runs named only by the service (and a stored run's id refused by the training asset),
client mistakes that are a 4xx and never a 500, and launches bounded by a cap and made once by an
`Idempotency-Key`, on a real Dagster webserver whose runs stay queued (no daemon takes them)."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import gridfs
import httpx
import pytest
from fastapi.testclient import TestClient

from twotower_pipeline import cli
from twotower_pipeline.definitions import defs
from twotower_pipeline.serving import workbench
from twotower_pipeline.serving.app import create_app
from twotower_pipeline.store import artefacts, names
from twotower_pipeline_tests.conftest import FAST
from twotower_pipeline_tests.serving_client import RUNTIME_KEY, WORKBENCH_KEY, keyed_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN = "/api/v1/algorithms/two-tower/train"
BATCH = "/api/v1/algorithms/two-tower/batch-score"
JOB = "/api/v1/jobs/00000000-0000-0000-0000-000000000000"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterWeb:
    """`dagster-webserver` on the project's workspace, started when the module starts (it loads
    while the published run is built) and shared; with the queued run coordinator and no daemon a
    launched run stays QUEUED until it is terminated, so "not finished" lasts as long as a test needs."""

    def __init__(self, home: Path, env: dict):
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_coordinator:\n"
                                           "  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "webserver.log"
        self.process = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=PROJECT_ROOT, env={**env, "DAGSTER_HOME": str(home)}, stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        self._ready = False

    def ready(self) -> str:
        deadline = time.monotonic() + 120
        while not self._ready:
            try:
                self._ready = httpx.get(f"{self.url}/server_info", timeout=5).status_code == 200
            except httpx.HTTPError:
                pass
            if not self._ready:
                assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.3)
        return self.url

    def client(self):
        from dagster_graphql import DagsterGraphQLClient
        return DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=60)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def dagster_web(mongo_uri, tmp_path_factory):
    web = DagsterWeb(tmp_path_factory.mktemp("dagster-home"), {**os.environ, "MONGODB_URI": mongo_uri})
    yield web
    web.stop()


@pytest.fixture
def served(published_run, tmp_path):
    """(store, traffic, make_client): clients of apps over the published run, each with its own
    log journal; `make_client(**settings)` sends no key of its own."""
    store, _, traffic = published_run
    clients = []

    def make_client(**settings) -> TestClient:
        journal = tmp_path / f"journal{len(clients)}"
        client = TestClient(create_app(store, keyed_settings(reload_s=3600, journal_dir=str(journal), **settings)))
        clients.append(client.__enter__())
        return client

    yield store, traffic, make_client
    for client in clients:
        client.__exit__(None, None, None)


def _requests(traffic) -> dict:
    """One request of each endpoint, by group."""
    invocation = {"campaign": traffic.logs.predictor, "customer": "sim_c001", "numberoffers": 2}
    return {
        "runtime": [("POST", "/invocations", invocation), ("POST", "/response", {"uuid": "u", "offers_accepted": []}),
                    ("POST", "/pytorch/invocations", {"model_id": "two_tower_user_run_a",
                                                      "instances": [{"customer_id": "sim_c001"}]}),
                    ("GET", "/pytorch/models", None), ("GET", "/pytorch/health", None)],
        "workbench": [("GET", "/api/v1/algorithms/two-tower/health", None),
                      ("GET", "/api/v1/algorithms/two-tower/predictors", None),
                      ("GET", "/api/v1/algorithms/two-tower/predictor-date-bounds?predictor=x", None),
                      ("POST", "/api/v1/algorithms/two-tower/concept-test",
                       {"run_id": "run_a", "customer_id": "sim_c001"}),
                      ("POST", TRAIN, {"predictor": "p"}), ("POST", BATCH, {"run_id": "run_a"}),
                      ("GET", JOB, None), ("POST", "/pytorch/train", {"hyperparameters": {"predictor": "p"}})],
    }


def _send(client, method, path, body, key=None, **headers):
    if key is not None:
        headers["X-API-Key"] = key
    return client.request(method, path, json=body, headers=headers)


# --- keys ------------------------------------------------------------------------------------------
def test_each_group_of_endpoints_opens_only_with_its_own_key(served):
    _, traffic, make_client = served
    client = make_client()
    keys = {"runtime": RUNTIME_KEY, "workbench": WORKBENCH_KEY}
    for group, requests in _requests(traffic).items():
        other = keys["workbench" if group == "runtime" else "runtime"]
        for method, path, body in requests:
            for key in (None, "", "wrong", other, keys[group] + "x", keys[group][:-1], "clé-non-ascii"):
                reply = _send(client, method, path, body, key.encode() if key else key)
                assert reply.status_code == 401, (path, key, reply.text)
                detail = reply.json()["detail"]
                assert f"the {group} key" in detail and RUNTIME_KEY not in detail and WORKBENCH_KEY not in detail
            opened = _send(client, method, path, body, keys[group])  # 503: train and jobs without Dagster
            assert opened.status_code != 401 and (opened.status_code < 500 or opened.status_code == 503), \
                (path, opened.status_code, opened.text)
    for path in ("/openapi.json", "/docs", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 200, path
    assert client.get("/health").status_code != 401  # the probe (changes nothing)
    assert client.post("/health").status_code == 401  # only the probe's GET is open


def test_a_group_without_a_key_is_closed_not_open(served):
    _, traffic, make_client = served
    client = make_client(runtime_key=None, workbench_key=None)
    for group, requests in _requests(traffic).items():
        for method, path, body in requests:
            for key in (None, "", "None", RUNTIME_KEY, WORKBENCH_KEY):
                reply = _send(client, method, path, body, key)
                assert reply.status_code == 401 and "closed" in reply.json()["detail"], (path, key, reply.text)
    only_runtime = make_client(workbench_key=None)
    assert _send(only_runtime, "GET", "/pytorch/models", None, RUNTIME_KEY).status_code == 200
    assert _send(only_runtime, "GET", "/api/v1/algorithms/two-tower/predictors", None, RUNTIME_KEY).status_code == 401


def test_a_foreign_host_header_is_refused_before_anything_else(served):
    store, traffic, make_client = served
    client = make_client(allowed_hosts=("testserver", "127.0.0.1", "localhost", "::1", "ranker.internal"))
    invocation = {"campaign": traffic.logs.predictor, "customer": "sim_c001", "numberoffers": 2}
    presented = store.collection(names.PRESENTED).count_documents({})
    foreign = {"evil.example": "evil.example", "evil.example:8010": "evil.example", "127.0.0.2": "127.0.0.2",
               "[::2]:8010": "::2", "localhost.evil.example": "localhost.evil.example",
               "XN--80AK6AA92E.com": "xn--80ak6aa92e.com"}
    for host, named in foreign.items():
        for method, path, body, key in (("POST", "/invocations", invocation, RUNTIME_KEY),
                                        ("GET", "/api/v1/algorithms/two-tower/predictors", None, WORKBENCH_KEY),
                                        ("GET", "/openapi.json", None, None), ("GET", "/health", None, None)):
            reply = _send(client, method, path, body, key, host=host)
            assert reply.status_code == 421, (host, path, reply.text)
            assert f"host '{named}'" in reply.json()["detail"] and "--allowed-host" in reply.json()["detail"]
    assert store.collection(names.PRESENTED).count_documents({}) == presented  # nothing ran
    for host in ("localhost:8010", "LOCALHOST", "127.0.0.1:8010", "[::1]:8010", "ranker.internal", "testserver"):
        assert _send(client, "GET", "/pytorch/models", None, RUNTIME_KEY, host=host).status_code == 200, host


# --- the keys file of `twotower serve` -----------------------------------------------------------------
def test_serve_generates_its_keys_once_in_a_private_file_and_refuses_one_others_can_read(
        monkeypatch, tmp_path, mongo_uri, database_prefix, capsys):
    started = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: started.append(app))
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("TWOTOWER_DATABASE_PREFIX", database_prefix)
    for name in ("TWOTOWER_RUNTIME_KEY", "TWOTOWER_WORKBENCH_KEY", "TWOTOWER_KEYS_FILE", "TWOTOWER_API_KEY",
                 "TWOTOWER_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "private" / "serve-keys.json"
    old_umask = os.umask(0)  # the file's mode is its creation's, not the umask's
    try:
        assert cli.main(["serve", "--keys-file", str(path), "--host", "127.0.0.1", "--allowed-host", "ranker.internal",
                         "--allowed-host", "10.0.0.5"]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = json.loads(path.read_text())
    assert set(keys) == {"runtime_key", "workbench_key"} and len(set(keys.values())) == 2
    assert all(len(k) >= 40 for k in keys.values())
    printed = capsys.readouterr().out
    assert str(path) in printed and keys["runtime_key"] not in printed and keys["workbench_key"] not in printed
    settings = started[0].state.runtime.settings
    assert (settings.runtime_key, settings.workbench_key) == (keys["runtime_key"], keys["workbench_key"])
    assert set(settings.allowed_hosts) == {"127.0.0.1", "localhost", "::1", "ranker.internal", "10.0.0.5"}

    monkeypatch.setenv("TWOTOWER_KEYS_FILE", str(path))  # the second start reads them back
    assert cli.main(["serve"]) == 0
    assert (started[1].state.runtime.settings.runtime_key, started[1].state.runtime.settings.workbench_key) == \
        (keys["runtime_key"], keys["workbench_key"])
    assert "read from" in capsys.readouterr().out
    monkeypatch.setenv("TWOTOWER_RUNTIME_KEY", "from-the-environment")  # a key given wins over the file's
    assert cli.main(["serve"]) == 0 and started[2].state.runtime.settings.runtime_key == "from-the-environment"
    assert started[2].state.runtime.settings.workbench_key == keys["workbench_key"]
    monkeypatch.delenv("TWOTOWER_RUNTIME_KEY")

    path.chmod(0o644)
    assert cli.main(["serve"]) == 2 and len(started) == 3  # refused before it starts
    refused = capsys.readouterr().err
    assert str(path) in refused and "chmod 600" in refused and keys["runtime_key"] not in refused
    path.chmod(0o600)
    monkeypatch.setenv("TWOTOWER_API_KEY", "old")  # the single key of before is not silently ignored
    assert cli.main(["serve"]) == 2 and "TWOTOWER_RUNTIME_KEY" in capsys.readouterr().err
    monkeypatch.delenv("TWOTOWER_API_KEY")
    with pytest.raises(SystemExit):
        cli.main(["serve", "--api-key", "old"])
    same = cli.main(["serve", "--runtime-key", "k", "--workbench-key", "k"])
    assert same == 2 and "the same" in capsys.readouterr().err


# --- runs are named by the service ---------------------------------------------------------------------
def test_a_client_cannot_name_a_run(served):
    store, traffic, make_client = served
    client = make_client(dagster_url="http://127.0.0.1:9")  # never reached: refused before
    for path, body in ((TRAIN, {"predictor": traffic.logs.predictor, "run_id": "run_a"}),
                       ("/pytorch/train", {"hyperparameters": {"predictor": traffic.logs.predictor,
                                                               "run_id": "run_a"}})):
        reply = _send(client, "POST", path, body, WORKBENCH_KEY)
        assert reply.status_code == 422 and "the service names runs" in reply.json()["detail"], reply.text
    assert store.collection(names.JOBS).count_documents({}) == 0


def test_the_training_asset_refuses_a_stored_run_id_and_gives_back_the_same_training(published_run):
    store, resources, _ = published_run
    runs = store.collection(names.RUNS)
    before = runs.find_one({"run_id": "run_a"})
    versions = artefacts.artefact_versions(store, "two_tower_model")
    failed = dg.materialize(list(defs.assets), resources=resources, selection=["two_tower_model"],
                            raise_on_error=False, run_config={"ops": {"two_tower_model": {"config": {
                                **FAST, "epochs": 2, "run_id": "run_a"}}}})
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "run_id 'run_a' already names a stored run" in message and "other parameters" in message
    assert runs.find_one({"run_id": "run_a"}) == before  # the run document and the towers are untouched
    assert artefacts.artefact_versions(store, "two_tower_model") == versions
    # the same parameters on the same frame (a retry): the stored towers, not trained again
    again = dg.materialize(list(defs.assets), resources=resources, selection=["two_tower_model"],
                           run_config={"ops": {"two_tower_model": {"config": {**FAST, "run_id": "run_a"}}}})
    assert again.success
    metadata = again.asset_materializations_for_node("two_tower_model")[0].metadata
    assert metadata["trained_again"].value is False
    assert runs.find_one({"run_id": "run_a"}) == before
    towers = gridfs.GridFSBucket(store.database(artefacts.ARTEFACT_DATABASE), bucket_name=artefacts.ARTEFACT_BUCKET)
    stored = list(towers.find({"filename": "two_tower_model", "metadata.run_id": "run_a"}).sort("uploadDate", 1))
    assert len(stored) == 2 and stored[1].metadata["dagster_run_id"] == again.run_id
    assert towers.open_download_stream(stored[0]._id).read() == towers.open_download_stream(stored[1]._id).read()


# --- client mistakes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/invocations", b'{"campaign": "c", "customer": "x", "in_params": {"visits": 18446744073709551616}}', "visits"),
    ("/invocations", b'{"campaign": "c", "customer": "x", "in_params": {"temp": NaN}}', "temp"),
    ("/invocations", b'{"campaign": "c", "customer": "x", "in_params": {"temp": -Infinity}}', "temp"),
    ("/pytorch/invocations", b'{"model_id": "two_tower_user_run_a", "instances": [{"customer_id": "c", '
                             b'"price": Infinity}]}', "price"),
    ("/pytorch/invocations", b'{"model_id": "two_tower_user_run_a", "instances": [{"customer_id": "c", '
                             b'"age": NaN}]}', "age"),
    (TRAIN, b'{"predictor": "p", "learning_rate": NaN}', "learning_rate"),
    (TRAIN, b'{"predictor": "p", "seed": 99999999999999999999}', "seed"),
    (BATCH, b'{"run_id": "run_a", "max_users": 99999999999999999999}', "max_users"),
    ("/pytorch/train", b'{"hyperparameters": {"predictor": "p"}, "data": {"random_state": 99999999999999999999}}',
     "random_state"),
])
def test_numbers_storage_cannot_hold_are_refused_naming_the_field(served, path, body, field):
    store, _, make_client = served
    client = make_client(sidecar="local")
    presented = store.collection(names.PRESENTED).count_documents({})
    key = WORKBENCH_KEY if path.startswith(("/api", "/pytorch/train")) else RUNTIME_KEY
    reply = client.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": key})
    assert reply.status_code == 422 and field in reply.text, reply.text
    assert store.collection(names.PRESENTED).count_documents({}) == presented


# --- launches ------------------------------------------------------------------------------------------
def _terminate(web, store):
    """Ends what the tests launched: runs are terminated; a backfill is cancelled, and since this
    webserver runs no daemon to finish the cancel (it stays CANCELING), its record is marked finished."""
    client = web.client()
    for record in store.collection(names.JOBS).find({}, {"job_id": 1, "backfill": 1}):
        if record.get("backfill"):
            httpx.post(f"{web.url}/graphql", timeout=60, json={
                "query": "mutation ($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }",
                "variables": {"id": record["job_id"]}})
            store.collection(names.JOBS).update_one({"_id": record["_id"]}, {"$set": {"finished": True}})
            continue
        try:
            client.terminate_run(record["job_id"])
        except Exception:  # already finished
            pass


def test_launches_are_capped_while_the_runs_launched_here_are_not_finished(served, dagster_web):
    store, traffic, make_client = served
    client = make_client(dagster_url=dagster_web.ready(), max_concurrent_launches=2)
    _terminate(dagster_web, store)  # what earlier tests left queued
    train = {"predictor": traffic.logs.predictor, "epochs": 2}
    try:
        first = _send(client, "POST", TRAIN, train, WORKBENCH_KEY)
        second = _send(client, "POST", "/pytorch/train", {"hyperparameters": train}, WORKBENCH_KEY)
        assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
        for path, body in ((TRAIN, train), (BATCH, {"run_id": "run_a", "max_users": 10})):
            refused = _send(client, "POST", path, body, WORKBENCH_KEY)
            assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit(), refused.text
            assert "max_concurrent_launches 2" in refused.json()["detail"]
        assert store.collection(names.JOBS).count_documents({}) == 2
        dagster_web.client().terminate_run(first.json()["job_id"])  # one finishes: room for one more
        assert _send(client, "GET", f"/api/v1/jobs/{first.json()['job_id']}", None, WORKBENCH_KEY).json()[
            "status"] == "CANCELED"
        third = _send(client, "POST", BATCH, {"run_id": "run_a", "max_users": 10}, WORKBENCH_KEY)
        assert third.status_code == 202, third.text
        assert _send(client, "POST", TRAIN, train, WORKBENCH_KEY).status_code == 429
    finally:
        _terminate(dagster_web, store)


def test_an_idempotency_key_launches_once_across_retries_restarts_and_requests_at_once(served, dagster_web):
    store, traffic, make_client = served
    url = dagster_web.ready()
    client = make_client(dagster_url=url, max_concurrent_launches=50)
    jobs = store.collection(names.JOBS)
    train = {"predictor": traffic.logs.predictor, "epochs": 2}
    key = f"k-{uuid.uuid4()}"
    try:
        launched = jobs.count_documents({})
        first = _send(client, "POST", TRAIN, train, WORKBENCH_KEY, **{"Idempotency-Key": key})
        retried = _send(client, "POST", TRAIN, dict(reversed(train.items())), WORKBENCH_KEY,
                        **{"Idempotency-Key": key})
        assert first.status_code == retried.status_code == 202, (first.text, retried.text)
        assert retried.json() == first.json() and retried.headers.get("Idempotent-Replayed") == "true"
        assert jobs.count_documents({}) == launched + 1
        other = _send(client, "POST", TRAIN, {**train, "epochs": 3}, WORKBENCH_KEY, **{"Idempotency-Key": key})
        assert other.status_code == 422 and "different request" in other.json()["detail"], other.text
        elsewhere = _send(client, "POST", BATCH, {"run_id": "run_a"}, WORKBENCH_KEY, **{"Idempotency-Key": key})
        assert elsewhere.status_code == 422

        restarted = make_client(dagster_url=url, max_concurrent_launches=50)  # a new process, the same storage
        assert _send(restarted, "POST", TRAIN, train, WORKBENCH_KEY, **{"Idempotency-Key": key}).json() == first.json()
        assert jobs.count_documents({}) == launched + 1

        # two identical requests at once, to two service processes: one launch, one answer
        pair_key, barrier, answers = f"k-{uuid.uuid4()}", threading.Barrier(2), []
        body = {"hyperparameters": train, "data": {"random_state": 7}}

        def ask(service):
            barrier.wait()
            answers.append(_send(service, "POST", "/pytorch/train", body, WORKBENCH_KEY,
                                 **{"Idempotency-Key": pair_key}))

        threads = [threading.Thread(target=ask, args=(c,)) for c in (client, restarted)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        assert answers[0].json() == answers[1].json() and answers[0].json()["status"] == "STARTED"
        assert jobs.count_documents({}) == launched + 2

        # a launch that failed releases its key: the retry launches
        failing_key = f"k-{uuid.uuid4()}"
        unreachable = make_client(dagster_url="http://127.0.0.1:9", max_concurrent_launches=50)
        batch = {"run_id": "run_a", "top_k": 3, "max_users": 10}
        failed = _send(unreachable, "POST", BATCH, batch, WORKBENCH_KEY, **{"Idempotency-Key": failing_key})
        assert failed.status_code == 503, failed.text
        assert store.collection(workbench.LAUNCH_KEYS).count_documents({"key": failing_key}) == 0
        retry = _send(client, "POST", BATCH, batch, WORKBENCH_KEY, **{"Idempotency-Key": failing_key})
        assert retry.status_code == 202 and retry.json()["run_id"] == "run_a", retry.text
        assert _send(client, "POST", BATCH, batch, WORKBENCH_KEY,
                     **{"Idempotency-Key": failing_key}).json() == retry.json()
        assert jobs.count_documents({}) == launched + 3

        # without a key, as before: each request launches
        plain = [_send(client, "POST", TRAIN, train, WORKBENCH_KEY).json()["job_id"] for _ in range(2)]
        assert len(set(plain)) == 2 and jobs.count_documents({}) == launched + 5
        for bad in ("", "k" * 256, "clé"):
            assert _send(client, "POST", TRAIN, train, WORKBENCH_KEY,
                         **{"Idempotency-Key": bad.encode()}).status_code == 422, bad
    finally:
        _terminate(dagster_web, store)
