"""Kill -9 of a run and of the server at chosen moments, and two writers at once, against a real
embedded server of this module's own. Every case ends with exact counts and run ids.

The moments are the code's own fault points (`store/faults.py`): a materialisation runs in a
process of its own (`fault_runner`) with `TWOTOWER_FAULT` naming where it dies or pauses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.defs.resources import MongoResource
from twotower_pipeline.defs.run_health import fail_orphaned_runs
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.ingest.simulator import simulate_traffic
from twotower_pipeline.store import embeddings, names, slices
from twotower_pipeline.store.client import MongoStore
from twotower_pipeline.store.embedded import EmbeddedMongo

pytestmark = pytest.mark.faults

ASSETS = list(defs.assets)
FLATTEN = ["logging/ecosystemruntime_flatten", "logging/ecosystemruntime_flatten_quarantine"]
RANGE = {"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"}
TRAIN = ["two_tower_model", "user_embeddings", "item_embeddings", "concept_test_metrics", "runtime_embeddings"]
FAST = {"epochs": 2, "batch_size": 128, "embedding_dim": 8, "hidden": 16}
#: These cases are about storage, not model quality: a 2-epoch run passes this gate.
OPEN_GATE = {"concept_test_metrics": {"config": {"min_ndcg_gain_over_popularity": -1.0, "min_auc": 0.0}}}
SMALL_BATCHES = "400"  # many insert batches, so "after the second batch" is the middle of a write
#: A process whose server was killed gives up after 3 s instead of 20.
QUICK = "?directConnection=true&serverSelectionTimeoutMS=3000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of this module's own: some cases kill it."""
    embedded = EmbeddedMongo(tmp_path_factory.mktemp("fault-mongo"))
    embedded.uri()
    yield embedded
    embedded.stop()


@pytest.fixture
def env(server, tmp_path):
    """A fresh database prefix on the module's server, and what a runner process needs."""
    uri = server.uri() + QUICK
    prefix = f"f{uuid.uuid4().hex[:10]}_"
    store = MongoStore(uri, prefix)
    state = {"uri": uri, "prefix": prefix, "store": store, "dir": tmp_path, "server": server}
    yield state
    _restart(state)  # a case that killed the server leaves it to be started again
    store = state["store"]
    for name in store.client.list_database_names():
        if name.startswith(prefix):
            store.client.drop_database(name)


def _restart(env) -> None:
    """Start the module's server again if it was killed (on its old port when that is free)."""
    env["uri"] = env["server"].uri() + QUICK
    env["store"] = MongoStore(env["uri"], env["prefix"])


def _resources(env) -> dict:
    return build_resources(MongoResource(uri=env["uri"], database_prefix=env["prefix"]))


def _seed(env, n_requests=1200):
    traffic = simulate_traffic(n_customers=120, n_offers=12, n_requests=n_requests, days=2, seed=5)
    write_runtime_logs(env["store"], traffic.logs)
    return traffic


def _flatten_in_process(env):
    assert dg.materialize(ASSETS, resources=_resources(env), selection=FLATTEN, tags=RANGE).success


def _frame_in_process(env, predictor):
    return dg.materialize(ASSETS, resources=_resources(env), selection=["training_frame"], run_config={
        "ops": {"training_frame": {"config": {"predictor": predictor}}}})


def _train_in_process(env, run_id):
    assert dg.materialize(ASSETS, resources=_resources(env), selection=TRAIN, run_config=_train_run(run_id)).success


def _start(env, selection, *, fault=None, run_config=None, tags=None, instance=False, extra_env=None):
    spec = {"uri": env["uri"], "prefix": env["prefix"], "selection": selection, "run_config": run_config,
            "tags": tags or {}, "instance": instance}
    child_env = {**os.environ, "TWOTOWER_FAULT_DIR": str(env["dir"]), "TWOTOWER_INSERT_BATCH": SMALL_BATCHES,
                 "TWOTOWER_EMBEDDED_DIR": str(env["server"].data_dir), **(extra_env or {})}
    child_env.pop("TWOTOWER_FAULT", None)
    if fault:
        child_env["TWOTOWER_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "twotower_pipeline_tests.fault_runner", json.dumps(spec)],
                            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=300) -> dict | None:
    """The runner's result, or None when it was killed."""
    out, err = process.communicate(timeout=timeout)
    if process.returncode == -signal.SIGKILL:
        return None
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _train_run(run_id):
    return {"ops": {"two_tower_model": {"config": {**FAST, "run_id": run_id}}, **OPEN_GATE}}


def _wait_for(path: Path, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} was never reached"
        time.sleep(0.05)


def _committed_rows(store, location) -> int:
    return slices.SlicedCollection(store, location).count()


def _live(store) -> dict:
    return {t.name: sorted({d["run_id"] for d in store.collection(f"logging.{t.collection}").find({}, {"run_id": 1})})
            for t in embeddings.TOWERS}


def _live_counts(store) -> dict:
    return {t.name: store.collection(f"logging.{t.collection}").count_documents({}) for t in embeddings.TOWERS}


# -- slices ---------------------------------------------------------------------------------------

def test_two_flatten_runs_of_one_range_take_turns_and_keep_every_row(env):
    traffic = _seed(env)
    first = _start(env, FLATTEN, tags=RANGE, fault="slice.before_commit:pause")
    _wait_for(env["dir"] / "slice.before_commit.reached")
    second = _start(env, FLATTEN, tags=RANGE, fault="lease.waiting:mark")
    _wait_for(env["dir"] / "lease.waiting.reached")  # the second waits for the first's lease
    (env["dir"] / "slice.before_commit.go").touch()
    results = [_finish(first), _finish(second)]
    assert all(r["success"] for r in results)
    store = env["store"]
    assert _committed_rows(store, names.FLATTEN) == traffic.logs.n_exposures
    assert store.collection(names.FLATTEN).count_documents({}) == traffic.logs.n_exposures  # nothing left over
    owners = {v["owner"]["dagster_run_id"] for v in slices.SlicedCollection(store, names.FLATTEN).record()["slices"]
              .values()}
    assert owners == {results[1]["run_id"]}  # the last commit won, whole


@pytest.mark.parametrize("fault, new_rows_visible", [
    ("slice.inserted_batch:kill:3", False),  # mid-write
    ("slice.before_commit:kill", False),  # every row written, not committed
    ("slice.after_commit:kill", True),  # committed, the replaced rows not yet deleted
])
def test_a_flatten_killed_at_any_moment_leaves_one_whole_slice(env, fault, new_rows_visible):
    traffic = _seed(env)
    _flatten_in_process(env)
    store = env["store"]
    before = slices.SlicedCollection(store, names.FLATTEN).committed_write_ids()
    assert _finish(_start(env, FLATTEN, tags=RANGE, fault=fault)) is None  # killed
    n = traffic.logs.n_exposures
    after = slices.SlicedCollection(store, names.FLATTEN).committed_write_ids()
    assert (after != before) is new_rows_visible
    assert _committed_rows(store, names.FLATTEN) == n  # readers see one whole slice
    assert store.collection(names.FLATTEN).count_documents({}) > n  # the killed write's rows are still there
    frame = _frame_in_process(env, traffic.logs.predictor)
    assert frame.success  # including the blocking unique-exposure check
    assert _committed_rows(store, names.TRAINING_FRAME) == n
    # the lease of the dead process is taken over at once, and the next write cleans up
    _flatten_in_process(env)
    assert store.collection(names.FLATTEN).count_documents({}) == n
    assert slices.SlicedCollection(store, names.FLATTEN).record()["pending"] == {}


def test_a_server_killed_mid_write_leaves_the_old_slice(env):
    traffic = _seed(env)
    _flatten_in_process(env)
    result = _finish(_start(env, FLATTEN, tags=RANGE, fault="slice.inserted_batch:kill-server:2"))
    assert result is not None and not result["success"]
    _restart(env)  # from what reached its disk
    store = env["store"]
    assert _committed_rows(store, names.FLATTEN) == traffic.logs.n_exposures
    _flatten_in_process(env)
    assert store.collection(names.FLATTEN).count_documents({}) == traffic.logs.n_exposures


# -- publishing -----------------------------------------------------------------------------------

@pytest.fixture
def published(env):
    """run_a trained and live; the frame ready for another run."""
    traffic = _seed(env, n_requests=900)
    _flatten_in_process(env)
    assert _frame_in_process(env, traffic.logs.predictor).success
    _train_in_process(env, "run_a")
    counts = _live_counts(env["store"])
    assert _live(env["store"]) == {"user": ["run_a"], "item": ["run_a"]}
    return counts


@pytest.mark.parametrize("fault", [
    "slice.inserted_batch:kill",  # while the new run's own vectors are written
    "publish.journal_written:kill",  # the intent is written, nothing swapped
    "publish.staged_batch:kill",  # while the live pair is staged
    "publish.after_rename.user:kill",  # between the two renames: users new, offers old
])
def test_a_train_job_killed_while_publishing_leaves_or_restores_one_whole_run(env, published, fault):
    store = env["store"]
    assert _finish(_start(env, TRAIN, run_config=_train_run("run_b"), fault=fault)) is None
    publisher = embeddings.Publisher(store)
    journal = publisher.status()
    if journal["state"] == "publishing":  # the journal knows a publish was cut short ...
        assert journal["target_run_id"] == "run_b" and journal["from_run_id"] == "run_a"
        assert publisher.recover() == "an interrupted publish of run_b was rolled forward to run_b"
        expected = "run_b"  # ... and its sources were complete: rolled forward
        assert publisher.status()["previous_run_id"] == "run_a"  # the run to roll back to is not lost
    else:
        expected = "run_a"  # killed before the journal: the live pair never moved
    assert _live(store) == {"user": [expected], "item": [expected]}
    assert _live_counts(store) == published
    assert publisher.verify().problems() == []


def test_a_server_killed_during_the_staging_copy_then_rollback_restores_the_earlier_run(env, published):
    store = env["store"]
    _train_in_process(env, "run_b")
    runner = _start(env, TRAIN, run_config=_train_run("run_c"), fault="publish.staged_batch:kill-server")
    result = _finish(runner)
    assert result is not None and not result["success"]
    _restart(env)
    store = env["store"]
    publisher = embeddings.Publisher(store)
    assert (env["dir"] / "publish.staged_batch.reached").exists()
    outcome = publisher.rollback()  # first finishes run_c's publish from its intact sources, then rolls back
    assert outcome["recovered"] == "an interrupted publish of run_c was rolled forward to run_c"
    assert outcome["run_id"] == "run_b"
    assert _live(store) == {"user": ["run_b"], "item": ["run_b"]}
    assert _live_counts(store) == published
    assert publisher.status()["previous_run_id"] == "run_c"
    assert publisher.verify().problems() == []


@pytest.mark.parametrize("tower", ["user", "item"])
def test_a_server_killed_at_a_rename_is_repaired_by_the_next_publish(env, published, tower):
    store = env["store"]
    fault = f"publish.before_rename.{tower}:kill-server"
    result = _finish(_start(env, TRAIN, run_config=_train_run("run_b"), fault=fault))
    assert result is not None and not result["success"]
    _restart(env)
    store = env["store"]
    publisher = embeddings.Publisher(store)
    assert publisher.status()["state"] == "publishing"
    _train_in_process(env, "run_c")  # the next run's publish finishes run_b's first, then its own
    assert _live(store) == {"user": ["run_c"], "item": ["run_c"]}
    assert _live_counts(store) == published
    assert publisher.status()["previous_run_id"] == "run_b"
    assert [e["event"] for e in publisher.status()["history"]][-2:] == ["recovered: rolled forward to", "published"]


@pytest.mark.parametrize("damage", ["empty", "doubled", "partial", "missing"])
def test_a_rename_cut_short_by_a_crash_is_rolled_forward(env, published, damage):
    """What a kill of the embedded server inside `renameCollection` leaves (it copies documents under
    a lock, not in a transaction): a live collection empty, doubled or partial, with the journal
    still saying `publishing`. Made by hand here, since the copy holds the server's lock throughout."""
    store = env["store"]
    assert _finish(_start(env, TRAIN, run_config=_train_run("run_b"), fault="publish.after_rename.user:kill")) is None
    items = store.collection(f"logging.{names.ITEM_EMBEDDINGS}")
    documents = list(items.find({}, {"_id": 0}))
    if damage == "empty":
        items.delete_many({})
    elif damage == "doubled":
        items.drop_indexes()
        items.insert_many([dict(d) for d in documents])
    elif damage == "partial":
        items.delete_many({"offer": {"$in": [d["offer"] for d in documents[: len(documents) // 2]]}})
    else:
        items.drop()
    publisher = embeddings.Publisher(store)
    assert publisher.verify("run_a").problems()  # what the runtime would read is not one whole run
    assert publisher.recover() == "an interrupted publish of run_b was rolled forward to run_b"
    assert _live(store) == {"user": ["run_b"], "item": ["run_b"]}
    assert _live_counts(store) == published
    assert publisher.verify().problems() == []


def test_a_server_killed_inside_a_long_rename_loses_nothing_the_runtime_reads(env):
    """A real kill of the embedded server while its renameCollection copies 10,000 vectors: whatever
    moment it lands on (the rename runs as many small commits), the next publish repairs the pair."""
    store = env["store"]
    publisher = embeddings.Publisher(store)
    rng = np.random.default_rng(0)
    customers = [f"c{i}" for i in range(10_000)]
    offers = [f"o{i}" for i in range(50)]
    for run_id in ("run_a", "run_b"):
        for tower, keys in (("user", customers), ("item", offers)):
            vectors = rng.normal(size=(len(keys), 8))
            publisher.write_run(tower, run_id, keys, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    publisher.publish("run_a")
    spec = {"uri": env["uri"], "prefix": env["prefix"], "publish": "run_b"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "twotower_pipeline_tests.fault_runner", json.dumps(spec)],
        env={**os.environ, "TWOTOWER_FAULT": "publish.before_rename.user:kill-server-during",
             "TWOTOWER_FAULT_DELAY_S": "0.5", "TWOTOWER_EMBEDDED_DIR": str(env["server"].data_dir)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runner.communicate(timeout=300)
    assert runner.returncode != 0  # the publish lost its server
    _restart(env)
    publisher = embeddings.Publisher(env["store"])
    assert publisher.status()["state"] == "publishing"
    assert publisher.recover() == "an interrupted publish of run_b was rolled forward to run_b"
    assert _live(env["store"]) == {"user": ["run_b"], "item": ["run_b"]}
    assert _live_counts(env["store"]) == {"user": 10_000, "item": 50}
    assert publisher.verify().problems() == []


@pytest.mark.parametrize("fault", [
    "refresh.kept.user:kill",  # the vectors kept with the run, nothing upserted live
    "refresh.applied_batch:kill",  # after the first of three live upsert batches
])
def test_a_refresh_killed_after_keeping_its_vectors_is_finished_by_the_next_publisher_call(env, published, fault):
    store = env["store"]
    since = dt.datetime.now(dt.timezone.utc)
    store.collection(names.CUSTOMER_FEATURES).insert_many([
        {"customer_id": f"late_{i}", "segment": "segment_a", "age": 20 + i % 50, "region": "east",
         "updated_at": since + dt.timedelta(seconds=1)} for i in range(900)])
    window = {"run_id": "run_a", "refresh_since": since.isoformat(),
              "refresh_until": (since + dt.timedelta(seconds=2)).isoformat()}
    assert _finish(_start(env, ["runtime_embeddings"], fault=fault,
                          run_config={"ops": {"runtime_embeddings": {"config": window}}})) is None
    publisher = embeddings.Publisher(store)
    assert publisher.status()["state"] == "refreshing"
    assert _live(store) == {"user": ["run_a"], "item": ["run_a"]}  # whatever was upserted is run_a's
    partly = _live_counts(store)["user"] - published["user"]
    assert partly == (0 if fault.startswith("refresh.kept") else int(SMALL_BATCHES))
    assert publisher.recover() == "an interrupted refresh of run run_a was finished"
    assert _live_counts(store) == {"user": published["user"] + 900, "item": published["item"]}
    assert _live(store) == {"user": ["run_a"], "item": ["run_a"]}
    assert publisher.verify().problems() == []


def test_two_train_jobs_at_once_each_publish_the_model_they_trained(env, published):
    store = env["store"]
    first = _start(env, TRAIN, run_config=_train_run("run_b"), fault="publish.journal_written:pause")
    _wait_for(env["dir"] / "publish.journal_written.reached")
    second = _start(env, TRAIN, run_config=_train_run("run_c"), fault="lease.waiting:mark")
    _wait_for(env["dir"] / "lease.waiting.reached")
    (env["dir"] / "publish.journal_written.go").touch()
    results = [_finish(first), _finish(second)]
    assert all(r["success"] for r in results)
    assert [r["materializations"]["runtime_embeddings"]["run_id"] for r in results] == ["run_b", "run_c"]
    assert [r["materializations"]["two_tower_model"]["run_id"] for r in results] == ["run_b", "run_c"]
    assert _live(store) == {"user": ["run_c"], "item": ["run_c"]}
    assert embeddings.Publisher(store).status()["previous_run_id"] == "run_b"


def test_two_publishes_at_once_are_serialised(env, published):
    store = env["store"]
    _train_in_process(env, "run_b")
    publisher = embeddings.Publisher(store)
    outcomes: dict = {}

    def publish(run_id):
        outcomes[run_id] = embeddings.Publisher(store).publish(run_id)

    threads = [threading.Thread(target=publish, args=(r,)) for r in ("run_a", "run_b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live = publisher.status()["live_run_id"]
    assert _live(store) == {"user": [live], "item": [live]}
    assert {o["run_id"] for o in outcomes.values()} == {"run_a", "run_b"}
    assert publisher.verify().problems() == []


# -- runs -----------------------------------------------------------------------------------------

def test_a_killed_in_process_run_is_marked_failed(env, tmp_path, monkeypatch):
    _seed(env, n_requests=300)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    runner = _start(env, FLATTEN, tags=RANGE, instance=True, fault="slice.inserted_batch:pause")
    _wait_for(env["dir"] / "slice.inserted_batch.reached")
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        assert fail_orphaned_runs(instance) == []  # alive: left alone
        os.kill(runner.pid, signal.SIGKILL)
        assert _finish(runner) is None
        assert fail_orphaned_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
