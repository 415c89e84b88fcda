"""Batch scoring fanned out inside one run, a step per customer shard: on the multiprocess
executor, and on Celery workers over RabbitMQ that the test starts itself (skipped, saying so,
where no broker answers). Launched from the command line on a persistent instance, as an operator
would; the shards' commits, counts and the steps' processes are checked afterwards."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from twotower_pipeline import offline, publishing
from twotower_pipeline.defs.assets.offline_scoring import score_shards
from twotower_pipeline.defs.executors import CELERY_BROKER_ENV
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.test_automation import ASSETS, OPEN_GATE, _publish, _train_and_gate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("TWOTOWER_TEST_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")


def _live_run(trained_slice, home) -> str:
    resources, _ = trained_slice
    with dg.DagsterInstance.from_config(str(home)) as instance:
        _train_and_gate(resources, instance, "run_a", OPEN_GATE)
        _publish(resources, instance, "run_a")
    return "run_a"


def _execute(home, env, run_config: dict, timeout=600) -> subprocess.CompletedProcess:
    config = home / "fanout.yaml"
    config.write_text(yaml.safe_dump(run_config))
    child_env = {**os.environ, "DAGSTER_HOME": str(home), **env}
    if CELERY_BROKER_ENV not in env:  # the multiprocess executor unless the test asks for Celery
        child_env.pop(CELERY_BROKER_ENV, None)
    return subprocess.run([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                           "twotower_pipeline.definitions", "-j", "score_fanout_job", "-c", str(config)],
                          cwd=PROJECT_ROOT, env=child_env, capture_output=True, text=True, timeout=timeout)


def _shard_materialisations(home) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = [r for r in instance.get_runs() if r.job_name == "score_fanout_job"]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        return {e.dagster_event.partition: e.asset_materialization.metadata for e in events}


def _check_scores(store, by_shard: dict, n_customers: int) -> set:
    """Every shard committed, as many customers as the shards' materialisations say; their pids."""
    shards = score_shards.get_partition_keys()
    assert sorted(by_shard) == shards
    location = offline.scores_publisher(store, shards).run_location("scores", "run_a")
    committed = SlicedCollection(store, location).committed_slices()
    assert {s: committed[s]["rows"] for s in shards} == {s: by_shard[s]["dagster/row_count"].value for s in shards}
    assert sum(committed[s]["rows"] for s in shards) == n_customers
    return {m["pid"].value for m in by_shard.values()}


def test_the_multiprocess_executor_scores_every_shard_in_its_own_process(
        tmp_path, trained_slice, store, mongo_uri, database_prefix):
    home = tmp_path / "home"
    home.mkdir()
    run_id = _live_run(trained_slice, home)
    env = {"MONGODB_URI": mongo_uri, "TWOTOWER_DATABASE_PREFIX": database_prefix}
    ran = _execute(home, env, {"ops": {"score_shard": {"config": {"run_id": run_id}}},
                               "execution": {"config": {"max_concurrent": 2}}})
    assert ran.returncode == 0, ran.stderr[-3000:]
    pids = _check_scores(store, _shard_materialisations(home), len(trained_slice[1].logs.customer_features))
    assert len(pids) == len(score_shards.get_partition_keys())  # a process per step
    # the fan-out's scores publish like the per-shard runs'
    publishing_run = dg.materialize(ASSETS, resources=trained_slice[0], selection=["published_recommendations"],
                                    run_config={"ops": {"published_recommendations": {"config": {"run_id": run_id}}}})
    assert publishing_run.success
    live = offline.scores_publisher(store, score_shards.get_partition_keys()).live_run_id()
    assert live == run_id == publishing.live_run_id(store)


def _broker_answers() -> str | None:
    host_port = BROKER.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=2).close()
        return None
    except OSError as error:
        return str(error)


def test_celery_workers_score_the_shards_of_one_run(tmp_path, trained_slice, store, mongo_uri, database_prefix):
    refused = _broker_answers()
    if refused:
        pytest.skip(f"no Celery broker answers at {BROKER.split('@', 1)[-1]} ({refused}): the Celery fan-out test "
                    "needs RabbitMQ (set TWOTOWER_TEST_CELERY_BROKER)")
    home = tmp_path / "home"
    home.mkdir()
    run_id = _live_run(trained_slice, home)
    # dagster-celery's own queue ("dagster"): a task another run left there fails on its own
    name = f"twotower_test_{os.getpid()}_{int(time.time())}"
    celery = {"broker": BROKER, "backend": "rpc://"}
    env = {"MONGODB_URI": mongo_uri, "TWOTOWER_DATABASE_PREFIX": database_prefix, CELERY_BROKER_ENV: BROKER}
    worker_config = home / "celery.yaml"
    worker_config.write_text(yaml.safe_dump({"execution": {"config": celery}}))
    bin_dir = Path(sys.executable).parent
    logs = [tmp_path / f"worker_{i}.log" for i in range(2)]
    workers = [subprocess.Popen(
        [str(bin_dir / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(worker_config),
         "-n", f"{name}_{i}@%h", "-l", "info", "--", "--concurrency", "1", "--logfile", str(log)],
        cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env})
        for i, log in enumerate(logs)]
    try:
        ran = _execute(home, env, {"ops": {"score_shard": {"config": {"run_id": run_id}}},
                                   "execution": {"config": celery}}, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    _check_scores(store, _shard_materialisations(home), len(trained_slice[1].logs.customer_features))
    done = {i: [line for line in log.read_text().splitlines() if "execute_plan" in line and "succeeded" in line]
            for i, log in enumerate(logs)}
    # every step of the run went through the workers (the shards, and the ops around them)
    assert sum(map(len, done.values())) >= len(score_shards.get_partition_keys()) + 2, done
