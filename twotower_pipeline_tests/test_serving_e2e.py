"""The whole loop with real processes: `twotower serve` ranks offers for simulated customers from
the published run, logs what it showed and what they accepted, and stops cleanly; the flatten
asset re-materialised for today finds every one of those interactions, and the next training
frame holds them. Training and batch scoring are then launched through the service's sidecar and
workbench endpoints on a real `dagster dev` (webserver and daemon): training as a run, batch scoring
as an asset backfill (a run per customer shard, then the publish); their results read back.
"""

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pytest

from twotower_pipeline import publishing
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.definitions import defs
from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.serving_client import RUNTIME_KEY, WORKBENCH_KEY

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REQUESTS = 120
SHOWN = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict, ready_url: str, log_path: Path) -> subprocess.Popen:
    log = log_path.open("wb")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(ready_url, timeout=5).status_code < 500:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"{command[0]} did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen, must_exit: bool = True) -> bool:
    """SIGTERM, as a service manager stops it; True when it exited by itself (uvicorn re-raises the
    signal once its shutdown is done, so either exit status is a clean one). Not within 60 s: killed,
    and an error where the test checks the clean exit (`must_exit`), else False."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=60) in (0, -signal.SIGTERM)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if must_exit:
            raise
        return False


@pytest.fixture(scope="module")
def environment(published_run, mongo_uri, tmp_path_factory):
    store, resources, traffic = published_run
    home = tmp_path_factory.mktemp("dagster-home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MONGODB_URI": mongo_uri,
           "TWOTOWER_DATABASE_PREFIX": store.database_prefix}
    return store, resources, traffic, env, home


def _shard(run: dg.DagsterRun) -> str | None:
    """The one customer shard a backfill's run scored (a range of one partition), or None."""
    start = run.tags.get("dagster/asset_partition_range_start")
    assert start == run.tags.get("dagster/asset_partition_range_end")
    return start


def _wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 420) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get(f"/api/v1/jobs/{job_id}").json()
        if answer["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
            return answer
        time.sleep(2)


def test_served_interactions_come_back_through_flatten_and_runs_launch_through_dagster(environment, tmp_path):
    store, resources, traffic, env, home = environment
    predictor = traffic.logs.predictor
    dagster_port, serve_port = _free_port(), _free_port()
    # `dagster dev`: the webserver and the daemon that takes launched runs off the queue
    webserver = _start([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p",
                        str(dagster_port)], env, f"http://127.0.0.1:{dagster_port}/server_info",
                       tmp_path / "dagster-dev.log")
    served = None
    try:
        serve_command = [str(BIN / "twotower"), "serve", "--port", str(serve_port), "--sidecar", "local",
                         "--dagster-url", f"http://127.0.0.1:{dagster_port}",
                         "--runtime-key", RUNTIME_KEY, "--workbench-key", WORKBENCH_KEY]
        served = _start(serve_command, env, f"http://127.0.0.1:{serve_port}/pytorch/health",
                        tmp_path / "serve.log")
        rng = np.random.default_rng(11)
        customers = sorted(traffic.logs.customer_features["customer_id"])
        shown, accepted, responses = [], set(), 0
        with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30,
                          headers={"X-API-Key": RUNTIME_KEY}) as client:
            for _ in range(REQUESTS):
                customer = str(rng.choice(customers))
                reply = client.post("/invocations", json={"campaign": predictor, "subcampaign": "e2e",
                                                          "channel": "app", "customer": customer,
                                                          "numberoffers": SHOWN})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                offers = [item["result"]["offer"] for item in body["final_result"]]
                shown += [(customer, offer) for offer in offers]
                chance = traffic.world.accept_probability(np.array([customer] * SHOWN), np.array(offers))
                taken = [offer for offer, p in zip(offers, chance) if rng.random() < p]
                if taken:
                    answer = client.post("/response", json={"uuid": body["uuid"], "channel_name": "app",
                                                            "offers_accepted": [{"offer_name": o} for o in taken]})
                    assert answer.status_code == 200, answer.text
                    responses += 1
                    accepted |= {(customer, offer) for offer in taken}
        assert _stop(served)  # SIGTERM: a clean shutdown writes what is queued before it exits
        today = dt.datetime.now(dt.timezone.utc).date()
        assert store.collection(names.PRESENTED).count_documents({"api_params.subcampaign": "e2e"}) == REQUESTS
        assert store.collection(names.RESPONSES).count_documents(
            {"response_log.api_params.subcampaign": "e2e"}) == responses

        # the flatten of today and the next training frame find every interaction the runtime logged
        # (yesterday too: a run across midnight UTC logs on two days)
        yesterday = (today - dt.timedelta(days=1)).isoformat()
        days = {"dagster/asset_partition_range_start": yesterday,
                "dagster/asset_partition_range_end": today.isoformat()}
        assert dg.materialize(list(defs.assets), resources=resources, tags=days, selection=[
            dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
            dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]).success
        assert dg.materialize(list(defs.assets), resources=resources, selection=["training_frame"], run_config={
            "ops": {"training_frame": {"config": {"predictor": predictor, "from_date": yesterday}}}}).success
        # what served each exposure is kept on it (the service explores with epsilon 0 here: every
        # offer shown at its greedy rank, propensity 1)
        served_rows = SlicedCollection(store, names.FLATTEN).read(
            query={"run_id": "run_a"}, columns=["uuid", "run_id", "explore", "propensity"])
        assert len(served_rows) == REQUESTS * SHOWN and served_rows["uuid"].nunique() == REQUESTS
        assert set(served_rows["explore"]) == {0.0} and set(served_rows["propensity"]) == {1.0}
        frame = SlicedCollection(store, names.TRAINING_FRAME).read(columns=["customer_id", "offer", "accepted"])
        assert len(frame) == REQUESTS * SHOWN
        assert sorted(zip(frame["customer_id"], frame["offer"])) == sorted(shown)
        assert {(c, o) for c, o, a in zip(frame["customer_id"], frame["offer"], frame["accepted"]) if a} == accepted
        assert accepted  # the simulated customers accepted some offers

        # training (the sidecar's documented train request) and batch scoring (the workbench's) as Dagster runs
        served = _start(serve_command, env, f"http://127.0.0.1:{serve_port}/pytorch/health", tmp_path / "serve2.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=60,
                          headers={"X-API-Key": WORKBENCH_KEY}) as client:
            wrong_source = client.post("/pytorch/train", json={
                "model_type": "two_tower", "data": {"source": {"database": "logging", "collection": "other"}},
                "hyperparameters": {"predictor": predictor}})
            assert wrong_source.status_code == 422 and "ecosystemruntime_flatten" in wrong_source.text
            out_of_range = client.post("/api/v1/algorithms/two-tower/train",
                                       json={"predictor": predictor, "epochs": 0})
            assert out_of_range.status_code == 422 and "epochs" in out_of_range.text
            train = client.post("/pytorch/train", json={
                "model_id": "e2e", "model_type": "two_tower", "problem_type": "binary_classification",
                "data": {"source": {"database": "logging", "collection": "ecosystemruntime_flatten"},
                         "target_column": "accepted", "train_test_split": 0.2, "random_state": 42},
                "hyperparameters": {"predictor": predictor, "epochs": 6, "embedding_dim": 16}})
            assert train.status_code == 202, train.text
            started = train.json()
            run_id = started["run_id"]
            assert started["model_id"] == f"two_tower_user_{run_id}" and started["status"] == "STARTED"
            score = client.post("/api/v1/algorithms/two-tower/batch-score",
                                json={"run_id": "run_a", "top_k": 5, "max_users": 50})
            assert score.status_code == 202, score.text
            trained = _wait_for_job(client, started["job_id"])
            scored = _wait_for_job(client, score.json()["job_id"])
            # the trained run (gated, not live) challenges run_a, then is promoted: both through Dagster jobs
            experiment = {"experiment": "e2e_exp", "campaign": predictor, "challenger_run_id": run_id,
                          "share": 0.5}
            start = client.post("/api/v1/algorithms/two-tower/experiments", json=experiment)
            assert start.status_code == 202, start.text
            begun = _wait_for_job(client, start.json()["job_id"])
            listed = client.get("/api/v1/algorithms/two-tower/experiments", params={"campaign": predictor}).json()
            again = client.post("/api/v1/algorithms/two-tower/experiments", json={**experiment, "experiment": "e2"})
            promote = client.post("/api/v1/algorithms/two-tower/experiments/e2e_exp/promote")
            assert promote.status_code == 202, promote.text
            promoted = _wait_for_job(client, promote.json()["job_id"])
        assert _stop(served)
        assert begun["status"] == "SUCCESS" and begun["result"]["state"] == "running", begun
        assert [(e["_id"], e["state"], e["champion_run_id"]) for e in listed["experiments"]] == [
            ("e2e_exp", "running", "run_a")]
        assert again.status_code == 409 and "already runs experiment 'e2e_exp'" in again.text
        assert promoted["status"] == "SUCCESS" and promoted["result"]["state"] == "promoted", promoted
        assert publishing.live_run_id(store) == run_id
    finally:
        if served is not None and served.poll() is None:  # a failed assertion left it running
            _stop(served, must_exit=False)
        _stop(webserver, must_exit=False)  # Dagster's own shutdown is not what this test checks
    assert scored["status"] == "SUCCESS", scored
    assert scored["result"] == {"run_id": "run_a", "scores_collection": names.SCORES, "customers": 50}
    # batch scoring is an asset backfill: a run per customer shard, then the publish, each successful
    with dg.DagsterInstance.from_config(str(home)) as instance:
        backfill_runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": scored["job_id"]}))
    shards = score_shards.get_partition_keys()
    assert sorted(_shard(r) for r in backfill_runs if _shard(r)) == shards
    assert len(backfill_runs) == len(shards) + 1
    assert {r.status for r in backfill_runs} == {dg.DagsterRunStatus.SUCCESS}
    scores = store.database("logging")[names.SCORES]
    assert scores.count_documents({"run_id": "run_a"}) == 50 == scores.count_documents({})
    assert all(len(d["ranked"]) == 5 for d in scores.find({}, {"ranked": 1}))
    # the trained run: every exposure of the window (the simulated days and what was served), through its gate
    assert trained["status"] == "SUCCESS", trained
    run = store.collection(names.RUNS).find_one({"run_id": run_id})
    assert run["predictor"] == predictor and run["n_rows"] == 2500 * SHOWN + REQUESTS * SHOWN
    assert trained["result"] == {"run_id": run_id, "user_model_id": f"two_tower_user_{run_id}",
                                 "item_model_id": f"two_tower_item_{run_id}", "user_auc": run["user_auc"],
                                 "item_auc": run["item_auc"], "n_rows": run["n_rows"], "gate_passed": True}
